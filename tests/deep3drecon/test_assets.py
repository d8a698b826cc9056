"""deep3drecon.assets: the cache directory, one-line help for missing real assets, cached downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deep3drecon import assets
from torch_utils.errors import UserError


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TAXFREE3DMM_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "taxfree3dmm"


def test_missing_assets_explain_where_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path))
    with pytest.raises(UserError) as bfm_err:
        assets.resolve_bfm(tmp_path / "nope.mat")
    msg = str(bfm_err.value)
    assert "\n" not in msg and "nope.mat" in msg and "BFM_model_front.mat" in msg
    assert "University of Basel" in msg and "Deep3DFaceRecon_pytorch" in msg
    with pytest.raises(UserError) as fr_err:
        assets.resolve_recon_checkpoint(None)  # default location inside the cache
    msg = str(fr_err.value)
    assert "\n" not in msg and str(tmp_path / "epoch_20.pth") in msg and "Deep3DFaceRecon_pytorch README" in msg
    (tmp_path / "epoch_20.pth").write_bytes(b"x")
    assert assets.resolve_recon_checkpoint(None) == tmp_path / "epoch_20.pth"
    report = {s.name: s for s in assets.check_assets(bfm=tmp_path / "nope.mat")}
    assert report["FR checkpoint"].found and not report["BFM face model"].found
    assert "University of Basel" in str(report["BFM face model"])


def test_download_cached_from_local_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A file:// URL exercises the download path without touching the network.
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(3000))
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="SHA-256"):
        assets.download_cached(src.as_uri(), "payload.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "cache" / "payload.bin").exists()
    out = assets.download_cached(src.as_uri(), "payload.bin", sha256=digest, progress=False)
    assert out.read_bytes() == src.read_bytes()
    src.unlink()  # cached now: a second call must not need the source
    assert assets.download_cached(src.as_uri(), "payload.bin", sha256=digest, progress=False) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["payload.bin"]
