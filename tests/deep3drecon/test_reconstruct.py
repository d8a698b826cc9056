"""python -m deep3drecon.reconstruct: one photo to coefficients, crop and overlay; one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deep3drecon import assets
from deep3drecon.recon_net import ReconNet, load_recon_net, save_recon_net
from deep3drecon.reconstructor import resize_to_fr
from tests.deep3drecon.recon_fixtures import randomise


@pytest.fixture(scope="module")
def synthetic_mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic face model written through assets.synthetic_face_model_path into a private cache (once)."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TAXFREE3DMM_CACHE")
    os.environ["TAXFREE3DMM_CACHE"] = str(cache)
    try:
        path = assets.synthetic_face_model_path()
        mtime = path.stat().st_mtime_ns
        assert assets.synthetic_face_model_path() == path and path.stat().st_mtime_ns == mtime  # written once
        assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temp files left behind
    finally:
        if old is None:
            del os.environ["TAXFREE3DMM_CACHE"]
        else:
            os.environ["TAXFREE3DMM_CACHE"] = old
    return path


@pytest.fixture(scope="module")
def face_scene(synthetic_mat: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 224 render of the synthetic face on grey, its 68 landmarks (y-down) and a random resnet18 checkpoint."""
    from deep3drecon.face_model import FaceModel
    from deep3drecon.render import Renderer

    root = tmp_path_factory.mktemp("scene")
    face_model = FaceModel.from_mat(synthetic_mat)
    renderer = Renderer(face_model, backend="torch")
    coeffs = torch.zeros(1, 257)
    coeffs[0, 225] = 0.15  # a little yaw
    with torch.no_grad():
        out = renderer(coeffs, 224)
        lm68 = face_model.compute(coeffs).landmarks[0].numpy()
    img = out.render * out.mask + 0.5 * (1 - out.mask)
    arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(root / "face.png")
    np.savetxt(root / "face_68.txt", lm68)
    net = ReconNet("resnet18", input_size=64)
    randomise(net, seed=31)
    with torch.no_grad():
        for head in net.final_layers:  # small coefficients keep the predicted face in front of the camera
            head.weight.mul_(0.01)
            head.bias.mul_(0.01)
    save_recon_net(net, root / "fr.pth")
    return root, renderer


def test_reconstruct_cli_end_to_end(synthetic_mat: Path, face_scene, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deep3drecon.reconstruct import main

    root, renderer = face_scene
    args = ["--image", str(root / "face.png"), "--landmarks", str(root / "face_68.txt"), "--bfm", str(synthetic_mat)]
    args += ["--checkpoint", str(root / "fr.pth"), "--outdir", str(tmp_path), "--backend", "torch", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    coeffs = np.load(tmp_path / "face_coeffs.npy")
    assert coeffs.shape == (257,) and coeffs.dtype == np.float32 and np.abs(coeffs).max() > 0
    crop = Image.open(tmp_path / "face_crop.png")
    overlay = Image.open(tmp_path / "face_overlay.png")
    assert crop.size == overlay.size == (224, 224)
    # Independent recomputation from the saved crop: FR([0,1] crop resized to 64) and the render of its output.
    crop_t = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = load_recon_net(root / "fr.pth")(resize_to_fr(crop_t, 64))[0].numpy()
        out = renderer(torch.from_numpy(coeffs)[None], 224)
    np.testing.assert_allclose(coeffs, expected, rtol=1e-4, atol=1e-5)
    mask = out.mask[0, 0].numpy() > 0
    assert 0.05 < mask.mean() < 0.9
    over, crop_np = np.asarray(overlay).astype(int), np.asarray(crop).astype(int)
    assert np.array_equal(over[~mask], crop_np[~mask])  # outside the face: the crop itself
    render_np = (out.render[0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert np.abs(over[mask] - render_np[mask]).max() <= 1  # inside: the render


def test_reconstruct_cli_errors_are_one_line(face_scene, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deep3drecon.reconstruct import main

    root, _ = face_scene
    base = ["--image", str(root / "face.png"), "--outdir", str(tmp_path / "o"), "--checkpoint", str(root / "fr.pth")]
    result = CliRunner().invoke(main, base + ["--landmarks", str(root / "face_68.txt"), "--bfm", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "BFM_model_front.mat" in result.output and "University of Basel" in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error:")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n3 4\n5 6\n")
    result = CliRunner().invoke(main, base + ["--landmarks", str(bad), "--bfm", str(root / "fr.pth")])
    assert result.exit_code == 1 and "5 or 68" in result.output
    assert not (tmp_path / "o").exists()  # validation happens before anything is written
