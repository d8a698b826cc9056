"""Inversion and real-photo edits on a tiny random-weight snapshot in the real file layout: an image the generator
made itself (known z, p) is recovered to >= 28 dB, explicit noise maps leave G untouched, edits change only the
requested coefficient group, the CLI writes every file, and bad input gives one line."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from deep3drecon.align import RESCALE_FACTOR, TEMPLATE_5
from deep3drecon.coeffs import COEFF_SLICES
from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet, save_recon_net
from deep3drecon.synthetic import write_synthetic_mat
from generate import cli
from generation import inversion as inv
from generation import real_edit
from generation.controlled import to_uint8
from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from training.condition import Condition
from training.networks import Generator, SynthesisLayer
from training.rep import make_rep
from training.resolve import build_reconstructor, build_renderer
from training.run.grids import upscale_factor
from training.run.snapshot import load_network, save_network_snapshot

RES = 32


def _snapshot(path: str, assets: dict, seed: int, w_dim: int = 16) -> str:
    kwargs = dict(z_dim=8, w_dim=w_dim, img_resolution=RES, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0),
                  encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=3))  # fmt: skip
    torch.manual_seed(seed)
    G = Generator(**kwargs)
    with torch.no_grad():  # small noise strengths, as in a trained G: the image lives in w and p
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.02)
        for layer in G.synthesis.modules():  # injected-feature weights start at 0; a trained G uses rep(p)
            if isinstance(layer, SynthesisLayer) and layer.feat_channels:
                layer.weight[:, layer.in_channels :].normal_()
    save_network_snapshot(path, G, kwargs, dict(assets, cond=True, render_backend="torch", recon_backbone=None), 0)
    return path


def _identity_landmarks(size: int) -> np.ndarray:
    """5 points whose alignment at `size` is the whole image: the template projected in the crop's own framing."""
    scale = RESCALE_FACTOR * size / 224
    centre = size / 2 - 0.5
    return np.stack([centre + scale * TEMPLATE_5[:, 0], centre - scale * TEMPLATE_5[:, 1]], axis=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    bfm = write_synthetic_mat(str(root / "face.mat"), seed=0, grid=33)
    net = ReconNet("resnet18", input_size=32)
    torch.manual_seed(2)
    for head in net.final_layers:
        torch.nn.init.normal_(head.weight, std=0.01)
    recon = str(root / "recon.pth")
    save_recon_net(net, recon)
    data = str(root / "data.zip")
    write_image_dataset(data, num=8, resolution=RES, seed=3)
    assets = dict(bfm=bfm, recon_ckpt=recon, data=data)
    snap = _snapshot(str(root / "network-a.pt"), assets, seed=1)
    other = _snapshot(str(root / "network-b.pt"), assets, seed=5)
    G = load_network(snap)
    renderer = build_renderer(bfm, "torch", torch.device("cpu"))
    p = torch.zeros(1, 257)
    p[0, COEFF_SLICES["exp"]] = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.3
    p[0, COEFF_SLICES["angle"]] = torch.tensor([0.1, 0.3, 0.0])
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 8).astype(np.float32))
    with torch.no_grad():
        target = G(z, Condition(p, make_rep(renderer, p, RES)), noise_mode="const")[0]
    photos = root / "photos"
    photos.mkdir()
    PIL.Image.fromarray(to_uint8(target)).save(photos / "gen.png")
    np.savetxt(photos / "gen.txt", _identity_landmarks(RES))
    return dict(root=root, snap=snap, other=other, G=G, renderer=renderer, p=p[0], target=target, photos=photos,
                fr=build_reconstructor(recon, torch.device("cpu")), bfm=bfm)  # fmt: skip


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--quiet"])


def one_line_error(result, text: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], result.output


def test_psnr_is_the_uint8_formula(env) -> None:
    a, b = env["target"], env["target"].flip(-1)
    ua, ub = to_uint8(a).astype(np.float64), to_uint8(b).astype(np.float64)
    assert inv.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / np.mean((ua - ub) ** 2)))
    assert inv.psnr(a, a) == float("inf")


def test_explicit_noise_maps_leave_G_untouched(env) -> None:
    G = env["G"]
    own = {k: v.clone() for k, v in inv.noise_buffers(G).items()}
    assert own  # every synthesis conv has a noise map with non-zero strength
    p = env["p"][None].repeat(2, 1)
    feats = Condition(p, make_rep(env["renderer"], p, RES))
    ws = G.mapping(torch.randn(2, 8), feats)
    ref = G.synthesis(ws, feats, noise_mode="const")
    torch.testing.assert_close(inv.synthesize(G, ws, feats, own), ref, rtol=0, atol=0)
    other = inv.synthesize(G, ws, feats, {k: torch.randn_like(v) for k, v in own.items()})
    assert (other - ref).abs().max() > 1e-3
    for k, v in inv.noise_buffers(G).items():
        torch.testing.assert_close(v, own[k], rtol=0, atol=0)


def test_fr_estimate_starts_p(env) -> None:
    opts = inv.InversionOptions(steps=2)
    result = inv.invert_image(env["G"], env["fr"], env["renderer"], env["target"], opts, progress=False)
    with torch.no_grad():
        expected = env["fr"](env["target"][None])[0]
    torch.testing.assert_close(result.p_fr, expected)
    torch.testing.assert_close(result.p, expected)  # not refined unless asked
    refined = inv.invert_image(env["G"], env["fr"], env["renderer"], env["target"],
                               inv.InversionOptions(steps=3, refine_p=True), progress=False)  # fmt: skip
    assert not torch.equal(refined.p, refined.p_fr)
    assert result.ws.shape == (env["G"].num_ws, env["G"].w_dim)


@pytest.mark.slow
def test_inverting_a_generated_image_reaches_28db(env) -> None:
    opts = inv.InversionOptions(steps=300, feature_weight=0.0)
    result = inv.invert_image(env["G"], None, env["renderer"], env["target"], opts, p_init=env["p"], progress=False)
    assert result.psnr >= 28.0, result.psnr
    assert result.losses[-1] < result.losses[0] / 10
    # The reported PSNR is that of the written images: recompute from the images themselves.
    assert inv.psnr(result.target, result.projected) == result.psnr


def test_edits_change_only_the_requested_group(env) -> None:
    p = env["p"]
    bank = torch.randn(6, 257)
    cases = {
        "angle": real_edit.build_edits(p, "angle", yaw="-20,10", pitch="5"),
        "illum": real_edit.build_edits(p, "illum", light_dirs=["1,0,0", "0,1,1"]),
        "exp": real_edit.build_edits(p, "exp", seeds=[0, 1], bank=bank, scale="0,2"),
        "id": real_edit.build_edits(p, "id", seeds=[3], bank=bank),
    }
    expected = {"angle": ("angle",), "illum": ("gamma",), "exp": ("exp",), "id": ("id", "tex")}
    for attr, (edits, labels) in cases.items():
        assert len(labels) == len(edits)
        assert real_edit.edited_coefficients(p, edits, attr) == expected[attr]
        others = [sl for name, sl in COEFF_SLICES.items() if name not in expected[attr]]
        for sl in others:
            torch.testing.assert_close(edits[:, sl], p[sl].expand_as(edits[:, sl]), rtol=0, atol=0)
    angles = cases["angle"][0][:, COEFF_SLICES["angle"]]
    torch.testing.assert_close(angles[:, 1], torch.tensor([math.radians(-20), math.radians(10), p[225].item()]))
    assert angles[2, 0].item() == pytest.approx(math.radians(5))
    with pytest.raises(RuntimeError, match="changed other coefficient groups"):
        real_edit.edited_coefficients(p, cases["exp"][0], "angle")


def test_light_direction_brightens_the_side_it_points_to(env) -> None:
    """Independent check through the face model's SH shading: a surface facing d is lit more than one facing -d."""
    edits, _ = real_edit.light_edits(env["p"], [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
    for k, d in enumerate(torch.eye(3)):
        normals = torch.stack([d, -d])[None]  # [1, 2, 3]
        color = FaceModel.compute_color(torch.ones(1, 2, 3), normals, edits[k : k + 1, COEFF_SLICES["gamma"]])
        assert (color[0, 0] > color[0, 1] + 0.1).all(), (d, color)


def test_invert_and_edit_cli_write_every_file(env, tmp_path) -> None:
    out = tmp_path / "inv"
    result = CliRunner().invoke(cli, ["invert", "--network", env["snap"], "--images", str(env["photos"]),
                                      "--outdir", str(out), "--steps", "20"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "gen: PSNR" in result.output and "landmarks from" in result.output
    for suffix in ("target.png", "projected.png", "latent.npz"):
        assert (out / f"gen-{suffix}").is_file()
    target = np.asarray(PIL.Image.open(out / "gen-target.png"))
    assert target.shape == (RES, RES, 3)
    # The identity landmarks align the generated image onto itself (bicubic resampling of the full frame).
    assert np.abs(target.astype(int) - to_uint8(env["target"]).astype(int)).mean() < 2.0
    with np.load(out / "gen-latent.npz") as lat:
        assert lat["p"].shape == (257,) and lat["ws"].shape == (env["G"].num_ws, env["G"].w_dim)
        assert any(k.startswith("noise/") for k in lat.files)
        assert str(lat["network_sha256"]) == hashlib.sha256(open(env["snap"], "rb").read()).hexdigest()
    result = CliRunner().invoke(cli, ["edit", "--network", env["snap"], "--latent", str(out / "gen-latent.npz"),
                                      "--outdir", str(out), "--attr", "angle", "--yaw", "-20,0,20"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "changed only p[angle]" in result.output
    big = np.asarray(PIL.Image.open(out / "gen-edit-angle.png"))
    k = upscale_factor(RES)  # enlarged like every grid: each pixel a k x k block, cells >= 96 px
    assert k * RES >= 96 and big.shape == (k * RES, 5 * k * RES, 3)  # target, reconstruction, three yaws
    grid = big[::k, ::k]
    np.testing.assert_array_equal(big, grid.repeat(k, axis=0).repeat(k, axis=1))
    np.testing.assert_array_equal(grid[:, :RES], target)
    projected = np.asarray(PIL.Image.open(out / "gen-projected.png"))
    np.testing.assert_array_equal(grid[:, RES : 2 * RES], projected)  # reconstruction = the latent's image


def test_bad_inputs_are_one_line(env, tmp_path) -> None:
    out = tmp_path / "inv"
    ok = CliRunner().invoke(cli, ["invert", "--network", env["snap"], "--images", str(env["photos"] / "gen.png"),
                                  "--outdir", str(out), "--steps", "1", "--quiet"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    latent = out / "gen-latent.npz"
    one_line_error(run("edit", "--network", env["other"], "--latent", latent, "--outdir", out, "--attr", "exp"),
                   "was inverted with another network")
    G_wide = Generator(z_dim=8, w_dim=24, img_resolution=RES, synthesis_kwargs=dict(channel_base=128, channel_max=16),
                       encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=3))  # fmt: skip
    with pytest.raises(UserError, match="shapes do not fit"):
        inv.load_latent(str(latent), G_wide, hashlib.sha256(open(env["snap"], "rb").read()).hexdigest())
    one_line_error(run("invert", "--network", env["snap"], "--images", env["photos"], "--outdir", out, "--steps",
                       "0"), "--steps must be a positive")  # fmt: skip
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    one_line_error(run("invert", "--network", env["snap"], "--images", broken, "--outdir", out),
                   "as an image")
    one_line_error(run("edit", "--network", env["snap"], "--latent", tmp_path / "none.npz", "--outdir", out,
                       "--attr", "exp"), "file not found")  # fmt: skip
    one_line_error(run("edit", "--network", env["snap"], "--latent", latent, "--outdir", out, "--attr", "angle",
                       "--yaw", "left"), "--yaw: expected comma-separated numbers")  # fmt: skip


def test_vgg_weights_are_checked(tmp_path) -> None:
    with pytest.raises(UserError, match="file not found"):
        inv.PhotoLoss(None, str(tmp_path / "missing.pth"))
    path = tmp_path / "not-vgg.pth"
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, path)
    with pytest.raises(UserError, match="not a torchvision VGG-16 state dict"):
        inv.PhotoLoss(None, str(path))
    with pytest.raises(UserError, match="pass an FR"):
        inv.PhotoLoss(None)


@pytest.mark.parametrize("backbone", ["resnet18", "small"])
def test_fr_feature_loss_works_with_every_fr_trunk(backbone) -> None:
    """The built-in loss reads FR's trunk stages: the release's ResNets and the built-in world's small FR alike."""
    from deep3drecon.reconstructor import FaceReconstructor

    torch.manual_seed(0)
    fr = FaceReconstructor(ReconNet(backbone, input_size=32))
    loss = inv.PhotoLoss(fr, feature_weight=1.0, pixel_weight=0.0)
    target = torch.rand(1, 3, 32, 32) * 2 - 1
    img = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    feats = [f.detach() for f in loss.features(target)]
    assert len(feats) >= 3 and all(f.shape[0] == 1 for f in feats)
    assert float(loss(target, target, feats)) == pytest.approx(0.0, abs=1e-6)  # identical images: distance 0
    value = loss(img, target, feats)
    value.backward()
    assert float(value) > 0 and img.grad.abs().sum() > 0 and all(p.grad is None for p in fr.parameters())
