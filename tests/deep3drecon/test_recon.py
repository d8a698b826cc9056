"""Tests for the FR network, its checkpoint format, the frozen reconstructor, assets and the reconstruct CLI."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deep3drecon import assets
from deep3drecon.recon_net import ReconNet, load_recon_net, save_recon_net
from deep3drecon.reconstructor import FaceReconstructor, resize_to_fr
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


def randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights AND random BN running stats (zero heads / unit stats would hide loading bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.ndim == 4:  # conv weights: He-like scale keeps activations finite through 50 layers
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if name.endswith("bn3.weight") else 0.0))


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


# ----------------------------------------------------------------------------------------------------------------
# ReconNet and the checkpoint format


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


def _r18_state() -> dict[str, torch.Tensor]:
    net = ReconNet("resnet18")
    randomise(net, seed=5)
    return dict(net.state_dict())


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
    with pytest.raises(UserError, match=r"shape mismatch: final_layers\.0\.weight \(81, 2048, 1, 1\)"):
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


# ----------------------------------------------------------------------------------------------------------------
# FaceReconstructor


@pytest.fixture
def small_fr() -> FaceReconstructor:
    net = ReconNet("resnet18", input_size=32)
    randomise(net, seed=21)
    return FaceReconstructor(net)


def test_gradients_reach_image_never_weights(small_fr: FaceReconstructor) -> None:
    parent = torch.nn.ModuleDict({"fr": small_fr, "other": torch.nn.Linear(2, 2)})
    parent.train()  # must not flip FR's BatchNorm to batch statistics
    assert not small_fr.training and not any(m.training for m in small_fr.modules())
    parent.requires_grad_(True)  # even a careless unfreeze must not route gradients into FR
    img = (torch.rand(3, 3, 48, 48) * 2 - 1).requires_grad_(True)
    before = {k: v.clone() for k, v in small_fr.state_dict().items()}
    small_fr(img).square().sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in small_fr.parameters())
    for k, v in small_fr.state_dict().items():  # BN running stats untouched by the forward pass
        assert torch.equal(v, before[k]), k


def test_fresh_reconstructor_is_frozen() -> None:
    fr = FaceReconstructor(ReconNet("resnet18", input_size=32))
    assert not fr.training and all(not p.requires_grad for p in fr.parameters())


def test_input_gradient_matches_finite_differences(small_fr: FaceReconstructor) -> None:
    fr = small_fr.double()
    gen = torch.Generator().manual_seed(4)
    img = (torch.rand(1, 3, 40, 40, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    weights = torch.randn(1, 257, generator=gen, dtype=torch.float64)
    (fr(img) * weights).sum().backward()
    direction = torch.randn(img.shape, generator=gen, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        f_plus = (fr(img + eps * direction) * weights).sum()
        f_minus = (fr(img - eps * direction) * weights).sum()
    numeric = (f_plus - f_minus) / (2 * eps)
    torch.testing.assert_close((img.grad * direction).sum(), numeric, rtol=1e-4, atol=1e-8)


def test_range_mapping_and_identity_resize(small_fr: FaceReconstructor) -> None:
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(small_fr(img), small_fr.net((img + 1) / 2), rtol=0, atol=0)
    assert resize_to_fr(img, 32) is img


@pytest.mark.parametrize("src,dst", [(256, 224), (224, 64), (64, 224)])
def test_resize_matches_pil_bilinear(src: int, dst: int) -> None:
    # PIL's BILINEAR resize is antialiased when shrinking and plain bilinear (pixel centres) when growing: the
    # behaviour the FR resize promises; a non-antialiased downsample would differ by ~0.1 on noise.
    rng = np.random.default_rng(0)
    img = rng.random((3, src, src), dtype=np.float32)
    ref = np.stack([np.asarray(Image.fromarray(c).resize((dst, dst), Image.BILINEAR)) for c in img])
    out = resize_to_fr(torch.from_numpy(img)[None], dst)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4)


# ----------------------------------------------------------------------------------------------------------------
# Assets


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TAXFREE3DMM_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "taxfree3dmm"


def test_missing_assets_explain_where_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path))
    with pytest.raises(UserError) as bfm_err:
        assets.resolve_bfm(tmp_path / "nope.mat")
    msg = str(bfm_err.value)
    assert "\n" not in msg and "nope.mat" in msg and "BFM_model_front.mat" in msg
    assert "University of Basel" in msg and "Deep3DFaceRecon_pytorch" in msg
    with pytest.raises(UserError) as fr_err:
        assets.resolve_recon_checkpoint(None)  # default location inside the cache
    msg = str(fr_err.value)
    assert "\n" not in msg and str(tmp_path / "epoch_20.pth") in msg and "Deep3DFaceRecon_pytorch README" in msg
    (tmp_path / "epoch_20.pth").write_bytes(b"x")
    assert assets.resolve_recon_checkpoint(None) == tmp_path / "epoch_20.pth"
    report = {s.name: s for s in assets.check_assets(bfm=tmp_path / "nope.mat")}
    assert report["FR checkpoint"].found and not report["BFM face model"].found
    assert "University of Basel" in str(report["BFM face model"])


def test_download_cached_from_local_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A file:// URL exercises the download path without touching the network.
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(3000))
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="SHA-256"):
        assets.download_cached(src.as_uri(), "payload.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "cache" / "payload.bin").exists()
    out = assets.download_cached(src.as_uri(), "payload.bin", sha256=digest, progress=False)
    assert out.read_bytes() == src.read_bytes()
    src.unlink()  # cached now: a second call must not need the source
    assert assets.download_cached(src.as_uri(), "payload.bin", sha256=digest, progress=False) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["payload.bin"]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic FR training helpers


def test_coeff_error_by_group_matches_numpy() -> None:
    from deep3drecon.train_synthetic_fr import coeff_error_by_group

    rng = np.random.default_rng(0)
    target, pred = rng.normal(size=(50, 257)), rng.normal(size=(50, 257))
    errors = coeff_error_by_group(torch.from_numpy(pred), torch.from_numpy(target))
    bounds = {"id": (0, 80), "exp": (80, 144), "tex": (144, 224), "angle": (224, 227), "gamma": (227, 254)}
    bounds["trans"] = (254, 257)
    assert list(errors) == list(bounds)
    for name, (a, b) in bounds.items():
        t = target[:, a:b]
        mae = np.abs(pred[:, a:b] - t).mean()
        trivial = np.abs(t - t.mean(axis=0)).mean()
        assert errors[name]["mae"] == pytest.approx(mae, rel=1e-12)
        assert errors[name]["trivial_mae"] == pytest.approx(trivial, rel=1e-12)
        assert errors[name]["relative"] == pytest.approx(mae / trivial, rel=1e-12)
    perfect = coeff_error_by_group(torch.from_numpy(target), torch.from_numpy(target))
    assert all(e["relative"] == 0 for e in perfect.values())


def test_random_blur_keeps_unblurred_half_and_preserves_mean() -> None:
    from deep3drecon.train_synthetic_fr import random_blur

    img = torch.rand(64, 3, 16, 16)
    out = random_blur(img, torch.Generator().manual_seed(0))
    same = (out - img).abs().flatten(1).amax(dim=1) < 1e-6
    assert 16 < int(same.sum()) < 48  # about half untouched
    assert out[~same].std() < img[~same].std()  # smoothing reduces the variance of white noise


# ----------------------------------------------------------------------------------------------------------------
# Generated assets, training CLI and reconstruct CLI (synthetic face model)


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
