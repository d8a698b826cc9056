"""train.py validates before any work: one clear line for bad input, a resolved config under --dry-run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from train import main
from training.config import TrainConfig, load_preset, resolve_config


@pytest.fixture()
def data(tmp_path):
    path = str(tmp_path / "d.zip")
    write_image_dataset(path, num=4, resolution=8)
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cfg", "nope"], "unknown preset 'nope'; choose one of: paper256, smoke"),
        (["--data", "/does/not/exist.zip", "--no-cond"], "--data path does not exist"),
        (["--gpus", "3", "--batch", "64", "--no-cond", "--data", "{data}"], "--batch=64 must be a positive multiple"),
        (["--batch-gpu", "3", "--no-cond", "--data", "{data}"], "--batch-gpu=3 must divide the per-GPU batch 64"),
        (["--data", "{data}"], "design method needs --bfm"),
        (["--resume", "latest", "--outdir", "{tmp}"], "no run in"),
        (["--gamma", "-1"], "-1"),
        (["--batch-gpu", "4", "--no-cond", "--data", "{data}"], "multiple of the minibatch-stddev group 8"),
        # Refused before training, not at the first snapshot: FR-based metrics of an unconditional design.
        (["--no-cond", "--data", "{data}", "--metrics", "cons1k", "-n"], "cons1k need a 3DMM-conditioned generator"),
        (["--design", "uncond", "--cond", "--data", "{data}"], "--cond means --design method, not uncond"),
        (["--design", "nope"], "Invalid value for '--design'"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, data, tmp_path):
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_dry_run_prints_resolved_config(data, tmp_path):
    result = invoke("--cfg", "paper256", "--data", data, "--no-cond", "--gamma", "2", "--outdir", str(tmp_path), "-n")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output[: result.output.index("Output directory")])
    assert config["gamma"] == 2 and config["design"] == "uncond" and config["resolution"] == 8
    assert config["map_layers"] == 2 and config["z_dim"] == 64 and config["mbstd_group"] == 8  # paper appendix A
    assert "00000-paper256-d-gpus1-batch64-gamma2-uncond" in result.output
    assert not list(tmp_path.glob("0*"))  # dry run creates nothing


def test_presets_hold_the_paper_settings():
    c = resolve_config("paper256", {"data": None, "builtin_data": {"count": 1, "resolution": 8}})
    assert (c.batch, c.glr, c.dlr, c.gamma, c.lambda_cons, c.blend_kimg, c.kimg) == (64, 0.0025, 0.0025, 1.0, 20.0,
                                                                                      2000.0, 25000)
    assert (c.z_dim, c.map_layers, c.style_mixing_prob, c.mbstd_group, c.channel_base) == (64, 2, 0.0, 8, 16384)
    assert c.rep_cache_mb == 0  # the paper's preset renders rep(p) per batch
    for name in ("paper256", "smoke"):
        TrainConfig.from_dict(dict(TrainConfig().to_dict(), **load_preset(name)))  # no unknown keys
    builtin = {"data": None, "builtin_data": {"count": 1, "resolution": 8}}
    with pytest.raises(UserError, match="rep_cache_mb must be non-negative"):
        resolve_config("paper256", dict(builtin, rep_cache_mb=-1))


def test_resume_rejects_flags_it_would_ignore_and_revalidates(tmp_path):
    import torch

    from tests.conftest import run_training_loop
    from tests.training.test_training_loop import tiny_config

    data = str(tmp_path / "d.zip")
    write_image_dataset(data, num=4, resolution=8)
    run = tmp_path / "runs" / "00000-tiny"
    run.mkdir(parents=True)
    run_training_loop(tiny_config(data, kimg=0.004), str(run), torch.device("cpu"))
    result = invoke("--resume", "latest", "--outdir", str(tmp_path / "runs"), "--gamma", "3")
    assert result.exit_code != 0 and "not: gamma" in result.output
    result = invoke("--resume", str(run), "--batch-gpu", "3")
    assert result.exit_code != 0 and "--batch-gpu=3 must divide" in result.output
    result = invoke("--resume", str(run), "--kimg", "0.008", "-n")
    assert result.exit_code == 0 and f"Output directory: {run}" in result.output


def test_builtin_assets_stay_unresolved_in_the_saved_config(tmp_path, monkeypatch):
    """The config records 'built-in' (None), so snapshots keep working after the asset cache moves."""
    import torch

    import dataprep.builtin as builtin
    from deep3drecon.recon_net import ReconNet, save_recon_net

    fr = tmp_path / "fr.pth"
    save_recon_net(ReconNet(backbone="resnet18", input_size=32), fr)
    monkeypatch.setattr(builtin, "builtin_recon_path", lambda progress=True: fr)  # skip training the FR
    preset = tmp_path / "mini.json"
    preset.write_text(json.dumps({"builtin_data": {"count": 4, "resolution": 16, "seed": 0}, "batch": 4,
                                  "mbstd_group": 4}))
    result = invoke("--cfg", str(preset), "--outdir", str(tmp_path / "runs"), "-n")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output[result.output.index("{"): result.output.index("Output directory")])
    assert config["data"] is None and config["bfm"] is None and config["recon_ckpt"] is None
    assert config["resolution"] == 16 and config["design"] == "method"
    from deep3drecon import assets
    from training.resolve import resolve_assets

    resolved = resolve_assets(config, need_fr=True)
    data, bfm, ckpt = resolved.data, resolved.bfm, resolved.recon_ckpt
    assert data.endswith(f"synthetic-v{assets.SYNTHETIC_FR_VERSION}-4-16px-seed0.zip")
    assert bfm.endswith(".mat") and ckpt == str(fr)
    assert torch.load(ckpt, weights_only=True)["input_size"] == 32
