"""The status line: an ETA from the recent ticks (start-up tick left out), in the line and in stats.jsonl; terms a
design does not compute (cons, alpha for --no-cond) left out."""

from __future__ import annotations

import json

import pytest
import torch

from torch_utils.training_stats import StatsCollector
from training.run import reporting
from training.run.reporting import TickReporter


def run_ticks(tmp_path, monkeypatch, ticks, total_nimg, conditional=False):
    """ticks: (images after the tick, seconds the tick took, maintenance seconds before it) -> (lines, rows)."""
    now = [1000.0]
    monkeypatch.setattr(reporting.time, "time", lambda: now[0])
    stats = StatsCollector()
    reporter = TickReporter(str(tmp_path), stats, torch.device("cpu"), rank=0)
    nimg = 0
    for tick, (cur_nimg, seconds, maint) in enumerate(ticks):
        start = now[0]
        now[0] += seconds
        stats.report("Loss/G/loss", 1.0)
        stats.report("Loss/D/loss", 2.0)
        if conditional:
            stats.report("Loss/G/consistency", 0.5)
            stats.report("Progress/alpha", 0.25)
        reporter.tick(cur_tick=tick, cur_nimg=cur_nimg, tick_start_nimg=nimg, tick_start_time=start, start_time=1000.0,
                      maintenance_time=maint, total_nimg=total_nimg)  # fmt: skip
        nimg = cur_nimg
    reporter.close()
    return [json.loads(line) for line in open(tmp_path / "stats.jsonl")]


def test_eta_is_remaining_images_times_recent_seconds_per_image(tmp_path, monkeypatch, capsys) -> None:
    ticks = [(4, 100.0, 0.0),  # start-up: 25 s/img
             (20, 8.0, 3.0), (36, 12.0, 0.0), (52, 4.0, 0.0), (68, 16.0, 0.0), (80, 1.0, 0.0)]  # fmt: skip
    rows = run_ticks(tmp_path, monkeypatch, ticks, total_nimg=80)
    # By hand: remaining images x (seconds incl. maintenance / images) over the last <= 3 ticks after the first.
    expected = [76 * 100 / 4, 60 * 11 / 16, 44 * (11 + 12) / 32, 28 * (11 + 12 + 4) / 48, 12 * (12 + 4 + 16) / 48, 0]
    assert [r["Timing/eta_sec"]["mean"] for r in rows] == pytest.approx(expected)
    lines = capsys.readouterr().out.splitlines()
    assert "eta 31m 40s" in lines[0] and "eta 41s" in lines[1] and "eta 0s" in lines[-1]
    for line in lines:  # an unconditional design computes neither the consistency term nor the blending alpha
        assert "cons" not in line and "alpha" not in line and "nan" not in line


def test_conditional_tick_shows_cons_and_alpha(tmp_path, monkeypatch, capsys) -> None:
    run_ticks(tmp_path, monkeypatch, [(8, 2.0, 0.0)], total_nimg=16, conditional=True)
    line = capsys.readouterr().out
    assert "cons 0.5000" in line and "alpha 0.250" in line and "eta 2s" in line


def test_no_eta_without_a_run_length(tmp_path, monkeypatch, capsys) -> None:
    rows = run_ticks(tmp_path, monkeypatch, [(8, 2.0, 0.0)], total_nimg=None)
    assert "Timing/eta_sec" not in rows[0] and "eta" not in capsys.readouterr().out
