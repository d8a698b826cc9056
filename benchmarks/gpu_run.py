"""The GPU check as ONE command, run THERE (repo root on the GPU machine; no network): wheels, builds, tests, table.

    python3 benchmarks/gpu_run.py --out $OUT            # on the GPU machine, .whl/ carried (benchmarks/gpu_prepare.py)
    python benchmarks/gpu_run.py --out out/gpu_run --quick   # here, on a CPU: same steps, nothing that needs a GPU

Steps, each a child process with its output in <out>/gpu_run.log (and on stdout), all inside --budget-s:
  wheels     validate .whl/ (gpu_prepare.validate) and pip-install it into --site (PYTHONPATH for the next steps)
  env        Python, torch, GPU, CUDA toolkit, pytest, torch-fidelity, nvdiffrast versions
  builds     benchmarks/cuda_builds.py: both plugins for the local GPU and for sm_80 + sm_90, nvdiffrast for the
             local GPU, several at once, timed (<out>/builds.json); --quick: the build plans only
  tests      pytest: fused ops vs reference on CUDA, the compile checks, fp16 blocks (CPU and CUDA), the renderer
             (nvdiffrast vs torch)
  gpu_check  benchmarks/gpu_check.py (<out>/gpu_check.md, .json, .log); --quick: --device cpu --quick
A failing step does not stop the later ones; <out>/gpu_run.json has each step's status and seconds, and the exit
status is 0 only if every step passed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = ("wheels", "env", "builds", "tests", "gpu_check")
# What a GPU adds to CI's coverage: fused ops vs reference on CUDA, the builds, fp16 on CUDA, nvdiffrast vs torch.
FULL_TESTS = [
    "tests/torch_utils/ops/test_custom_ops.py",
    "tests/torch_utils/test_cuda_builds.py",
    "tests/training/test_fp16.py",
    "tests/deep3drecon/test_render.py",
]
QUICK_TESTS = ["tests/training/test_fp16.py", "tests/torch_utils/test_cuda_builds.py", "-m", "not slow"]
STEP_CAP_S = dict(wheels=120, env=120, builds=300, tests=300, gpu_check=600)  # and never past the budget

ENV_REPORT = r"""
import importlib, platform, shutil, subprocess, sys
import torch
from torch_utils import custom_ops
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(f"gpu {i}:", torch.cuda.get_device_name(i), "sm_%d%d" % torch.cuda.get_device_capability(i))
toolkit = custom_ops.toolkit_or_none()
print("toolkit", toolkit.describe() if toolkit else "none (the reference ops are used)")
if toolkit:
    out = subprocess.run([toolkit.nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    print("nvcc", out[-1] if out else "?", "| wheel headers", list(toolkit.extra_include_dirs))
print("ninja", shutil.which("ninja"))
for name in ("pytest", "xdist", "torch_fidelity", "nvdiffrast"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except ImportError as err:
        print(name, "MISSING:", err)
"""


class Runner:
    """Runs the steps as child processes inside one time budget; tees their output to the log and stdout."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.log = open(out / "gpu_run.log", "a", buffering=1)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.results: list[dict] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, step: str, cmd: list[str], stdout_file: Path | None = None) -> bool:
        """One child process, killed (with its children) at its cap or the budget's end; True if it exited 0."""
        timeout = min(STEP_CAP_S[step], self.remaining())
        if timeout < 10:
            self.results.append(dict(step=step, status="skipped (budget spent)", seconds=0))
            self.say(f"== {step}: skipped, {self.remaining():.0f} s of the budget left")
            return False
        self.say(f"== {step} (at most {timeout:.0f} s): {' '.join(cmd)}")
        start = time.monotonic()
        capture = open(stdout_file, "w") if stdout_file else None
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if capture is None else subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        streams = [proc.stdout] if capture is None else [proc.stderr]
        if capture is not None:  # stdout (gpu_check's table) to its file and the log; stderr streamed below
            import threading

            def copy_stdout() -> None:
                for line in proc.stdout:
                    capture.write(line)
                    self.log.write(line)
                    print(line, end="", flush=True)

            copier = threading.Thread(target=copy_stdout, daemon=True)
            copier.start()
        timer = _Killer(proc, timeout)
        for line in streams[0]:
            self.log.write(line)
            print(line, end="", flush=True)
        rc = proc.wait()
        timer.cancel()
        if capture is not None:
            copier.join(timeout=5)
            capture.close()
        seconds = round(time.monotonic() - start, 1)
        status = "timeout" if timer.fired else ("ok" if rc == 0 else f"failed (exit {rc})")
        self.results.append(dict(step=step, status=status, seconds=seconds, command=" ".join(cmd)))
        self.say(f"== {step}: {status} in {seconds:.0f} s")
        return status == "ok"

    def note(self, step: str, status: str) -> None:
        self.results.append(dict(step=step, status=status, seconds=0))
        self.say(f"== {step}: {status}")


class _Killer:
    """Kills a child's whole process group after `timeout` seconds (ninja and nvcc included)."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        import threading

        self.fired = False
        self._timer = threading.Timer(timeout, self._kill, args=(proc,))
        self._timer.daemon = True
        self._timer.start()

    def _kill(self, proc: subprocess.Popen) -> None:
        self.fired = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def install_wheels(runner: Runner, wheel_dir: Path, site: Path, quick: bool) -> None:
    """Validate and install the carried wheels; their folder goes first on PYTHONPATH for every later step."""
    from benchmarks import gpu_prepare

    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels and quick:
        runner.note("wheels", f"skipped (no wheels in {wheel_dir}; --quick uses what is installed)")
        return
    for problem in gpu_prepare.validate(wheel_dir):
        runner.say(f"wheels: NOT READY: {problem}")
    if not wheels:
        runner.note("wheels", f"failed (no wheels in {wheel_dir}: run benchmarks/gpu_prepare.py and carry .whl)")
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]  # fmt: skip
    if runner.run("wheels", cmd):
        runner.env["PYTHONPATH"] = os.pathsep.join([str(site), runner.env["PYTHONPATH"]])


@click.command()
@click.option("--out", "out_dir", required=True, help="Folder for the log, the tables and the summary")
@click.option("--quick", is_flag=True, help="CPU machine: build plans only, fast tests, gpu_check --device cpu --quick")
@click.option("--budget-s", type=float, default=None, help="Wall-time budget [default: 470 full, 900 quick]")
@click.option("--steps", default=",".join(STEPS), show_default=True, help="Which steps, in the fixed order")
@click.option("--wheels", "wheel_dir", default=str(REPO / ".whl"), show_default=True, help="Carried wheels")
@click.option("--site", default=None, help="pip --target folder for the wheels [default: /tmp/site; --quick: temp]")
@click.option("--nvdiffrast/--no-nvdiffrast", default=True, show_default=True, help="Build nvdiffrast's plugin too")
@click.option("--gpu-check-arg", "gpu_check_args", multiple=True, help="Passed on to gpu_check.py (repeatable)")
@click.option("--print-env", is_flag=True, hidden=True)
def main(out_dir: str, quick: bool, budget_s: float | None, steps: str, wheel_dir: str, site: str | None,
         nvdiffrast: bool, gpu_check_args: tuple[str, ...], print_env: bool) -> None:  # fmt: skip
    """Run the GPU check's steps and summarise them."""
    if print_env:
        exec(compile(ENV_REPORT, "env_report", "exec"), {})
        return
    chosen = [s for s in steps.split(",") if s]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise click.BadParameter(f"unknown steps {unknown}; choose from {', '.join(STEPS)}", param_hint="--steps")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, budget_s if budget_s is not None else (900 if quick else 470))
    runner.say(f"gpu_run {'--quick ' if quick else ''}at {time.strftime('%Y-%m-%d %H:%M:%S')}: steps {chosen}")
    py = sys.executable
    temp_site = None
    if "wheels" in chosen:
        if site is None and quick:
            temp_site = tempfile.mkdtemp(prefix="gpu_run_site-")
        install_wheels(runner, Path(wheel_dir), Path(site or temp_site or "/tmp/site"), quick)
    if "env" in chosen:
        runner.run("env", [py, str(Path(__file__).resolve()), "--out", str(out), "--print-env"])
    if "builds" in chosen:
        cmd = [py, "benchmarks/cuda_builds.py", "--out", str(out / "builds.json")]
        if quick:
            cmd += ["--plan-only", "--archs", "sm_80,sm_90"] + (["--nvdiffrast", "sm_90"] if nvdiffrast else [])
        else:
            cmd += ["--archs", "local", "--archs", "sm_80,sm_90", "--jobs", "3"]
            cmd += ["--nvdiffrast", "local"] if nvdiffrast else []
        runner.run("builds", cmd)
    if "tests" in chosen:
        cmd = [py, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
        runner.run("tests", cmd + (QUICK_TESTS if quick else FULL_TESTS))
    if "gpu_check" in chosen:
        cmd = [py, "benchmarks/gpu_check.py", "--out", str(out / "gpu_check.json"), *gpu_check_args]
        cmd += ["--device", "cpu", "--quick"] if quick else []
        runner.run("gpu_check", cmd, stdout_file=out / "gpu_check.md")
    if temp_site:
        shutil.rmtree(temp_site, ignore_errors=True)
    ok = all(r["status"] == "ok" or r["status"].startswith("skipped (no wheels") for r in runner.results)
    runner.say("== summary: " + "; ".join(f"{r['step']} {r['status']} {r['seconds']:.0f} s" for r in runner.results))
    with open(out / "gpu_run.json", "w") as f:
        json.dump(dict(quick=quick, ok=ok, steps=runner.results), f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
