"""Feature extractors: quantisation, the random stand-in's contract, the torch-fidelity Inception wrapper."""

from __future__ import annotations

import contextlib
import pickle

import numpy as np
import pytest
import torch

from metrics.features import (
    FeatureExtractor,
    InceptionV3Features,
    RandomFeatureExtractor,
    images_to_uint8,
    load_inception_state_dict,
    resolve_inception_weights,
)
from torch_utils.errors import UserError


def test_images_to_uint8_rounds_to_nearest_and_clamps():
    img = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, (10 - 127.5) / 127.5 + 0.3 / 127.5]).reshape(1, 1, 2, 3)
    assert images_to_uint8(img).flatten().tolist() == [0, 0, 128, 255, 255, 10]


def test_random_extractor_follows_the_protocol():
    ext = RandomFeatureExtractor(feature_dim=12, seed=3)
    assert isinstance(ext, FeatureExtractor)
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    feats = ext(images)
    assert feats.shape == (5, 12) and feats.dtype == torch.float64
    torch.testing.assert_close(RandomFeatureExtractor(12, seed=3)(images), feats)
    torch.testing.assert_close(ext(images[:2]), feats[:2])  # per-image: batch composition does not matter
    assert ext(images[:, :1]).shape == (5, 12)  # grayscale is repeated to RGB
    with pytest.raises(UserError):
        ext(images.float())


def test_missing_inception_weights_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        resolve_inception_weights(str(tmp_path / "nope.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="download"):
        resolve_inception_weights(None, download=False)



def test_inception_download_shows_a_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress: calls.append(progress))
    resolve_inception_weights(None, download=True)  # stderr is captured here: a log, not a terminal
    assert calls == [False] and capsys.readouterr().err.startswith("downloading https://")

@pytest.mark.slow
def test_inception_wrapper_matches_torch_fidelity_with_random_weights(tmp_path, monkeypatch):
    fid_module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fid_module.FeatureExtractorInceptionV3
    dummy = tmp_path / "empty.pth"
    torch.save({}, dummy)
    with monkeypatch.context() as patch:  # build once without weights to get a random state dict in its layout
        patch.setattr(cls, "load_state_dict", lambda self, state_dict, strict=True: None)
        torch.manual_seed(0)
        state = cls("x", ["2048"], feature_extractor_weights_path=str(dummy)).state_dict()
    weights = tmp_path / "weights.pth"
    torch.save(state, weights)
    ext = InceptionV3Features(str(weights))
    images = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    feats = ext(images)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    (reference,) = cls("y", ["2048"], feature_extractor_weights_path=str(weights))(images)
    torch.testing.assert_close(feats, reference.double())


class _Hostile:
    """Pickles to a call of exec() that writes a marker file: any full unpickler that reads it runs the code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _write_hostile(path, marker) -> None:
    with open(path, "wb") as f:
        pickle.dump(_Hostile(str(marker)), f, protocol=2)


def test_hostile_inception_file_is_refused_and_runs_nothing(tmp_path):
    marker, weights = tmp_path / "marker", tmp_path / "hostile.pth"
    _write_hostile(weights, marker)
    with pytest.raises(UserError, match="not a plain state dict"):
        load_inception_state_dict(str(weights))
    with pytest.raises(UserError, match="not a plain state dict"):
        InceptionV3Features(str(weights))
    assert not marker.exists()


@pytest.mark.slow
def test_inception_file_swapped_after_loading_never_reaches_a_full_unpickler(tmp_path, monkeypatch):
    fid_module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fid_module.FeatureExtractorInceptionV3
    dummy = tmp_path / "empty.pth"
    torch.save({}, dummy)
    with monkeypatch.context() as patch:  # a random state dict in torch-fidelity's layout
        patch.setattr(cls, "load_state_dict", lambda self, state_dict, strict=True: None)
        state = cls("x", ["2048"], feature_extractor_weights_path=str(dummy)).state_dict()
    weights, marker = tmp_path / "weights.pth", tmp_path / "marker"
    torch.save(state, weights)
    original_init = cls.__init__

    def swap_then_build(self, *args, **kwargs):  # the file changes between our load and torch-fidelity's build
        _write_hostile(weights, marker)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", swap_then_build)
    ext = InceptionV3Features(str(weights))
    assert not marker.exists()
    for key, value in ext.net.state_dict().items():  # the network holds the tensors read before the swap
        torch.testing.assert_close(value, state[key])
    monkeypatch.setattr(cls, "__init__", original_init)
    # Control: torch-fidelity given the (now hostile) path itself would have run the payload.
    with contextlib.suppress(Exception):  # the payload returns None, which torch-fidelity then fails to load
        cls("y", ["2048"], feature_extractor_weights_path=str(weights))
    assert marker.exists()
