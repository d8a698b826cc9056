"""Run directories: atomic creation of `<outdir>/<NNNNN>-<desc>` and an exclusive lock held for the whole run.

The lock is `flock` on `<run>/.lock`, which holds the holder's PID and host. The kernel releases it when the
holder exits or is killed, so a lock left by a crashed run is stale and simply taken over (no manual cleanup).
A second trainer on the same run directory (`--resume latest` while the run trains, or two resumes) gets one
line naming the holder. Creating a numbered directory uses `mkdir`, which fails if the name exists: two runs
started at the same instant get different numbers. Once the lock is held, temp files that a killed writer left
(`.tmp-*`) are removed: no live writer can own them.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import socket

from torch_utils.errors import UserError, first_line
from training.run.snapshot import TEMP_PREFIX

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on one run directory; `release` (or process exit) frees it."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock the run directory {run_dir}: {e.strerror or first_line(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{run_dir} is in use by a trainer ({holder}); wait for it to finish or stop it "
                            "before resuming this run") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        """Free the lock (idempotent)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temp_files(run_dir: str) -> list[str]:
    """Delete `.tmp-*` files a killed writer left in run_dir (call while holding its lock); returns their names."""
    removed = []
    for path in glob.glob(os.path.join(run_dir, TEMP_PREFIX + "*")):
        try:
            os.remove(path)
            removed.append(os.path.basename(path))
        except OSError:
            pass
    return removed


def next_run_number(outdir: str) -> int:
    """One more than the highest `<N>-...` entry in outdir (0 when none)."""
    names = os.listdir(outdir) if os.path.isdir(outdir) else []
    return max((int(m.group(1)) for d in names if (m := re.match(r"^(\d+)-", d))), default=-1) + 1


def create_run_dir(outdir: str, desc: str, max_tries: int = 1000) -> tuple[str, RunLock]:
    """Make `<outdir>/<NNNNN>-<desc>` with the next free number atomically and lock it -> (path, lock).

    An unwritable or read-only outdir is one UserError line.
    """
    try:
        os.makedirs(outdir, exist_ok=True)
        number = next_run_number(outdir)
        for _ in range(max_tries):
            path = os.path.join(outdir, f"{number:05d}-{desc}")
            try:
                os.mkdir(path)  # atomic: exactly one of two racing runs gets this name
            except FileExistsError:
                number = max(number + 1, next_run_number(outdir))
                continue
            return path, RunLock(path)
    except OSError as e:
        raise UserError(f"cannot create a run directory in {outdir}: {e.strerror or first_line(e)}") from None
    raise UserError(f"cannot create a run directory in {outdir}: {max_tries} numbers were taken concurrently")


def lock_existing_run(run_dir: str) -> RunLock:
    """Lock a run directory that is resumed, then clear its stale temp files."""
    lock = RunLock(run_dir)
    remove_stale_temp_files(run_dir)
    return lock
