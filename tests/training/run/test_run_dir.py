"""Run directories: created atomically under concurrency, locked for the whole run (a second trainer gets one line
naming the holder), stale locks of killed runs taken over, and temp files of killed writers removed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from torch_utils.errors import UserError
from training.run.run_dir import RunLock, create_run_dir, lock_existing_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HOLDER = """
import sys, time
from training.run.run_dir import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _start_holder(run_dir: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, run_dir], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_trainer_is_refused_with_the_holders_pid_and_host_and_a_killed_holder_frees_it(tmp_path):
    run = str(tmp_path / "00000-run")
    os.mkdir(run)
    holder = _start_holder(run)
    try:
        with pytest.raises(UserError, match=f"in use by a trainer \\(pid {holder.pid} on host "
                                            f"{socket.gethostname()}\\)"):  # fmt: skip
            RunLock(run)
    finally:
        holder.send_signal(signal.SIGKILL)  # the way a crashed run ends: no cleanup code runs
        holder.wait()
    with RunLock(run) as lock:  # the stale lock is taken over
        assert open(lock.path).read().startswith(f"pid {os.getpid()} ")
    RunLock(run).release()  # and released again


def test_concurrent_creation_never_shares_a_directory(tmp_path):
    results, errors = [], []
    barrier = threading.Barrier(8)

    def start():
        try:
            barrier.wait()
            path, lock = create_run_dir(str(tmp_path), "same-desc")
            results.append(path)
            lock.release()
        except Exception as e:  # collected: an exception in a thread would not fail the test
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 8
    assert sorted(os.path.basename(p) for p in results) == [f"{i:05d}-same-desc" for i in range(8)]


def test_resuming_clears_temp_files_left_by_a_kill(tmp_path):
    run = tmp_path / "00003-x"
    run.mkdir()
    (run / ".tmp-abc123.pt").write_bytes(b"half a snapshot")
    (run / ".tmp-stats.jsonl").write_text("{}")
    (run / "training-state-000001.000.pt").write_bytes(b"kept")
    lock = lock_existing_run(str(run))
    assert sorted(os.listdir(run)) == [".lock", "training-state-000001.000.pt"]
    lock.release()


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create a run directory in .*file"):
        create_run_dir(str(blocker / "runs"), "x")
