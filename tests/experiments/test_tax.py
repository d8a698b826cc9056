"""python -m experiments.tax: trains every (design, seed) with train.py, writes the tax table, continues where it
stopped. train.py runs for real (tiny world, tiny networks); calc_metrics.py (minutes for swd2k/rkid2k, which need
2048 real images) is replaced by a writer of known records, so the table can be checked against them."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

from experiments import tax
from metrics.registry import report_metric
from training.run.snapshot import snapshot_nimg

PRESET = {"builtin_data": {"count": 32, "resolution": 16, "seed": 0}, "z_dim": 8, "w_dim": 16, "map_layers": 2,
          "channel_base": 128, "channel_max": 16, "num_fp16_res": 0, "mbstd_group": 2, "batch": 4,
          "tick_kimg": 0.004, "snap": 1, "workers": 0, "ema_kimg": 0.01, "enc_channel_base": 64,
          "enc_channel_max": 8, "enc_feat_channels": 2, "blend_kimg": 0.008, "kimg": 0.008, "design": "method",
          "render_backend": "torch", "device": "cpu", "rep_cache_mb": 16}  # fmt: skip


def fake_results(metric: str, design: str, nimg: int) -> dict[str, float]:
    """Known values per (metric, design, snapshot): quality falls with nimg, method pays 0.5 over uncond."""
    base = 10.0 - nimg / 1000 + (0.5 if design == "method" else 0.0)
    if metric == "swd2k":
        return {"swd_16": base, "swd_avg": base, "swd_floor_avg": float("nan")}
    if metric == "rkid2k":
        return {"rkid": base / 100, "density": 0.5, "coverage": 0.25}
    if metric == "cons1k":
        return {"cons_id": 0.03, "cons_exp": 0.04}
    return {"ds_id": 0.1, "ds_exp": 0.2, "ds_illum": 0.3, "ds_angle": 0.4}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from deep3drecon.recon_net import ReconNet, save_recon_net

    cfg, fr = tmp_path / "preset.json", tmp_path / "fr.pth"
    cfg.write_text(json.dumps(PRESET))
    torch.manual_seed(0)
    save_recon_net(ReconNet("small", input_size=32), fr)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    calls: list[list[str]] = []
    real = tax.run_checked

    def run_checked(cmd, what, env=None, log=None):
        calls.append(cmd)
        if not cmd[1].endswith("calc_metrics.py"):
            return real(cmd, what, env=env, log=log)
        snap, metrics = cmd[cmd.index("--network") + 1], cmd[cmd.index("--metrics") + 1].split(",")
        design = os.path.basename(os.path.dirname(os.path.dirname(snap))).split("-seed")[0]
        for metric in metrics:
            result = {"metric": metric, "results": fake_results(metric, design, snapshot_nimg(snap))}
            report_metric(result, run_dir=os.path.dirname(snap), snapshot_name=os.path.basename(snap))

    monkeypatch.setattr(tax, "run_checked", run_checked)
    opts = dict(outdir=str(tmp_path / "exp"), design="uncond,method", seeds="0", kimg=0.008, gpus=1, cfg=str(cfg),
                world_count=32, data=None, bfm=None, recon_ckpt=str(fr), batch=None, snap=None, device="cpu",
                quality="swd2k,rkid2k", inception=None, fid="fid50k_full", metric_workers=0, jobs=1,
                print_commands=False)  # fmt: skip
    return opts, calls


def train_calls(calls):
    return [c for c in calls if c[1].endswith("train.py")]


@pytest.mark.slow
def test_quick_run_writes_the_table_and_a_second_call_continues(setup) -> None:
    opts, calls = setup
    summary = tax.run_experiment(opts)
    out = opts["outdir"]
    assert len(train_calls(calls)) == 2
    md = open(os.path.join(out, "tax.md")).read()
    header = next(line for line in md.splitlines() if line.startswith("| design"))
    columns = ("swd_avg", "rkid", "density", "coverage", "cons_id", "ds_angle", "tax swd_avg", "tax rkid", "s/kimg")
    for column in columns:
        assert f" {column} |" in header
    assert "swd_floor_avg" not in header
    assert os.path.getsize(os.path.join(out, "tax.png")) > 0
    saved = json.load(open(os.path.join(out, "tax.json")))
    assert saved["quality_key"] == "swd_avg" and summary["designs"].keys() == saved["designs"].keys()
    # The tax, recomputed from the per-run values: one seed, so means are the run values and the sd is 0.
    runs = {r["design"]: r for r in saved["runs"]}
    assert runs["method"]["final_snapshot"] == "network-snapshot-000000.008.pt"
    for key in ("swd_avg", "rkid", "density"):
        expected = runs["method"]["metrics"][key] - runs["uncond"]["metrics"][key]
        assert math.isclose(saved["designs"]["method"]["tax"][key]["value"], expected)
        assert saved["designs"]["method"]["tax"][key]["sd"] == 0
    assert math.isclose(saved["designs"]["method"]["tax"]["swd_avg"]["value"], 0.5)
    assert "cons_id" not in saved["designs"]["method"]["tax"]  # uncond has no consistency
    row = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "0.5 +- 0" in row and runs["method"]["sec_per_kimg"] > 0
    # the sensitivity table: uncond's first and final snapshot of each quality key, and the floor
    assert "| swd_avg | 9.996 +- 0 | 9.992 +- 0 | - | nan +- 0 |" in md
    assert "| rkid | 0.09996 +- 0 | 0.09992 +- 0 | - | - |" in md
    # Every snapshot was evaluated: the curve has the 0.004 and 0.008 kimg points.
    assert [p[0] for p in saved["curves"]["uncond"]["0"]] == [0.004, 0.008]
    # cons and ds only on the final snapshot: the table reads nothing else
    metric_calls = [(c[c.index("--network") + 1], c[c.index("--metrics") + 1]) for c in calls
                    if c[1].endswith("calc_metrics.py")]  # fmt: skip
    evaluated = {(os.path.basename(snap), names) for snap, names in metric_calls if "method-seed0" in snap}
    # (train.py's own snapshot metric, cons1k, is already recorded for every snapshot: only ds100 is added)
    assert evaluated == {("network-snapshot-000000.004.pt", "swd2k,rkid2k"),
                         ("network-snapshot-000000.008.pt", "swd2k,rkid2k,ds100")}  # fmt: skip

    # A second call with everything done trains and evaluates nothing.
    calls.clear()
    tax.run_experiment(opts)
    assert calls == []

    # Interrupt method: its last snapshot and state gone. Only it resumes; uncond's files stay untouched.
    method, uncond = (tax.Run(out, d, 0, 0.008, []).run_dir() for d in ("method", "uncond"))
    for name in ("network-snapshot-000000.008.pt", "training-state-000000.008.pt"):
        os.remove(os.path.join(method, name))
    before = {f: os.stat(os.path.join(uncond, f)).st_mtime_ns for f in os.listdir(uncond)}
    runs = [tax.Run(out, d, 0, 0.008, tax.metrics_for(d, ["swd2k", "rkid2k"])) for d in ("uncond", "method")]
    partial = tax.summarize(runs, ["uncond", "method"], ["swd2k", "rkid2k"])["designs"]
    assert partial["method"]["n"] == 0 and partial["uncond"]["n"] == 1  # a run under way is not in the table
    tax.run_experiment(opts)
    trained = train_calls(calls)
    assert len(trained) == 1 and trained[0][trained[0].index("--resume") + 1] == method
    assert os.path.isfile(os.path.join(method, "network-snapshot-000000.008.pt"))
    assert {f: os.stat(os.path.join(uncond, f)).st_mtime_ns for f in os.listdir(uncond)} == before
    metric_snaps = [c[c.index("--network") + 1] for c in calls if c[1].endswith("calc_metrics.py")]
    assert metric_snaps == [os.path.join(method, "network-snapshot-000000.008.pt")]


def test_print_commands_prints_one_train_command_per_run_and_runs_nothing(setup) -> None:
    opts, calls = setup
    args = ["--outdir", opts["outdir"], "--cfg", opts["cfg"], "--design", "uncond,method,dfg", "--seeds", "0,1",
            "--kimg", "0.008", "--print-commands"]  # fmt: skip
    result = CliRunner().invoke(tax.main, args)
    assert result.exit_code == 0, result.output
    trains = [line for line in result.output.splitlines() if "train.py" in line and not line.startswith("#")]
    assert len(trains) == 6 and calls == []
    assert sorted((c.split("--design ")[1].split()[0], c.split("--seed ")[1].split()[0]) for c in trains) == sorted(
        (d, s) for d in ("uncond", "method", "dfg") for s in "01")
    assert not os.path.exists(os.path.join(opts["outdir"], "runs"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--design", "uncond,nope"], "unknown design(s) nope"),
        (["--design", "method"], "add it to --design"),
        (["--seeds", "0,a"], "--seeds 0,a is not a comma-separated list"),
        (["--seeds", "1,1"], "repeats an entry"),
        (["--kimg", "0"], "--kimg must be > 0"),
        (["--quality", "cons1k"], "is a 3DMM metric"),
        (["--quality", "fid1k"], "needs Inception weights"),
    ],
)
def test_bad_input_is_one_line(setup, args, message) -> None:
    opts, _ = setup
    result = CliRunner().invoke(tax.main, ["--outdir", opts["outdir"], "--cfg", opts["cfg"], *args])
    assert result.exit_code != 0 and message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_jobs_run_at_once_with_their_output_in_each_runs_log(setup) -> None:
    opts, calls = setup
    serial = tax.run_experiment(opts)
    parallel = tax.run_experiment(dict(opts, outdir=opts["outdir"] + "-jobs", jobs=2))
    assert len(train_calls(calls)) == 4
    for design in ("uncond", "method"):  # the same records in each run give the same table
        same = json.dumps(parallel["designs"][design]["metrics"]) == json.dumps(serial["designs"][design]["metrics"])
        assert same  # (as text: the floors are NaN)
        log = open(os.path.join(opts["outdir"] + "-jobs", "runs", f"{design}-seed0", "tax-log.txt")).read()
        assert log.startswith("$ ") and "train.py" in log and "Exiting..." in log


def test_job_environments_split_cores_or_gpus(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert tax.job_environments(1, 1, None) == [None]
    assert [e["OMP_NUM_THREADS"] for e in tax.job_environments(3, 1, None)] == ["2", "2", "2"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting wins
    assert [e["OMP_NUM_THREADS"] for e in tax.job_environments(2, 1, None)] == ["1", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in tax.job_environments(4, 2, "cuda")] == ["0,1", "2,3", "4,5", "6,7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "8,9,10,11,12,13,14,15")  # the user's devices, sliced
    assert [e["CUDA_VISIBLE_DEVICES"] for e in tax.job_environments(2, 4, None)] == ["8,9,10,11", "12,13,14,15"]
    cpu_only = tax.job_environments(2, 1, "cpu")[0]  # --device cpu: the GPUs are not handed out
    assert cpu_only["OMP_NUM_THREADS"] == "1" and cpu_only["CUDA_VISIBLE_DEVICES"] == "8,9,10,11,12,13,14,15"
    with pytest.raises(tax.UserError, match="--jobs 3 x --gpus 4 needs 12 GPUs, 8 are visible"):
        tax.job_environments(3, 4, None)


def test_a_failed_job_stops_the_queue(setup, monkeypatch) -> None:
    opts, calls = setup

    def failing(cmd, what, env=None, log=None):
        calls.append(cmd)
        raise tax.UserError(f"{what} failed")

    monkeypatch.setattr(tax, "run_checked", failing)
    with pytest.raises(tax.UserError, match="failed"):
        tax.run_experiment(dict(opts, design="uncond,method,dfg,sg2-cond", seeds="0,1", jobs=2))
    assert len(calls) < 8  # the queued runs never started


def test_a_design_can_run_the_first_n_seeds_and_runs_are_seed_major(setup) -> None:
    opts, _ = setup
    args = ["--outdir", opts["outdir"], "--cfg", opts["cfg"], "--design", "uncond,method-noblend:1,dfg",
            "--seeds", "4,5", "--print-commands"]  # fmt: skip
    result = CliRunner().invoke(tax.main, args)
    trains = [line for line in result.output.splitlines() if "train.py" in line and not line.startswith("#")]
    got = [(c.split("--design ")[1].split()[0], c.split("--seed ")[1].split()[0]) for c in trains]
    assert got == [("uncond", "4"), ("method-noblend", "4"), ("dfg", "4"), ("uncond", "5"), ("dfg", "5")]
    for bad, message in (("uncond,dfg:3", "after ':' give how many of the 2 --seeds"),
                         ("uncond,dfg:1,dfg", "names dfg twice")):  # fmt: skip
        result = CliRunner().invoke(tax.main, [*args[:4], "--design", bad, "--seeds", "4,5"])
        assert result.exit_code != 0 and message in result.output


def test_the_first_quality_metric_on_every_snapshot_the_others_on_the_first_and_final(tmp_path) -> None:
    run = tax.Run(str(tmp_path), "method", 0, 0.012, tax.metrics_for("method", ["swd2k", "rkid2k"]))
    run_dir = os.path.join(run.parent, "00000-run")
    os.makedirs(run_dir)
    for kimg in ("000000.004", "000000.008", "000000.012"):
        for kind in ("network-snapshot", "training-state"):
            open(os.path.join(run_dir, f"{kind}-{kimg}.pt"), "wb").close()
    got = {os.path.basename(snap)[17:27]: todo for snap, todo in run.missing_metrics().items()}
    assert got == {"000000.004": ["swd2k", "rkid2k"], "000000.008": ["swd2k"],
                   "000000.012": ["swd2k", "rkid2k", "cons1k", "ds100"]}  # fmt: skip


def test_inception_weights_add_fid_to_the_quality_metrics(setup, tmp_path) -> None:
    opts, calls = setup
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")  # never read: --print-commands runs nothing
    args = ["--outdir", opts["outdir"], "--cfg", opts["cfg"], "--inception", str(weights), "--fid", "fid1k",
            "--print-commands"]  # fmt: skip
    result = CliRunner().invoke(tax.main, args)
    assert result.exit_code == 0, result.output
    hint = next(line for line in result.output.splitlines() if line.startswith("# then"))
    assert "--metrics swd2k,rkid2k,fid1k" in hint and f"--inception {weights}" in hint and calls == []
    run = tax.Run(opts["outdir"], "method", 0, 0.008, tax.metrics_for("method", ["swd2k", "rkid2k", "fid1k"]))
    assert run.metrics == ["swd2k", "rkid2k", "fid1k", "cons1k", "ds100"]
