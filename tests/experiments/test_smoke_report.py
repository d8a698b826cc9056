"""The main job's evidence: after a run on the built-in world, the run directory holds the fakes grid, one vary grid
per attribute group from the final snapshot and cons1k of the first and last snapshots, and the summary names them."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from training.config import TrainConfig
from training.run.grids import GRID_COLS, GRID_ROWS, MIN_CELL_PX, save_image_grid, upscale_factor


def test_grid_cells_are_nearest_upsampled_to_at_least_96_px(tmp_path) -> None:
    images = np.random.default_rng(0).uniform(-1, 1, size=(6, 3, 32, 32)).astype(np.float32)
    save_image_grid(images, str(tmp_path / "g.png"), grid_w=3)
    grid = np.asarray(PIL.Image.open(tmp_path / "g.png"))
    k = upscale_factor(32)
    assert k == 3 and grid.shape == (2 * 32 * k, 3 * 32 * k, 3) and 32 * k >= MIN_CELL_PX
    cell = np.rint((images[4] + 1) * 127.5).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)  # row 1, column 1
    np.testing.assert_array_equal(grid[32 * k : 64 * k, 32 * k : 64 * k], np.kron(cell, np.ones((k, k, 1), np.uint8)))
    assert upscale_factor(256) == 1


@pytest.mark.slow
def test_run_on_the_builtin_world_ends_with_its_evidence(tmp_path, monkeypatch, capsys) -> None:
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from experiments import smoke_report
    from tests.conftest import run_training_loop

    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path / "cache"))
    fr = tmp_path / "fr.pth"
    torch.manual_seed(0)
    save_recon_net(ReconNet("small", input_size=32), fr)  # random weights: the report only needs an FR
    from deep3drecon import assets

    config = TrainConfig(
        cfg="test", builtin_data={"count": 8, "resolution": 16, "seed": 0}, bfm=str(assets.synthetic_face_model_path()),
        recon_ckpt=str(fr), render_backend="torch", design="method", z_dim=8, w_dim=16, channel_base=128,
        channel_max=16, num_fp16_res=0, mbstd_group=2, batch=4, tick_kimg=0.004, snap=2, workers=0, ema_kimg=0.01,
        enc_channel_base=64, enc_channel_max=8, enc_feat_channels=2, blend_kimg=0.008, kimg=0.008, device="cpu")
    assert smoke_report.applies(config) and not smoke_report.applies(TrainConfig(data="x.zip"))
    run = tmp_path / "run"
    run.mkdir()
    run_training_loop(config, str(run), torch.device("cpu"))
    snapshots = smoke_report.network_snapshots(str(run))
    first, last = "network-snapshot-000000.004.pt", "network-snapshot-000000.008.pt"  # unique names per snapshot
    assert [os.path.basename(s) for s in snapshots] == [first, last]
    capsys.readouterr()
    report = smoke_report.write_run_report(config, str(run), torch.device("cpu"))
    printed = capsys.readouterr().out

    # Fakes grid: 8 x 8 cells (rows one p, columns one z), each shown at 96 px.
    fakes = np.asarray(PIL.Image.open(run / "fakes000000.008.png"))
    assert fakes.shape == (GRID_ROWS * 96, GRID_COLS * 96, 3)
    # One vary grid per group: 6 row pairs (base faces: the render r(p) above G's image) x 8 columns (the base, then
    # 7 donors of that group).
    for attr in smoke_report.VARY_ATTRS:
        path = run / f"vary-{attr}.png"
        grid = np.asarray(PIL.Image.open(path)).astype(np.int16)
        assert grid.shape == (2 * len(smoke_report.VARY_SEEDS) * 96, (smoke_report.VARY_DONORS + 1) * 96, 3)
        assert report["grids"][attr] == str(path) and str(path) in printed
        # Same z and same other groups along a row: only the varied group changes the condition and the image.
        for row in (grid[:96], grid[96:192]):
            assert any(np.abs(row[:, 96 * c : 96 * (c + 1)] - row[:, :96]).max() > 0 for c in range(1, 8))
        render_row = grid[:96]
        assert render_row[:3, :3].max() == 0  # the renders are on black: the corner of r(p) is background
    lines = [json.loads(line) for line in open(run / "metric-cons1k.jsonl")]
    assert [line["snapshot"] for line in lines] == [first, last]
    assert report["cons"][first] == lines[0]["results"] and report["cons"][last] == lines[1]["results"]
    assert all(f"cons_{g}" in lines[0]["results"] for g in smoke_report.CONS_GROUPS)
    assert "Consistency per group" in printed and str(run / "fakes000000.008.png") in printed
    assert set(report["reference"]) == {"guess", "reals"} and "guess: always answering the mean p" in printed
    # A second call reuses the recorded cons1k lines instead of appending new ones.
    smoke_report.write_run_report(config, str(run), torch.device("cpu"), progress=False)
    assert len(open(run / "metric-cons1k.jsonl").readlines()) == 2


def test_reference_levels_match_naive_loops() -> None:
    from deep3drecon.coeffs import COEFF_SLICES
    from experiments import smoke_report

    rng = np.random.default_rng(0)
    labels = rng.normal(size=(40, 257)) * rng.uniform(0, 2, size=257)
    guess = smoke_report.guess_levels(labels)
    for g in smoke_report.CONS_GROUPS:
        cols = range(COEFF_SLICES[g].start, COEFF_SLICES[g].stop)
        naive = sum(sum((labels[n, k] - labels[:, k].mean()) ** 2 for n in range(40)) / 40 for k in cols) / len(cols)
        assert guess[f"cons_{g}"] == pytest.approx(naive, rel=1e-9)

    # reals: FR on each image (uint8 -> [-1, 1]) vs its label, here with an FR that answers the image's mean value.
    images = rng.integers(0, 256, size=(7, 3, 4, 4), dtype=np.uint8)
    data = [(images[i], labels[i].astype(np.float32)) for i in range(7)]

    class Data(list):
        def __len__(self) -> int:
            return 7

    def fr(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None].repeat(1, 257)

    reals = smoke_report.real_image_levels(Data(data), fr, torch.device("cpu"), batch=3)
    for g in smoke_report.CONS_GROUPS:
        sl = COEFF_SLICES[g]
        naive = np.mean([((images[i] / 127.5 - 1).mean() - labels[i, sl].astype(np.float32)) ** 2 for i in range(7)])
        assert reals[f"cons_{g}"] == pytest.approx(naive, rel=1e-5)
