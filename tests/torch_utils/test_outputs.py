"""torch_utils.outputs, the one rule for output files: never replace without overwrite (not even a file that appears
during the write), complete files only, no temp file left by any failure, a full disk as one line."""

from __future__ import annotations

import os

import pytest

from tests.full_disk import full_disk, no_space  # noqa: F401 (fixture)
from torch_utils import outputs
from torch_utils.errors import UserError


def _temps(folder) -> list[str]:
    return [name for name in os.listdir(folder) if ".tmp" in name]


def test_writes_refuses_and_replaces(tmp_path):
    path = tmp_path / "sub" / "a.png"
    outputs.write_bytes(path, b"first", overwrite=False)
    assert path.read_bytes() == b"first" and oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(UserError) as info:
        outputs.write_bytes(path, b"second", overwrite=False)
    assert str(info.value) == f"{path} already exists; {outputs.OVERWRITE_HINT}"
    assert path.read_bytes() == b"first"
    outputs.write_bytes(path, b"third", overwrite=True)
    assert path.read_bytes() == b"third" and _temps(path.parent) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_file_that_appears_during_the_write_is_never_replaced(tmp_path):
    path = tmp_path / "grid.png"
    with pytest.raises(UserError, match="appeared while this command ran"):
        with outputs.output_file(path, overwrite=False) as f:
            f.write(b"ours")
            path.write_bytes(b"someone else's")  # between the check and the move into place
    assert path.read_bytes() == b"someone else's" and _temps(tmp_path) == []


def test_failures_leave_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError, match="a bug in the writer"):
        with outputs.output_file(tmp_path / "x.npy", overwrite=False) as f:
            f.write(b"half")
            raise RuntimeError("a bug in the writer")
    assert os.listdir(tmp_path) == []


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, full_disk, monkeypatch):  # noqa: F811
    folder = full_disk or tmp_path
    if full_disk is None:
        monkeypatch.setattr(outputs.os, "fsync", no_space)
    path = folder / "big.bin"
    with pytest.raises(UserError) as info:
        outputs.write_bytes(path, b"x" * (1 << 20), overwrite=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot write {path}: No space left on device")
    assert "free some space" in message and not path.exists() and _temps(folder) == []


def test_publish_without_hard_links_still_refuses(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(outputs.os, "link", no_links)
    outputs.write_bytes(tmp_path / "a", b"1", overwrite=False)
    with pytest.raises(UserError, match="already exists"):
        outputs.write_bytes(tmp_path / "a", b"2", overwrite=False)
    assert (tmp_path / "a").read_bytes() == b"1"
