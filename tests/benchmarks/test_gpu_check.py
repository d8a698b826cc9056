"""benchmarks/gpu_check.py --device cpu --quick prints one markdown table with every row, and the same rows as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every row the check must print (item names, independent of the script's own lists).
EXPECTED_ITEMS = [
    "device", "torch / CUDA / cuDNN", "bias_act path", "upfirdn2d path", "renderer backends",
    "bias_act lrelu+clamp max error", "bias_act lrelu+clamp fwd+bwd ref/fused",
    "upfirdn2d upsample2d max error", "upfirdn2d upsample2d fwd+bwd ref/fused",
    "torch 16px batch 2 fwd", "torch 16px batch 2 fwd+bwd", "torch 16px batch 4 fwd", "torch 16px batch 4 fwd+bwd",
    "nvdiffrast",
    "paper256 uncond sec/kimg", "paper256 method sec/kimg",
    "paper256 method + fast paths (channels_last, fused Adam, bf16 FR) sec/kimg",
    "paper256 method + fast paths + TF32 sec/kimg", "speed tax method / uncond",
    "render rep(p) (no grad)", "E forward+backward", "G(z, cond) forward+backward (E included)", "D forward+backward",
    "FR forward+backward (fp32)", "render rep(FR(x)) forward+backward", "R1 (D double backward)",
    "optimizer steps G + D", "EMA",
    "FR fwd+bwd bf16 autocast", "FR fwd+bwd fp16 autocast", "FR fwd+bwd compiled",
    "fid: generated images/s", "ds: sets/s (10 samples each)", "gpu_check wall time",
]  # fmt: skip


@pytest.mark.slow
def test_quick_cpu_check_prints_every_row(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TAXFREE3DMM_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--device", "cpu",
                           "--quick", "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "| section | item | value | note |" and lines[1] == "|---|---|---|---|"
    body = lines[2:]
    assert all(line.startswith("| ") and line.count(" | ") == 3 for line in body), body  # one table, 4 cells
    items = [line.split(" | ")[1] for line in body]
    for expected in EXPECTED_ITEMS:
        assert any(item == expected or item.startswith(expected) for item in items), expected
    rows = {(r["section"], r["item"]): r["value"] for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == len(body)
    # Without CUDA the fused rows say so instead of a number; every measured row carries a number.
    assert rows[("ops", "bias_act lrelu+clamp max error")] == "n/a (no CUDA)"
    assert "FAILED" not in items, [line for line in body if "FAILED" in line]  # a failing section becomes a row
    for key in [("training", "paper256 method sec/kimg"), ("training", "speed tax method / uncond"),
                ("phases", "R1 (D double backward)"), ("metrics", "fid: generated images/s")]:  # fmt: skip
        assert float(rows[key].split()[0].rstrip("x")) > 0, (key, rows[key])
    assert os.path.isfile(tmp_path / "check.log")  # the training loop's own log, kept out of the table
    assert (tmp_path / "check.md").read_text().splitlines() == lines  # rewritten after every row, complete at the end
