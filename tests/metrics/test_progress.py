"""Progress lines: images/s and ETA from an injected clock, one line per 10% step, a restart per pass."""

from __future__ import annotations

from metrics.progress import ProgressPrinter


def test_progress_lines_give_rate_and_eta_and_restart_per_pass():
    now = [100.0]
    lines = []
    printer = ProgressPrinter("fid50k_full", lines.append, interval_s=1e9, clock=lambda: now[0])
    printer(0, 1000)
    for done in range(50, 1001, 50):  # 50 images per second
        now[0] += 1.0
        printer(done, 1000)
    assert len(lines) == 11  # 0%, then every 10% step (the 100% step once)
    assert lines[2] == "  fid50k_full: 200/1000 images, 50.0 img/s, ETA 16s"
    assert lines[-1].startswith("  fid50k_full: 1000/1000 images, 50.0 img/s, ETA 0s")
    printer(0, 400)  # the generation pass after the real pass: rate and ETA start again
    now[0] += 10.0
    printer(100, 400)
    assert lines[-1] == "  fid50k_full: 100/400 images, 10.0 img/s, ETA 30s"


def test_progress_prints_at_the_time_interval_between_steps():
    now = [0.0]
    lines = []
    printer = ProgressPrinter("ds10k", lines.append, interval_s=60, clock=lambda: now[0])
    printer(0, 40_000)
    for done in range(1, 30):  # 29 minutes at 2 images/s stay inside the first 10% step
        now[0] += 60.0
        printer(done * 120, 40_000)
    assert len(lines) == 30 and "2.0 img/s" in lines[-1]


def test_rate_counts_from_the_first_report_not_from_zero():
    now = [0.0]
    lines = []
    printer = ProgressPrinter("fid", lines.append, interval_s=1e9, clock=lambda: now[0])
    printer(250, 1000)  # first report arrives after the first batch
    now[0] = 5.0
    printer(500, 1000)
    assert lines == ["  fid: 250/1000 images", "  fid: 500/1000 images, 50.0 img/s, ETA 10s"]
