"""generate.py end to end on tiny snapshots in the real file layout: every mode, grid sizes, reproducibility, the p
each cell used, style-mixing semantics against a direct G computation, and one-line errors."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from deep3drecon.coeffs import COEFF_SLICES
from deep3drecon.recon_net import ReconNet, load_recon_net, save_recon_net
from deep3drecon.synthetic import write_synthetic_mat
from generate import cli
from generation import controlled as cg
from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from training.condition import Condition
from training.networks import Generator
from training.rep import make_rep
from training.resolve import build_renderer
from training.run.grids import MIN_CELL_PX, upscale_factor
from training.run.snapshot import load_network, save_network_snapshot

RES = 64  # smallest resolution with all three fig. 7 scales (fine = 64..R)
NUM_LABELS = 12
K = upscale_factor(RES)  # grid PNGs show cells under 96 px enlarged K x (nearest neighbour); per-cell PNGs are R px


def _make_snapshot(folder: str, conditional: bool, assets: dict) -> str:
    kwargs = dict(
        z_dim=8,
        w_dim=16,
        img_resolution=RES,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=8, num_fp16_res=0),
        encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=3) if conditional else None,
    )
    torch.manual_seed(1)
    G = Generator(**kwargs)
    with torch.no_grad():  # random noise strengths and w_avg so noise modes and truncation actually matter
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.5)
        for layer in G.synthesis.modules():  # trained injected-feature columns (they start at zero)
            if getattr(layer, "feat_channels", 0) and hasattr(layer, "in_channels"):
                layer.weight[:, layer.in_channels :].normal_()
        G.mapping.w_avg.normal_()
    config = dict(assets, cond=conditional, render_backend="torch", recon_backbone=None)
    path = os.path.join(folder, f"network-{'cond' if conditional else 'uncond'}.pt")
    save_network_snapshot(path, G, kwargs, config, cur_nimg=0)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny conditional + unconditional snapshots, synthetic face model, random FR, dataset and reference photos."""
    root = tmp_path_factory.mktemp("gen")
    bfm = write_synthetic_mat(str(root / "face.mat"), seed=0, grid=33)
    net = ReconNet("resnet18", input_size=32)
    torch.manual_seed(2)
    for head in net.final_layers:  # random heads: the reconstructed p must depend on the photo
        torch.nn.init.normal_(head.weight, std=0.02)
    recon = str(root / "recon.pth")
    save_recon_net(net, recon)
    data = str(root / "data.zip")
    labels = write_image_dataset(data, num=NUM_LABELS, resolution=RES, seed=3)  # p ~ 0.1 N(0, 1)
    assets = dict(bfm=bfm, recon_ckpt=recon, data=data)
    refs = root / "refs"
    refs.mkdir()
    rng = np.random.default_rng(4)
    for i in range(2):
        PIL.Image.fromarray(rng.integers(0, 256, [48, 48, 3], dtype=np.uint8)).save(refs / f"ref{i}.png")
    return dict(root=root, cond=_make_snapshot(str(root), True, assets), uncond=_make_snapshot(str(root), False,
                assets), labels=labels, bfm=bfm, recon=recon, refs=str(refs), data=data)  # fmt: skip


def run(*args: str) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args: str) -> object:
    result = run(*args, "--quiet")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def png(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


def grid_png(path) -> np.ndarray:
    """A grid PNG at G's resolution, after checking that the file is its K x nearest-neighbour enlargement."""
    big = png(path)
    small = big[::K, ::K]
    np.testing.assert_array_equal(big, small.repeat(K, axis=0).repeat(K, axis=1))
    return small


def test_parse_seeds() -> None:
    assert cg.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert cg.parse_seeds("5") == [5]
    assert cg.parse_seeds(" 2 , 0-1 ") == [2, 0, 1]
    assert cg.parse_seeds("0-31,40") == list(range(32)) + [40]
    for bad in ["", "a", "3-1", "-1", "1-", "1,,2", "1.5", str(2**32)]:
        with pytest.raises(UserError):
            cg.parse_seeds(bad)
    assert cg.format_seeds(list(range(32)) + [40]) == "0-31_40"
    assert cg.format_seeds([5, 3, 4]) == "5_3-4"


def test_seed_streams() -> None:
    z = cg.seed_z([3, 4], 8).numpy()
    np.testing.assert_array_equal(z[0], np.random.RandomState(3).randn(1, 8)[0].astype(np.float32))  # StyleGAN2's z
    picks = np.array([cg.p_index(s, 12) for s in range(600)])
    assert np.bincount(picks, minlength=12).min() > 25  # ~uniform over the bank (expected 50 each)
    assert np.mean(picks[1:] == picks[:-1]) < 0.15  # neighbouring seeds independent (expected 1/12)
    donors = cg.donor_indices(0, 12, 30, exclude=5)
    assert donors.min() >= 0 and donors.max() < 12 and 5 not in donors


def test_sweep_indices_order_the_bank_along_its_first_varied_coefficient() -> None:
    rng = np.random.default_rng(0)
    bank = np.zeros((500, 257), np.float32)
    angle = COEFF_SLICES["angle"]
    bank[:, angle.start + 1] = rng.normal(0, 0.35, 500)  # yaw; pitch (first) stays 0
    bank[:, angle.start + 2] = rng.normal(0, 0.5, 500)  # roll, independent
    picks = cg.sweep_indices(torch.from_numpy(bank), ["angle"], 7)
    # Reference: numpy's sorted yaw at the 2%..98% quantile positions.
    expected = np.sort(bank[:, angle.start + 1])[np.rint(np.linspace(0.02, 0.98, 7) * 499).astype(int)]
    np.testing.assert_array_equal(bank[picks, angle.start + 1], expected)
    assert np.all(np.diff(bank[picks, angle.start + 1]) > 0)  # monotone sweep, low to high
    assert cg.sweep_indices(torch.zeros(10, 257), ["angle"], 3).tolist() == [0, 0, 0]  # nothing varies: row 0


def test_style_scales_follow_the_paper(env) -> None:
    G = load_network(env["cond"])
    assert cg.ws_resolutions(G) == [4, 4, 8, 8, 16, 16, 32, 32, 64, 64]
    assert cg.style_layers(G, "coarse") == [0, 1, 2, 3]  # 4x4 - 8x8
    assert cg.style_layers(G, "middle") == [4, 5, 6, 7]  # 16x16 - 32x32
    assert cg.style_layers(G, "fine") == [8, 9]  # 64x64 - R


@pytest.mark.parametrize("show_rep", [False, True])
def test_images_grid_size_and_p(env, tmp_path, show_rep: bool) -> None:
    extra = ["--show-rep"] if show_rep else []
    ok("images", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "0-4", "--cols", "3", *extra)
    grid = grid_png(tmp_path / "grid-seeds0-4.png")
    assert grid.shape == (2 * RES, 3 * RES * (2 if show_rep else 1), 3)
    assert (grid[RES:, 2 * RES * (2 if show_rep else 1) :] == 0).all()  # 5 samples in a 2 x 3 grid: last cell empty
    p = np.load(tmp_path / "grid-seeds0-4-p.npy")
    assert p.shape == (2, 3, 257) and np.isnan(p[1, 2]).all()
    expected = env["labels"][[cg.p_index(s, NUM_LABELS) for s in range(5)]]
    np.testing.assert_array_equal(p.reshape(6, 257)[:5], expected)
    if show_rep:  # the render half of a cell is rep(p): background outside the face mask is rep's -1 = black
        assert (grid[:RES, RES : 2 * RES].reshape(-1, 3).max(axis=1) == 0).any()


def test_same_seed_same_image_for_any_batch(env, tmp_path) -> None:
    ok("images", "--network", env["cond"], "--outdir", tmp_path / "a", "--seeds", "0-4", "--batch", "4",
       "--save-images")  # fmt: skip
    ok("images", "--network", env["cond"], "--outdir", tmp_path / "b", "--seeds", "3", "--batch", "1",
       "--save-images")  # fmt: skip
    a, b = png(tmp_path / "a/grid-seeds0-4/seed0003.png"), png(tmp_path / "b/grid-seeds3/seed0003.png")
    assert a.shape == (RES, RES, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float reassociation may flip one rounding step
    assert not np.array_equal(png(tmp_path / "a/grid-seeds0-4/seed0002.png"), a)
    # Random noise too: seeded per cell, so batch 1 / batch 3 agree, and it differs from const noise.
    G = load_network(env["cond"])
    renderer = build_renderer(env["bfm"], "torch", torch.device("cpu"))
    bank = cg.load_p_bank(env["data"])
    out = {}
    for batch, mode in [(1, "random"), (3, "random"), (3, "const")]:
        s = cg.Sampler(G, renderer, torch.device("cpu"), truncation_psi=0.7, noise_mode=mode, batch=batch,
                       progress=False)  # fmt: skip
        out[batch, mode] = cg.images_grid(s, [7, 8, 9], bank, cols=3).cells.images
    torch.testing.assert_close(out[1, "random"], out[3, "random"], atol=1e-5, rtol=0)
    assert (out[3, "random"] - out[3, "const"]).abs().max() > 1e-3


@pytest.mark.parametrize("attr", list(cg.ATTR_GROUPS))
def test_vary_changes_only_its_group(env, tmp_path, attr: str) -> None:
    ok("vary", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "5", "--attr", attr, "--cols", "4",
       "--show-rep")  # fmt: skip
    assert grid_png(tmp_path / f"vary-{attr}-seed0005.png").shape == (RES, 5 * 2 * RES, 3)
    p = np.load(tmp_path / f"vary-{attr}-seed0005-p.npy")[0]
    labels = env["labels"]
    base = labels[cg.p_index(5, NUM_LABELS)]
    np.testing.assert_array_equal(p[0], base)  # column 0 is the base face itself
    inside = np.zeros(257, dtype=bool)
    groups = {"id": ("id", "tex"), "exp": ("exp",), "illum": ("gamma",), "angle": ("angle",)}  # shape + albedo = id
    for group in groups[attr]:
        inside[COEFF_SLICES[group]] = True
    for col in p[1:]:
        np.testing.assert_array_equal(col[~inside], base[~inside])
        assert not np.allclose(col[inside], base[inside])
        assert (labels[:, inside] == col[inside]).all(axis=1).any()  # the group is copied from some bank row


def test_vary_sweep_uses_the_same_sorted_donors_for_every_seed(env, tmp_path) -> None:
    ok("vary", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "5,6", "--attr", "angle", "--cols", "4",
       "--sweep")  # fmt: skip
    angle, labels = COEFF_SLICES["angle"], env["labels"]
    donors = [np.load(tmp_path / f"vary-angle-seed{s:04d}-p.npy")[0, 1:, angle] for s in (5, 6)]
    np.testing.assert_array_equal(donors[0], donors[1])  # the same donors whatever the base face
    first = int(np.flatnonzero(labels[:, angle].std(axis=0) > 0)[0])  # the first angle the bank varies
    values = np.sort(labels[:, angle][:, first])  # reference: numpy's sort at 4 evenly spaced quantile positions
    expected = values[np.rint(np.linspace(0.02, 0.98, 4) * (len(labels) - 1)).astype(int)]
    np.testing.assert_array_equal(donors[0][:, first], expected)


def test_resample_modes_share_cells_with_images(env, tmp_path) -> None:
    ok("images", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "0-1", "--save-images")
    ok("resample-z", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "0-1", "--z-seeds", "0-2",
       "--save-images", "--show-rep")  # fmt: skip
    ok("resample-p", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "0-1", "--p-seeds", "0-2",
       "--save-images")  # fmt: skip
    assert grid_png(tmp_path / "resample-z-seeds0-1-z0-2.png").shape == (2 * RES, 3 * 2 * RES, 3)
    assert grid_png(tmp_path / "resample-p-seeds0-1-p0-2.png").shape == (2 * RES, 3 * RES, 3)
    assert K * RES >= MIN_CELL_PX and png(tmp_path / "grid-seeds0-1.png").shape == (K * RES, 2 * K * RES, 3)
    for seed in (0, 1):  # the grid shows G's pixels, enlarged: at G's resolution it is the per-cell PNGs side by side
        cell = grid_png(tmp_path / "grid-seeds0-1.png")[:, seed * RES : (seed + 1) * RES]
        np.testing.assert_array_equal(cell, png(tmp_path / f"grid-seeds0-1/seed{seed:04d}.png"))
    pz, pp = np.load(tmp_path / "resample-z-seeds0-1-z0-2-p.npy"), np.load(tmp_path / "resample-p-seeds0-1-p0-2-p.npy")
    assert (pz == pz[:, :1]).all() and not np.array_equal(pz[0, 0], pz[1, 0])  # p fixed along each row
    assert (pp == pp[:1]).all() and not np.array_equal(pp[0, 0], pp[0, 1])  # p fixed down each column
    for seed in (0, 1):  # diagonal cells are exactly the plain sample of that seed
        plain = png(tmp_path / f"grid-seeds0-1/seed{seed:04d}.png").astype(int)
        for cell in (f"resample-z-seeds0-1-z0-2/seed{seed:04d}-z{seed:04d}.png",
                     f"resample-p-seeds0-1-p0-2/seed{seed:04d}-p{seed:04d}.png"):  # fmt: skip
            assert np.abs(png(tmp_path / cell).astype(int) - plain).max() <= 1
    z_row = [png(tmp_path / f"resample-z-seeds0-1-z0-2/seed0000-z{z:04d}.png") for z in range(3)]
    assert not np.array_equal(z_row[0], z_row[1])


def test_style_mix_matches_direct_computation(env, tmp_path) -> None:
    ok("style-mix", "--network", env["cond"], "--outdir", tmp_path, "--row-seeds", "0-1", "--col-seeds", "2-4")
    for scale in cg.STYLE_SCALES:  # header row + header column around 2 x 3 cells
        assert grid_png(tmp_path / f"style-mix-{scale}-rows0-1-cols2-4.png").shape == (3 * RES, 4 * RES, 3)
    ok("style-mix", "--network", env["cond"], "--outdir", tmp_path, "--layers", "0-3", "--show-rep")
    assert grid_png(tmp_path / "style-mix-layers0-3-rows0-2-cols0-2.png").shape == (4 * RES, 4 * 2 * RES, 3)
    # Library result vs. G run by hand: ws of A with the coarse ws of B, rep of A's p.
    G = load_network(env["cond"])
    renderer = build_renderer(env["bfm"], "torch", torch.device("cpu"))
    bank = torch.from_numpy(env["labels"])
    s = cg.Sampler(G, renderer, torch.device("cpu"), truncation_psi=0.5, progress=False)
    result = cg.style_mix_grid(s, [0, 1], [2], bank, cg.style_layers(G, "coarse"))
    z = lambda seed: torch.from_numpy(np.random.RandomState(seed).randn(1, 8).astype(np.float32))
    with torch.no_grad():
        p_a = bank[[cg.p_index(1, NUM_LABELS)]]
        cond_a = Condition(p_a, make_rep(renderer, p_a, RES))
        ws = G.mapping(z(1), cond_a, truncation_psi=0.5)
        ws[:, :4] = G.mapping(z(2), cond_a, truncation_psi=0.5)[:, :4]
        expected = G.synthesis(ws, cond_a, noise_mode="const")
    torch.testing.assert_close(result.cells.images[1:2], expected, atol=1e-5, rtol=0)
    assert (result.cells.images[1] - result.row_headers.images[1]).abs().max() > 1e-4  # the swap does something


def test_reference_takes_exp_light_angle_from_photos(env, tmp_path) -> None:
    ok("reference", "--network", env["cond"], "--outdir", tmp_path, "--images", env["refs"], "--seeds", "0-2",
       "--show-rep")  # fmt: skip
    assert grid_png(tmp_path / "reference-seeds0-2.png").shape == (4 * RES, 3 * 2 * RES, 3)
    p = np.load(tmp_path / "reference-seeds0-2-p.npy")
    # Independent FR pass: photo -> [0, 1] at the generator's resolution -> FR input size -> ReconNet.
    net = load_recon_net(env["recon"]).eval()
    photos = []
    for name in ("ref0.png", "ref1.png"):
        photo = PIL.Image.open(os.path.join(env["refs"], name)).resize((RES, RES), PIL.Image.Resampling.BICUBIC)
        photos.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1))
    with torch.no_grad():
        x = F.interpolate(torch.stack(photos), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        ref_p = net(x).numpy()
    labels = env["labels"]
    for r, seed in enumerate([0, 1, 2]):
        base = labels[cg.p_index(seed, NUM_LABELS)]
        for c in range(2):
            for group, sl in COEFF_SLICES.items():
                source = ref_p[c] if group in ("exp", "gamma", "angle") else base
                np.testing.assert_allclose(p[r, c, sl], source[sl], atol=1e-4, err_msg=group)
    assert not np.allclose(ref_p[0], ref_p[1])


def test_reference_with_landmarks(env, tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(5)
    PIL.Image.fromarray(rng.integers(0, 256, [90, 120, 3], dtype=np.uint8)).save(raw / "photo.jpg")
    lm = np.array([[45, 40], [75, 40], [60, 55], [48, 70], [72, 70]], dtype=np.float64)  # eyes, nose, mouth
    np.savetxt(raw / "photo.txt", lm)
    ok("reference", "--network", env["cond"], "--outdir", tmp_path, "--images", raw, "--landmarks", "--seeds", "0")
    assert grid_png(tmp_path / "reference-seeds0.png").shape == (2 * RES, 2 * RES, 3)
    os.remove(raw / "photo.txt")
    result = run("reference", "--network", env["cond"], "--outdir", tmp_path, "--images", raw, "--landmarks")
    # No landmark file: the face detector runs (faces extra) and finds no face in noise, or says how to install it.
    assert result.exit_code == 1 and ("no face found in photo.jpg" in result.output or "[faces]" in result.output)


def test_unconditional_snapshot(env, tmp_path) -> None:
    ok("images", "--network", env["uncond"], "--outdir", tmp_path, "--seeds", "0-3", "--cols", "2")
    assert grid_png(tmp_path / "grid-seeds0-3.png").shape == (2 * RES, 2 * RES, 3)
    assert not (tmp_path / "grid-seeds0-3-p.npy").exists()
    ok("style-mix", "--network", env["uncond"], "--outdir", tmp_path, "--row-seeds", "0-1", "--scale", "fine")
    assert grid_png(tmp_path / "style-mix-fine-rows0-1-cols0-1.png").shape == (3 * RES, 3 * RES, 3)
    for mode in ("vary", "resample-z", "resample-p"):
        result = run(mode, "--network", env["uncond"], "--outdir", tmp_path)
        assert result.exit_code == 1 and "unconditional" in result.output, result.output
        assert result.output.count("\n") == 1  # one line, no traceback
    result = run("images", "--network", env["uncond"], "--outdir", tmp_path, "--show-rep")
    assert result.exit_code == 1 and "--show-rep needs a 3DMM-conditional snapshot" in result.output


def test_clear_errors(env, tmp_path) -> None:
    result = run("vary", "--network", env["cond"], "--outdir", tmp_path, "--attr", "hair")
    assert result.exit_code == 2 and "'hair' is not one of" in result.output
    result = run("images", "--network", tmp_path / "missing.pt", "--outdir", tmp_path)
    assert result.exit_code == 1 and "snapshot not found" in result.output and "Traceback" not in result.output
    result = run("images", "--network", env["cond"], "--outdir", tmp_path, "--bfm", tmp_path / "nope.mat")
    assert result.exit_code == 1 and "--bfm path does not exist" in result.output and "nope.mat" in result.output
    result = run("images", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "3-1")
    assert result.exit_code == 2 and "end is smaller than the start" in result.output
    np.save(tmp_path / "bank.npy", np.zeros([4, 100], dtype=np.float32))
    result = run("images", "--network", env["cond"], "--outdir", tmp_path, "--p-bank", tmp_path / "bank.npy")
    assert result.exit_code == 1 and "expected 3DMM coefficients [M, 257]" in result.output
    result = run("reference", "--network", env["cond"], "--outdir", tmp_path, "--images", tmp_path / "none")
    assert result.exit_code == 1 and "folder not found" in result.output


def test_p_bank_npy(env, tmp_path) -> None:
    bank = np.random.default_rng(6).normal(size=[3, 257]).astype(np.float32) * 0.1
    np.save(tmp_path / "bank.npy", bank)
    ok("resample-p", "--network", env["cond"], "--outdir", tmp_path, "--p-bank", tmp_path / "bank.npy",
       "--seeds", "0", "--p-seeds", "0-3")  # fmt: skip
    p = np.load(tmp_path / "resample-p-seeds0-p0-3-p.npy")[0]
    np.testing.assert_array_equal(p, bank[[cg.p_index(s, 3) for s in range(4)]])
