"""Prepare the GPU check HERE (a machine with the package index): wheels of what the GPU machine lacks, in .whl/.

    python benchmarks/gpu_prepare.py            # download the wheels into .whl/ (ignored by git), then validate
    python benchmarks/gpu_prepare.py --check    # validate .whl/ only (no network): what gpu_run.py does first

The GPU machine (Python 3.12, torch 2.11+cu130, nvcc 13.0, no network) has torch, torchvision, numpy, scipy, click,
pillow, tensorboard, tqdm, ninja, pytest and more, but not torch-fidelity nor nvdiffrast: those travel as wheels
(`carry: [".whl"]`) and benchmarks/gpu_run.py installs them with pip --target. Validation checks that each carried
package is there exactly once, in a wheel that installs on CPython 3.12 x86-64, and that everything it requires is
either on the GPU machine or carried too.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
WHEEL_DIR = REPO / ".whl"
MAX_WHEELS_MB = 16  # the device tool carries 64 MiB with the working tree; keep the wheels well inside it
# Python packages on the GPU machines' image (the device docs' list), the ones this project's code can need.
GPU_MACHINE_HAS = frozenset(
    """
click filelock fsspec jinja2 markupsafe mpmath networkx ninja numpy packaging pillow pip pluggy iniconfig pytest
pytest-xdist execnet pyyaml scipy scikit-image setuptools sympy tensorboard tensorboard-data-server torch
torchvision tqdm triton typing-extensions wheel
""".split()
)


def normalize(name: str) -> str:
    """PEP 503 project name: 'Torch_Fidelity' -> 'torch-fidelity'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def carried_packages() -> dict[str, str | None]:
    """{name: version} to carry: torch-fidelity at the version installed here (None = any, on the GPU machine where
    it is not installed) and diffrp-nvdiffrast at setup.py's pin of the `nvdiffrast` extra."""
    try:
        fidelity: str | None = importlib.metadata.version("torch-fidelity")
    except importlib.metadata.PackageNotFoundError:
        fidelity = None
    pin = re.search(r'"diffrp-nvdiffrast==([^"]+)"', (REPO / "setup.py").read_text())
    if pin is None:
        raise click.ClickException("setup.py has no diffrp-nvdiffrast==VERSION in its nvdiffrast extra")
    return {"torch-fidelity": fidelity, "diffrp-nvdiffrast": pin.group(1)}


def wheel_name_version(path: Path) -> tuple[str, str, str]:
    """(normalized project name, version, tags) from a wheel's file name."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise ValueError(f"{path.name}: not a wheel file name")
    return normalize(parts[0]), parts[1], "-".join(parts[-3:])


def installs_on_gpu_machine(tags: str) -> bool:
    """A pure-Python wheel, or a CPython 3.12 (or abi3) manylinux x86-64 one."""
    python, abi, platform = tags.split("-")
    if platform == "any":
        return abi == "none" and any(p.startswith("py3") for p in python.split("."))
    return ("cp312" in python.split(".") or abi == "abi3") and "x86_64" in platform and "linux" in platform


def requirements(path: Path) -> list[str]:
    """The names in a wheel's Requires-Dist (extras' requirements and other-platform markers left out)."""
    with zipfile.ZipFile(path) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    names = []
    for req in meta.get_all("Requires-Dist") or []:
        marker = req.split(";", 1)[1] if ";" in req else ""
        if "extra ==" in marker or 'sys_platform == "win32"' in marker or 'platform_system == "Windows"' in marker:
            continue
        names.append(normalize(re.match(r"[A-Za-z0-9_.\-]+", req.strip()).group(0)))
    return names


def validate(wheel_dir: Path, wanted: dict[str, str | None] | None = None) -> list[str]:
    """Problems with the carry in `wheel_dir` (empty list = ready); `wanted` defaults to carried_packages()."""
    wanted = {normalize(k): v for k, v in (wanted if wanted is not None else carried_packages()).items()}
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    problems = []
    found: dict[str, list[str]] = {}
    for wheel in wheels:
        try:
            name, version, tags = wheel_name_version(wheel)
        except ValueError as err:
            problems.append(str(err))
            continue
        found.setdefault(name, []).append(version)
        if not installs_on_gpu_machine(tags):
            problems.append(f"{wheel.name}: does not install on CPython 3.12 x86-64 Linux ({tags})")
    for name, versions in found.items():
        if len(versions) > 1:
            problems.append(f"{name}: {len(versions)} versions ({', '.join(versions)}); keep one, two stop pip")
    for name, version in wanted.items():
        if name not in found:
            problems.append(f"{name}=={version or '*'}: no wheel in {wheel_dir} (run benchmarks/gpu_prepare.py)")
        elif version is not None and found[name] != [version]:
            problems.append(f"{name}: carried {found[name][0]}, wanted {version}")
    for wheel in wheels:
        try:
            missing = [r for r in requirements(wheel) if r not in GPU_MACHINE_HAS and r not in found]
        except (zipfile.BadZipFile, StopIteration, KeyError) as err:
            problems.append(f"{wheel.name}: unreadable wheel ({type(err).__name__})")
            continue
        if missing:
            problems.append(f"{wheel.name}: requires {', '.join(missing)}, neither on the GPU machine nor carried")
    size_mb = sum(w.stat().st_size for w in wheels) / 2**20
    if size_mb > MAX_WHEELS_MB:
        problems.append(f"the wheels take {size_mb:.1f} MB, over {MAX_WHEELS_MB} MB")
    return problems


def download(wheel_dir: Path, packages: dict[str, str | None]) -> None:
    """pip download each NAME==VERSION as a wheel for CPython 3.12 manylinux x86-64 (pure-Python wheels match)."""
    wheel_dir.mkdir(exist_ok=True)
    for name, version in packages.items():
        stale = [w for w in wheel_dir.glob("*.whl") if wheel_name_version(w)[0] == normalize(name)
                 and wheel_name_version(w)[1] != version]  # fmt: skip
        for wheel in stale:
            wheel.unlink()
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
               "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(wheel_dir),
               f"{name}=={version}" if version else name]  # fmt: skip
        print(" ".join(cmd[2:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)


@click.command()
@click.option("--check", is_flag=True, help="Validate the wheel folder only (no download)")
@click.option("--wheels", "wheel_dir", default=str(WHEEL_DIR), show_default=True, help="Wheel folder")
def main(check: bool, wheel_dir: str) -> None:
    """Download (unless --check) and validate the wheels the GPU run needs."""
    folder = Path(wheel_dir)
    packages = carried_packages()
    if not check:
        download(folder, packages)
    problems = validate(folder, packages)
    for problem in problems:
        print(f"NOT READY: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    listing = ", ".join(w.name for w in sorted(folder.glob("*.whl")))
    size_mb = sum(w.stat().st_size for w in folder.glob("*.whl")) / 2**20
    print(f"ready: {listing} ({size_mb:.1f} MB in {os.path.relpath(folder)}); on the GPU machine run "
          "`python3 benchmarks/gpu_run.py --out $OUT` with carry ['.whl'], timeout_s 560")  # fmt: skip


if __name__ == "__main__":
    main()
