"""calc_metrics.py: user mistakes are one-line errors raised before any model is loaded."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from calc_metrics import main


def test_unknown_metric_fails_with_one_line_before_loading(tmp_path):
    network = tmp_path / "network-snapshot-000000.pt"
    network.write_bytes(b"not a snapshot")  # never read: names are validated first
    result = CliRunner().invoke(main, ["--network", str(network), "--metrics", "fid50k_full,fid_typo"])
    assert result.exit_code != 0
    assert "unknown metric(s) fid_typo" in result.output and "Traceback" not in result.output


def test_missing_network_is_rejected(tmp_path):
    result = CliRunner().invoke(main, ["--network", str(tmp_path / "missing.pt")])
    assert result.exit_code != 0 and "does not exist" in result.output


@pytest.mark.slow
def test_calc_metrics_end_to_end_shares_passes_names_variants_and_prints_progress(tmp_path, conditional_snapshot):
    network, _ = conditional_snapshot  # tests/conditional_fixtures.py: 16 px conditional G, face model, FR, data
    args = ["--network", network, "--metrics", "fid1k,kid1k,ds100_cgof", "--random-features", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--batch", "250"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("writing real statistics") == 1  # FID and KID: one real pass, one cache entry
    assert "img/s, ETA" in result.output
    record = json.loads((tmp_path / "run" / "metric-ds100_cgof.jsonl").read_text())
    assert record["variant"] == "cgof" and set(record["results"]) >= {"ds_id", "ds_exp", "ds_angle"}
    assert "kid" in json.loads((tmp_path / "run" / "metric-kid1k.jsonl").read_text())["results"]
