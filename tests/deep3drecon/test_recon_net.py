"""ReconNet and its checkpoint format: the official Deep3DFaceRecon layout, strict loading, one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision

from deep3drecon.recon_net import ReconNet, load_recon_net, save_recon_net
from tests.deep3drecon.recon_fixtures import randomise
from torch_utils.errors import UserError

HEADS = [80, 64, 80, 3, 27, 2, 1]


def official_keys_resnet50() -> dict[str, tuple[int, ...]]:
    """epoch_20.pth['net_recon'] key -> shape, spelled out from the reference (section 5.3), not from our module."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    in_c = 64
    for layer, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}"
            keys[f"{p}.conv1.weight"] = (width, in_c, 1, 1)
            bn(f"{p}.bn1", width)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            keys[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * width, in_c, 1, 1)
                bn(f"{p}.downsample.1", 4 * width)
            in_c = 4 * width
    for i, k in enumerate(HEADS):
        keys[f"final_layers.{i}.weight"] = (k, 2048, 1, 1)
        keys[f"final_layers.{i}.bias"] = (k,)
    return keys


@pytest.fixture(scope="module")
def official_r50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random-weight epoch_20.pth built from a bare torchvision resnet50 + hand-made heads (built once)."""
    trunk = torchvision.models.resnet50(weights=None)
    randomise(trunk, seed=1)
    state = {f"backbone.{k}": v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    gen = torch.Generator().manual_seed(2)
    for i, k in enumerate(HEADS):
        state[f"final_layers.{i}.weight"] = torch.randn(k, 2048, 1, 1, generator=gen) * 0.02
        state[f"final_layers.{i}.bias"] = torch.randn(k, generator=gen)
    path = tmp_path_factory.mktemp("ckpt") / "epoch_20.pth"
    # The official training checkpoint also carries optimizer/scheduler state; the loader must ignore them.
    torch.save({"net_recon": state, "opt_00": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "sched_00": {}}, path)
    return path, state


def reference_forward(state: dict[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    """Independent R-Net forward: torchvision resnet50 features, then each head as a matrix product."""
    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc = torch.nn.Identity()
    trunk.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    feat = trunk.eval()(img)  # [N, 2048]
    outs = [feat @ state[f"final_layers.{i}.weight"][:, :, 0, 0].T + state[f"final_layers.{i}.bias"] for i in range(7)]
    return torch.cat(outs, dim=1)


def save_state(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save({"net_recon": state}, path)
    return path


def _r18_state() -> dict[str, torch.Tensor]:
    net = ReconNet("resnet18")
    randomise(net, seed=5)
    return dict(net.state_dict())


def test_official_layout_has_332_keys_with_release_shapes() -> None:
    expected = official_keys_resnet50()
    assert len(expected) == 332
    ours = {k: tuple(v.shape) for k, v in ReconNet("resnet50").state_dict().items()}
    assert list(ours) == list(expected)  # same names in the same order
    assert ours == expected


def test_official_checkpoint_loads_strictly_and_matches_reference(official_r50) -> None:
    path, state = official_r50
    net = load_recon_net(path)  # backbone inferred from the keys
    assert net.backbone_name == "resnet50" and net.input_size == 224 and not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    img = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = net(img)
        ref = reference_forward(state, img)
    assert out.shape == (2, 257)
    assert out.abs().max() > 0.1  # random heads: a silently zeroed head would show up here
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_untrained_net_predicts_zero_coefficients() -> None:
    net = ReconNet("resnet18").eval()
    with torch.no_grad():
        assert torch.equal(net(torch.rand(2, 3, 64, 64)), torch.zeros(2, 257))


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = _r18_state()
    del state["backbone.layer3.1.bn2.running_var"]
    with pytest.raises(UserError, match=r"missing keys: backbone\.layer3\.1\.bn2\.running_var"):
        load_recon_net(save_state(tmp_path, state))


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = _r18_state()
    state["backbone.fc.weight"] = torch.zeros(257, 512)
    with pytest.raises(UserError, match=r"unexpected keys: backbone\.fc\.weight"):
        load_recon_net(save_state(tmp_path, state))


def test_shape_mismatch_is_named(official_r50, tmp_path: Path) -> None:
    state = dict(official_r50[1])
    state["final_layers.0.weight"] = torch.zeros(81, 2048, 1, 1)
    with pytest.raises(UserError, match=r"\(file != network\): final_layers\.0\.weight \(81, 2048, 1, 1\)"):
        load_recon_net(save_state(tmp_path, state))


def test_explicit_backbone_mismatch_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not match a resnet50 ReconNet"):
        load_recon_net(save_state(tmp_path, _r18_state()), backbone="resnet50")


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"net_recon": _r18_state()}, buf)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError, match="corrupt, truncated"):
        load_recon_net(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match="corrupt, truncated"):
        load_recon_net(garbage)
    with pytest.raises(UserError, match="not found"):
        load_recon_net(tmp_path / "absent.pth")


def test_wrong_top_level_layout_and_unsafe_pickles(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save(_r18_state(), bare)  # a bare state dict, not the epoch_20.pth layout
    with pytest.raises(UserError, match="no 'net_recon' entry"):
        load_recon_net(bare)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net_recon": {}, "extra": Path("x")}, unsafe)  # arbitrary objects need full unpickling
    with pytest.raises(UserError, match="safe loader"):
        load_recon_net(unsafe)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "small"])
def test_save_load_roundtrip_and_backbone_inference(backbone: str, tmp_path: Path) -> None:
    net = ReconNet(backbone, input_size=64)
    randomise(net, seed=11)
    path = tmp_path / "fr.pth"
    save_recon_net(net, path)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"net_recon", "input_size"} and set(ckpt["net_recon"]) == set(net.state_dict())
    loaded = load_recon_net(path)
    assert loaded.backbone_name == backbone and loaded.input_size == 64
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(img), net.eval()(img))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left no temp file
