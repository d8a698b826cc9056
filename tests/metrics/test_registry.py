"""Registry: names, unknown-name errors, result records and the metric JSONL log."""

from __future__ import annotations

import json

import pytest

from metrics.registry import calc_metric, get_metric, is_valid_metric, list_metrics, report_metric
from torch_utils.errors import UserError


def test_registry_lists_full_and_smoke_metrics():
    names = list_metrics()
    for name in ("fid50k_full", "kid50k_full", "ds10k", "cons10k", "fid1k", "kid1k", "ds100", "cons1k"):
        assert name in names and is_valid_metric(name)
    assert get_metric("ds10k").needs_reconstructor and get_metric("fid50k_full").needs_real_images


def test_unknown_metric_is_a_clear_user_error():
    with pytest.raises(UserError, match="unknown metric 'fid_typo'.*fid50k_full"):
        get_metric("fid_typo")
    assert not is_valid_metric("fid_typo")


def test_calc_and_report_write_one_json_line_per_call(make_ctx, tmp_path):
    ctx = make_ctx(num_images=24, batch_size=50)
    result = calc_metric("ds100", ctx)
    assert result["metric"] == "ds100" and result["num_gpus"] == 1 and result["total_time"] >= 0
    assert {"ds_id", "ds_exp", "ds_illum", "ds_angle"} <= set(result["results"])
    run_dir = tmp_path / "run"
    line = report_metric(result, str(run_dir), "network-snapshot-000100.pt")
    report_metric(result, str(run_dir), "network-snapshot-000200.pt")
    lines = (run_dir / "metric-ds100.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == json.loads(line)
    record = json.loads(lines[1])
    assert record["snapshot"] == "network-snapshot-000200.pt" and record["results"] == result["results"]


def test_smoke_fid_runs_end_to_end(make_ctx):
    result = calc_metric("fid1k", make_ctx(num_images=30, batch_size=250))
    assert result["results"]["fid"] > 0


def test_every_ds_variant_is_registered_and_named_in_its_records(make_ctx, tmp_path):
    expected = {"ds10k": "paper", "ds10k_cgof": "cgof", "ds10k_gancontrol": "gancontrol",
                "ds100": "paper", "ds100_cgof": "cgof", "ds100_gancontrol": "gancontrol"}
    for name, variant in expected.items():
        assert get_metric(name).variant == variant and get_metric(name).needs_reconstructor
    for name in ("ds100_cgof", "ds100_gancontrol"):
        result = calc_metric(name, make_ctx(num_images=24, batch_size=50, fr_noise=0.01))
        report_metric(result, str(tmp_path), "network-snapshot-000100.pt")
        record = json.loads((tmp_path / f"metric-{name}.jsonl").read_text())
        assert record["variant"] == expected[name]
        assert ("ds_illum" in record["results"]) == (name != "ds100_cgof")  # cGOF has no illumination factor
    assert "variant" not in calc_metric("fid1k", make_ctx(num_images=30, batch_size=250))


def test_recorded_metrics_keeps_the_last_line_and_leaves_out_lines_older_than_their_snapshot(tmp_path):
    import os
    import time

    from experiments.smoke_report import _recorded
    from metrics.registry import recorded_metrics, report_metric

    snap = tmp_path / "network-snapshot-000001.000.pt"
    snap.write_bytes(b"first training")
    report_metric({"metric": "cons1k", "results": {"cons_id": 1.0}}, str(tmp_path), snap.name)
    report_metric({"metric": "cons1k", "results": {"cons_id": 2.0}}, str(tmp_path), snap.name)
    report_metric({"metric": "cons1k", "results": {"cons_id": 3.0}}, str(tmp_path), "gone.pt")  # file absent: kept
    assert recorded_metrics(str(tmp_path), "cons1k") == {snap.name: {"cons_id": 2.0}, "gone.pt": {"cons_id": 3.0}}
    assert recorded_metrics(str(tmp_path), "swd2k") == {}
    # the run was killed and retrained: a new file of the same name, written after those lines
    later = time.time() + 5
    os.utime(snap, (later, later))
    assert snap.name not in recorded_metrics(str(tmp_path), "cons1k")
    assert _recorded(str(tmp_path), snap.name) is None  # the smoke report does not print the old file's numbers
