"""Asset report: the Inception line (found, missing with flag and cache path, checksum) and the CLIs."""

from __future__ import annotations

import hashlib

import torch
from click.testing import CliRunner

import metrics.assets as assets
from calc_metrics import main as calc_metrics_main
from metrics.features import INCEPTION_FILENAME


def test_inception_line_says_flag_and_cache_path_when_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    status = assets.inception_status()
    assert not status.found and str(status.path) == str(tmp_path / "checkpoints" / INCEPTION_FILENAME)
    assert "--inception" in status.note and str(tmp_path / "checkpoints") in status.note
    given = assets.inception_status(str(tmp_path / "mine.pth"))
    assert not given.found and given.path == tmp_path / "mine.pth"


def test_cached_inception_file_is_checked_against_the_release_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / INCEPTION_FILENAME
    cached.parent.mkdir()
    cached.write_bytes(b"not the weights")
    assert not assets.inception_status().found and "checksum" in assets.inception_status().note
    # A file whose SHA-256 starts with the 8 digits in the release name passes (name patched to this file's hash).
    renamed = f"weights-inception-2015-12-05-{hashlib.sha256(b'not the weights').hexdigest()[:8]}.pth"
    monkeypatch.setattr(assets, "INCEPTION_FILENAME", renamed)
    cached.rename(cached.parent / renamed)
    assert assets.inception_status().found


def test_check_assets_commands_report_face_assets_and_inception(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    for command, args in ((assets.main, []), (calc_metrics_main, ["--check-assets"])):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0, result.output
        assert "BFM face model" in result.output and "FR checkpoint" in result.output
        assert "[missing] Inception-v3 FID weights" in result.output
