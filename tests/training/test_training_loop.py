"""End-to-end behaviour of the loop on tiny unconditional configs: files, safe snapshots, exact resume, 2-rank DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_training_loop, write_image_dataset
from training.config import TrainConfig
from training.run import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(cfg="test", z_dim=8, w_dim=16, map_layers=2, channel_base=128, channel_max=16, num_fp16_res=0,
            mbstd_group=2, batch=4, ema_kimg=0.01, ema_rampup=0.05, tick_kimg=0.008, snap=1, workers=0, design="uncond",
            gamma=1.0, d_reg_interval=2, device="cpu")


def tiny_config(data: str, **overrides) -> TrainConfig:
    return TrainConfig(**dict(TINY, data=data, **overrides))


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "tiny.zip")
    write_image_dataset(path, num=12, resolution=8)
    return path


def test_run_writes_outputs_and_safe_snapshots(tmp_path, dataset_path):
    c = tiny_config(dataset_path, kimg=0.016)
    out = run_training_loop(c, str(tmp_path), torch.device("cpu"))
    assert out["cur_nimg"] == 16 and out["batch_idx"] == 4
    for name in ("reals.png", "fakes_init.png", "fakes000000.004.png", "fakes000000.016.png", "stats.jsonl"):
        assert os.path.isfile(tmp_path / name), name
    lines = [json.loads(line) for line in open(tmp_path / "stats.jsonl")]
    assert lines[-1]["Progress/kimg"]["mean"] == pytest.approx(0.016)
    assert all(k in lines[0] for k in ("Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty", "Timing/sec_per_kimg"))
    net_path = tmp_path / "network-snapshot-000000.016.pt"
    raw = torch.load(net_path, weights_only=True)  # must not need pickle of arbitrary classes
    assert raw["format"] == snapshot.NETWORK_FORMAT and raw["cur_nimg"] == 16
    G = snapshot.load_network(str(net_path))
    assert not any(p.requires_grad for p in G.parameters()) and not G.training
    img = G(torch.randn(2, c.z_dim), noise_mode="const")
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()
    # No stray temp files from the atomic writes.
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_corrupt_snapshot_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read snapshot"):
        snapshot.load_network(str(path))


def test_resume_continues_exactly(tmp_path, dataset_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    run_training_loop(tiny_config(dataset_path, kimg=0.024), str(straight), torch.device("cpu"))
    # Same run "killed" after 8 images (its last snapshot), then resumed to the same length.
    first = tmp_path / "resumed"
    first.mkdir()
    run_training_loop(tiny_config(dataset_path, kimg=0.008), str(first), torch.device("cpu"))
    state_path = snapshot.latest_training_state(str(first))
    state = torch.load(state_path, weights_only=True)
    assert state["cur_nimg"] == 8
    out = run_training_loop(tiny_config(dataset_path, kimg=0.024), str(first), torch.device("cpu"),
                            resume_state=state_path)
    assert out["cur_nimg"] == 24
    a = torch.load(snapshot.latest_training_state(str(straight)), weights_only=True)
    b = torch.load(snapshot.latest_training_state(str(first)), weights_only=True)
    for key in ("G", "D", "G_ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=f"{key}.{name}")
    assert a["opt_D"]["state"][0]["step"] == b["opt_D"]["state"][0]["step"]


GRAD_SCRIPT = """
import sys, torch
from torch_utils import distributed
from training.loss import GANLoss
from training.discriminator import Discriminator
from torch_utils.training_stats import StatsCollector

def worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    distributed.init_process_group(rank, 2, torch.device("cpu"), "file://" + init_file)
    torch.manual_seed(0)
    D = Discriminator(img_resolution=8, channel_base=128, channel_max=16, num_fp16_res=0, mbstd_group_size=1)
    reals = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = GANLoss(None, D, StatsCollector())
    D.requires_grad_(True)
    loss.accumulate_gradients("Dreg", reals[rank * 4:(rank + 1) * 4], None, None, None, 16, 0)
    distributed.average_gradients(D.parameters())
    if rank == 0:
        torch.save({n: p.grad for n, p in D.named_parameters()}, out_file)
    distributed.shutdown()

if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_gradient_average_equals_single_process(tmp_path):
    from torch_utils.training_stats import StatsCollector
    from training.discriminator import Discriminator
    from training.loss import GANLoss

    script = tmp_path / "grad_worker.py"
    script.write_text(GRAD_SCRIPT)
    proc = _run([str(script), str(tmp_path / "init"), str(tmp_path / "grads.pt")], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = torch.load(tmp_path / "grads.pt", weights_only=True)
    # Same global batch of 8 in one process (mbstd group 1 keeps samples independent of the split).
    torch.manual_seed(0)
    D = Discriminator(img_resolution=8, channel_base=128, channel_max=16, num_fp16_res=0, mbstd_group_size=1)
    reals = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    D.requires_grad_(True)
    GANLoss(None, D, StatsCollector()).accumulate_gradients("Dreg", reals, None, None, None, 16, 0)
    for name, p in D.named_parameters():
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_train_cli_two_process_gloo_run(tmp_path, dataset_path):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({k: v for k, v in TINY.items() if k != "cfg"}))
    proc = _run(["train.py", "--cfg", str(preset), "--data", dataset_path, "--gpus", "2", "--kimg", "0.016",
                 "--outdir", str(tmp_path / "runs")], cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run_dir,) = os.listdir(tmp_path / "runs")
    assert run_dir == "00000-tiny-tiny-gpus2-batch4-gamma1-uncond"
    state = torch.load(snapshot.latest_training_state(str(tmp_path / "runs" / run_dir)), weights_only=True)
    # Snapshots are only written after the loop checked that replicas are bitwise identical across ranks.
    assert state["cur_nimg"] == 16 and state["config"]["gpus"] == 2
    log = open(tmp_path / "runs" / run_dir / "log.txt").read()
    assert "batch 4 = 2 process(es) x 1 round(s) x 2" in log


@pytest.mark.slow
def test_torchrun_ranks_agree_on_one_run(tmp_path, dataset_path):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({k: v for k, v in TINY.items() if k != "cfg"}))
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py", "--cfg",
                 str(preset), "--data", dataset_path, "--kimg", "0.008", "--outdir", str(tmp_path / "runs")], cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Rank 0 alone picked the run directory; the world size came from torchrun, not from --gpus.
    (run_dir,) = os.listdir(tmp_path / "runs")
    assert "gpus2" in run_dir
    state = torch.load(snapshot.latest_training_state(str(tmp_path / "runs" / run_dir)), weights_only=True)
    assert state["cur_nimg"] == 8 and set(state["rng"]) >= {"rank0", "rank1"}
    # Bad input fails on every rank with one clear line, instead of hanging the job.
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py", "--cfg", "nope"],
                cwd=REPO)
    assert proc.returncode != 0 and "unknown preset 'nope'" in proc.stderr


def test_diverged_replicas_stop_before_any_snapshot_is_written(tmp_path, dataset_path, monkeypatch):
    """The replica check runs before the network snapshot is written: a diverged run leaves no snapshot behind."""
    from torch_utils import distributed

    monkeypatch.setattr(distributed, "max_param_divergence", lambda module: 1.0)  # as if a rank had drifted
    with pytest.raises(RuntimeError, match="replicas diverged"):
        run_training_loop(tiny_config(dataset_path, kimg=0.004), str(tmp_path), torch.device("cpu"))
    assert not list(tmp_path.glob("network-snapshot-*")) and not list(tmp_path.glob("training-state-*"))
