"""calc_metrics.py: user mistakes are one-line errors raised before any model is loaded."""

from __future__ import annotations

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
