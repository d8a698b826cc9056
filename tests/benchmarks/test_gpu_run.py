"""The GPU check's preparation (benchmarks/gpu_prepare.py) and the quick mode of its one command (gpu_run.py).

Wheels are built at run time (tiny zips in the wheel layout); nothing is downloaded and nothing is compiled: the
quick run resolves the build plans only (the real builds are tests/torch_utils/test_cuda_builds.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_prepare

REPO = Path(__file__).resolve().parents[2]


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tags: str = "py3-none-any",
               module: str | None = None) -> Path:  # fmt: skip
    """A minimal installable wheel: one module (default: the name) printing nothing, METADATA, WHEEL, RECORD."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tags}.whl"
    module = module or name.replace("-", "_")
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", f"__version__ = '{version}'\n")
        zf.writestr(f"{dist}.dist-info/METADATA", meta)
        wheel = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tags}\n"
        zf.writestr(f"{dist}.dist-info/WHEEL", wheel)
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return path


WANTED = {"torch-fidelity": "0.4.0", "diffrp-nvdiffrast": "0.3.3.1"}


def test_carried_packages_follow_setup_py_and_the_installed_fidelity():
    carried = gpu_prepare.carried_packages()
    assert set(carried) == {"torch-fidelity", "diffrp-nvdiffrast"}
    assert f'"diffrp-nvdiffrast=={carried["diffrp-nvdiffrast"]}"' in (REPO / "setup.py").read_text()


def test_validate_accepts_a_complete_carry(tmp_path):
    make_wheel(tmp_path, "torch-fidelity", "0.4.0", ("numpy", "pillow", "torch", "torchvision", "tqdm"))
    make_wheel(tmp_path, "diffrp-nvdiffrast", "0.3.3.1", ("numpy",), module="nvdiffrast")
    assert gpu_prepare.validate(tmp_path, WANTED) == []
    # on the GPU machine torch-fidelity is not installed: any one carried version will do
    assert gpu_prepare.validate(tmp_path, dict(WANTED, **{"torch-fidelity": None})) == []
    assert "wanted 0.5.0" in gpu_prepare.validate(tmp_path, dict(WANTED, **{"torch-fidelity": "0.5.0"}))[0]


def test_validate_names_every_problem(tmp_path):
    make_wheel(tmp_path, "torch-fidelity", "0.4.0", ("numpy", "lpips-ish; extra == 'x'", "rarepkg>=1"))
    make_wheel(tmp_path, "torch-fidelity", "0.3.0")  # two versions stop pip
    make_wheel(tmp_path, "fastthing", "1.0", tags="cp311-cp311-manylinux_2_17_x86_64")  # wrong Python
    problems = "\n".join(gpu_prepare.validate(tmp_path, WANTED))
    assert "torch-fidelity: 2 versions" in problems
    assert "diffrp-nvdiffrast==0.3.3.1: no wheel" in problems
    assert "fastthing-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: does not install" in problems
    assert "requires rarepkg" in problems and "lpips" not in problems  # extras' requirements are not needed
    assert gpu_prepare.installs_on_gpu_machine("cp312-cp312-manylinux_2_28_x86_64")
    assert gpu_prepare.installs_on_gpu_machine("cp39-abi3-manylinux2014_x86_64")
    assert not gpu_prepare.installs_on_gpu_machine("cp312-cp312-manylinux_2_28_aarch64")


@pytest.mark.slow
def test_quick_run_installs_the_wheels_and_plans_the_builds(tmp_path):
    """gpu_run.py --quick on this CPU machine: validate + pip-install the carry into a temp site, report the
    environment with it on PYTHONPATH, and resolve the build plans (no compiling); summary JSON and log."""
    wheels = tmp_path / "whl"
    wheels.mkdir()
    make_wheel(wheels, "torch-fidelity", gpu_prepare.carried_packages()["torch-fidelity"], ("numpy", "torch"))
    make_wheel(wheels, "diffrp-nvdiffrast", gpu_prepare.carried_packages()["diffrp-nvdiffrast"], module="nvdiffrast")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_run.py"), "--out", str(out), "--quick",
                           "--steps", "wheels,env,builds", "--wheels", str(wheels), "--no-nvdiffrast"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    summary = json.loads((out / "gpu_run.json").read_text())
    assert proc.returncode == 0 and summary["ok"], proc.stdout[-3000:] + proc.stderr[-2000:]
    assert [s["step"] for s in summary["steps"]] == ["wheels", "env", "builds"]
    log = (out / "gpu_run.log").read_text()
    # the env step imported the carried (stub) nvdiffrast from the temp site, not from a system install
    nvdiffrast_line = next(line for line in log.splitlines() if line.startswith("nvdiffrast "))
    assert "0.3.3.1" in nvdiffrast_line and "gpu_run_site-" in nvdiffrast_line
    assert "toolkit " in log and "torch " in log
    rows = json.loads((out / "builds.json").read_text())["rows"]
    assert sorted(r["plugin"] for r in rows) == ["bias_act", "upfirdn2d"]
    assert all(r["archs"] == "sm_80,sm_90" for r in rows)
    if rows[0]["ok"]:  # where nvcc is present the plan names the toolkit; elsewhere it says that none was found
        assert all("with CUDA" in r["detail"] for r in rows)
    else:
        assert all("ToolkitNotFound" in r["detail"] for r in rows)


def test_quick_run_rejects_unknown_steps(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_run.py"), "--out", str(tmp_path),
                           "--steps", "wheels,typo"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "typo" in proc.stderr
