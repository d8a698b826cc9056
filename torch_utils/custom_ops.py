"""Just-in-time build of the optional CUDA plugins (torch.utils.cpp_extension.load + ninja), once per process.

The build directory is named by a hash of the source files (plus the GPU name), so an edited kernel rebuilds and
an unchanged one loads from the cache. A failed build prints ONE line and is remembered: the caller falls back to
its reference implementation for the rest of the process instead of retrying on every call.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType

import torch

_VERBOSITY_LEVELS = ("none", "brief", "full")
_verbosity = "brief"  # 'none': silent on success; 'brief': one status line; 'full': full compiler output
_plugins: dict[str, ModuleType | None] = {}  # module name -> loaded module, or None after a failed build


def set_verbosity(level: str) -> None:
    """Choose how much plugin builds print: 'none', 'brief' (default) or 'full' (compiler output, tracebacks)."""
    global _verbosity
    if level not in _VERBOSITY_LEVELS:
        raise ValueError(f"verbosity must be one of {_VERBOSITY_LEVELS}, got {level!r}")
    _verbosity = level


def plugin_status(module_name: str) -> str:
    """'built', 'failed' or 'not built' (never attempted) for a plugin name; for logs."""
    if module_name not in _plugins:
        return "not built"
    return "built" if _plugins[module_name] is not None else "failed"


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def source_digest(files: list[str]) -> str:
    """md5 over the names and contents of `files` (order-independent); names the build directory."""
    md5 = hashlib.md5()
    for path in sorted(files, key=os.path.basename):
        md5.update(os.path.basename(path).encode())
        md5.update(Path(path).read_bytes())
    return md5.hexdigest()


def _build_dir(module_name: str, files: list[str]) -> Path:
    """Copy `files` into <extensions root>/<name>-<digest>-<gpu> (atomically) and return that directory."""
    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    gpu = re.sub(r"[^0-9a-zA-Z]+", "_", torch.cuda.get_device_name()) if torch.cuda.is_available() else "nogpu"
    target = root / f"{module_name}-{source_digest(files)}-{gpu}"
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{module_name}-"))
        for path in files:
            shutil.copyfile(path, tmp / os.path.basename(path))
        try:
            os.replace(tmp, target)  # atomic: concurrent processes never see a half-copied directory
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load(module_name: str, sources: list[str], headers: list[str], extra_cuda_cflags: list[str]) -> ModuleType:
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    cpp_extension.verify_ninja_availability()  # clear error instead of a confusing build failure
    build_dir = _build_dir(module_name, sources + headers)
    # A container-wide TORCH_CUDA_ARCH_LIST can name arches the local nvcc rejects; target the local GPU instead.
    saved_arch = os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
    try:
        return cpp_extension.load(
            name=module_name,
            sources=[str(build_dir / os.path.basename(s)) for s in sources],
            build_directory=str(build_dir),
            extra_cuda_cflags=["--use_fast_math", *extra_cuda_cflags],
            verbose=_verbosity == "full",
        )
    finally:
        if saved_arch is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch


def get_plugin(
    module_name: str,
    sources: list[str],
    headers: list[str] | None = None,
    extra_cuda_cflags: list[str] | None = None,
) -> ModuleType | None:
    """Build (first call) or return the cached CUDA plugin `module_name`; None if it cannot be built here."""
    if module_name in _plugins:
        return _plugins[module_name]
    loud = _verbosity != "none" and _is_rank0()
    if loud:
        print(f'Setting up PyTorch plugin "{module_name}"... ', end="", file=sys.stderr, flush=True)
    try:
        module: ModuleType | None = _load(
            module_name, list(sources), list(headers or []), list(extra_cuda_cflags or [])
        )
        if loud:
            print("Done.", file=sys.stderr, flush=True)
    except Exception as err:  # noqa: BLE001 - any build/import failure means "use the reference path"
        module = None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # a build log's last line says why
        if _verbosity == "full":
            traceback.print_exc()
        if _is_rank0():
            print(
                f'{"Failed! " if loud else ""}WARNING: could not build CUDA plugin "{module_name}" ({reason}); '
                "using the plain-PyTorch reference implementation for the rest of this process "
                "(torch_utils.custom_ops.set_verbosity('full') shows the build log).",
                file=sys.stderr,
                flush=True,
            )
    _plugins[module_name] = module
    return module
