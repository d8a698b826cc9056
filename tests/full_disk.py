"""A full disk for tests: a tiny tmpfs mounted for the test, filled to the last byte, where this process may mount
one (root with CAP_SYS_ADMIN); otherwise None, and the test simulates ENOSPC instead. Import the fixture into a
test module: `from tests.full_disk import full_disk  # noqa: F401`."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest


def _mount_tmpfs(folder: str, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a file system with no free byte (a 256 KiB tmpfs, filled), or None where none can be mounted."""
    folder = tmp_path / "full-disk"
    folder.mkdir()
    if not _mount_tmpfs(str(folder), "256k"):
        yield None
        return
    try:
        with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def no_space(*args, **kwargs):
    """A stand-in for a write call that fails as on a full disk (for the simulated case)."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
