"""cached_build: one builder at a time across processes, waiters reuse its file, a killed builder's lock recovers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deep3drecon import assets

pytest.importorskip("fcntl")  # POSIX advisory locks

ROOT = Path(__file__).resolve().parents[2]

# A builder process: builds `dest` with cached_build, the build writes its pid and sleeps `hold` seconds first.
_BUILDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from deep3drecon.assets import cached_build

    dest, hold, log = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])

    def build(tmp):
        with open(log, "a") as f:
            f.write(f"build {os.getpid()}\\n")
        time.sleep(hold)
        tmp.write_text(f"built by {os.getpid()}")

    path = cached_build(dest, build, "a test asset")
    print("GOT", path.read_text(), flush=True)
    """
)


def _start(dest: Path, hold: float, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", _BUILDER, str(dest), str(hold), str(log)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_build_start(log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not (log.exists() and log.read_text().startswith("build")):
        assert time.time() < deadline, "the first builder never started building"
        time.sleep(0.05)


def test_second_process_waits_and_gets_the_same_file(tmp_path: Path) -> None:
    dest, log = tmp_path / "asset.bin", tmp_path / "builds.log"
    first = _start(dest, 3.0, log)
    _wait_for_build_start(log)
    second = _start(dest, 0.0, log)
    out1, out2 = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    builds = log.read_text().split()
    assert builds == ["build", str(first.pid)]  # exactly one build, by the first process
    assert f"GOT built by {first.pid}" in out1 and f"GOT built by {first.pid}" in out2  # the same file
    assert "Waiting for another process that is building a test asset" in out2
    assert "Waiting" not in out1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.bin", "builds.log"]  # no lock or temp left


def test_lock_of_a_killed_builder_is_recovered(tmp_path: Path) -> None:
    dest, log = tmp_path / "asset.bin", tmp_path / "builds.log"
    victim = _start(dest, 60.0, log)
    _wait_for_build_start(log)
    assert (tmp_path / ".asset.bin.lock").exists()
    victim.kill()  # SIGKILL: no cleanup runs, the lock file and a temp file may stay behind
    victim.communicate(timeout=60)
    assert not dest.exists()
    survivor = _start(dest, 0.0, log)
    out = survivor.communicate(timeout=120)[0]
    assert survivor.returncode == 0, out
    assert f"GOT built by {survivor.pid}" in out
    assert log.read_text().split() == ["build", str(victim.pid), "build", str(survivor.pid)]


def test_cached_build_in_process_builds_once(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp.parent == tmp_path and tmp.suffix == ".mat"  # same folder (atomic rename), suffix kept
        tmp.write_bytes(b"x")

    dest = tmp_path / "model.mat"
    assert assets.cached_build(dest, build, "x", progress=False) == dest
    assert assets.cached_build(dest, build, "x", progress=False) == dest and len(calls) == 1
    with pytest.raises(RuntimeError):
        assets.cached_build(tmp_path / "broken.mat", lambda tmp: (_ for _ in ()).throw(RuntimeError()), "y", False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mat"]  # a failed build leaves nothing behind
