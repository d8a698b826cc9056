"""Just-in-time build of the optional CUDA plugins (torch.utils.cpp_extension.load + ninja), once per process.

    find_cuda_toolkit()                 the toolkit users have: CUDA_HOME / CUDA_PATH, else the nvcc on PATH (links
                                        and wrapper scripts resolved), else /usr/local/cuda*; raises ToolkitNotFound
    build_plugin(spec, archs=...)       compile + link + import for the given GPU architectures; needs nvcc, no GPU
    get_plugin(spec)                    what the ops call: build for the local GPU once, None (and ONE warning
                                        line) if that fails, so the caller uses its plain-PyTorch reference

The build directory is named by a hash of the sources and the build settings (architectures, flags, Python and
torch versions), so an edited kernel or another target rebuilds and an unchanged one loads from the cache. Each
build prints one line naming the toolkit and the architectures it targets.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

_VERBOSITY_LEVELS = ("none", "brief", "full")
_verbosity = "brief"  # 'none': silent on success; 'brief': one status line; 'full': full compiler output
_plugins: dict[str, ModuleType | None] = {}  # plugin name -> loaded module, or None after a failed build

# Where toolkits are installed when neither the environment nor PATH says (Linux package and runfile layouts).
STANDARD_TOOLKIT_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda", "/opt/nvidia/cuda")


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


# ---------------------------------------------------------------------------------------------------------------
# The CUDA toolkit.


class ToolkitNotFound(RuntimeError):
    """No usable CUDA toolkit (compiler + headers); the message says where we looked, in one line."""


@dataclass(frozen=True)
class CudaToolkit:
    """A CUDA toolkit: `root` holds bin/nvcc and include/cuda_runtime.h (torch's CUDA_HOME)."""

    root: str
    version: str  # "13.0" from include/cuda.h, "unknown" without it
    found_by: str  # how it was found, for the log line: "CUDA_HOME", "nvcc on PATH (/usr/local/bin/nvcc)", ...
    extra_include_dirs: tuple[str, ...] = field(default=())  # the torch wheel's nvidia/cu*/include (cusparse.h, ...)

    @property
    def nvcc(self) -> str:
        return os.path.join(self.root, "bin", "nvcc")

    def describe(self) -> str:
        return f"CUDA {self.version} at {self.root}, found by {self.found_by}"


def _is_toolkit_root(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) and os.path.isfile(
        os.path.join(root, "bin", "nvcc")
    )


def _toolkit_version(root: str) -> str:
    """'13.0' from `#define CUDA_VERSION 13000` in include/cuda.h (no subprocess)."""
    try:
        text = Path(root, "include", "cuda.h").read_text(errors="replace")
    except OSError:
        return "unknown"
    match = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", text)
    if not match:
        return "unknown"
    number = int(match.group(1))
    return f"{number // 1000}.{number % 1000 // 10}"


def _roots_behind_nvcc(nvcc: str) -> list[str]:
    """Candidate toolkit roots for an nvcc found on PATH: its own (links resolved) and, when it is a small wrapper
    script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`), those of the nvcc paths written in it."""
    real = os.path.realpath(nvcc)
    roots = [os.path.dirname(os.path.dirname(real))]
    try:
        with open(real, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        head = b""
    if head.startswith(b"#!"):  # a script, not the compiler driver itself
        for path in re.findall(rb"(/[^\s'\"`;:$()]*/bin/nvcc)\b", head):
            roots.append(os.path.dirname(os.path.dirname(os.path.realpath(path.decode(errors="replace")))))
    return list(dict.fromkeys(roots))


def wheel_include_dirs() -> tuple[str, ...]:
    """The torch CUDA wheel's header folders (`site-packages/nvidia/cu*/include`): math-library headers such as
    cusparse.h that a compiler-only toolkit lacks (nvdiffrast's sources include them through ATen)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    dirs: list[str] = []
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        dirs += sorted(d for d in glob.glob(os.path.join(base, "cu*", "include")) if os.path.isdir(d))
    return tuple(dict.fromkeys(dirs))


def find_cuda_toolkit() -> CudaToolkit:
    """The CUDA toolkit a build uses, looked up as users have it; raises ToolkitNotFound (one line) if none.

    Order: CUDA_HOME, then CUDA_PATH (when set, they must be right: no silent fallback); the nvcc on PATH (through
    links and wrapper scripts, to the folder whose include/ holds cuda_runtime.h); the standard install folders
    (/usr/local/cuda, /usr/local/cuda-*, newest first), preferring one whose version matches the nvcc on PATH.
    """
    extra = wheel_include_dirs()
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            if not _is_toolkit_root(root):
                raise ToolkitNotFound(f"{var}={root} is not a CUDA toolkit (needs bin/nvcc and include/cuda_runtime.h)")
            return CudaToolkit(os.path.realpath(root), _toolkit_version(root), var, extra)
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        for root in _roots_behind_nvcc(nvcc):
            if _is_toolkit_root(root):
                return CudaToolkit(root, _toolkit_version(root), f"nvcc on PATH ({nvcc})", extra)
    standard = [os.path.realpath(p) for pattern in STANDARD_TOOLKIT_GLOBS for p in sorted(glob.glob(pattern))]
    standard = [r for r in dict.fromkeys(standard) if _is_toolkit_root(r)]
    standard.sort(key=lambda r: [int(n) for n in re.findall(r"\d+", _toolkit_version(r))] or [0], reverse=True)
    if standard:
        root = standard[0]
        return CudaToolkit(root, _toolkit_version(root), "standard location", extra)
    where = f"nvcc on PATH is {nvcc} but no toolkit headers were found behind it" if nvcc else "no nvcc on PATH"
    raise ToolkitNotFound(f"no CUDA toolkit: CUDA_HOME and CUDA_PATH unset, {where}, nothing in /usr/local/cuda*")


def toolkit_or_none() -> CudaToolkit | None:
    """find_cuda_toolkit() or None; for code that only reports."""
    try:
        return find_cuda_toolkit()
    except ToolkitNotFound:
        return None


@contextlib.contextmanager
def toolkit_env(toolkit: CudaToolkit, archs: Sequence[str] | None = None) -> Iterator[None]:
    """Build with `toolkit`, also for third-party loaders that call torch.utils.cpp_extension.load themselves.

    Sets torch's CUDA_HOME (it guessed it once, at import, from the nvcc on PATH), appends the wheel's header
    folders to CPLUS_INCLUDE_PATH (searched after every -I and -isystem, so the toolkit's own headers win) and,
    given `archs`, sets TORCH_CUDA_ARCH_LIST to them. Everything is restored on exit.
    """
    from torch.utils import cpp_extension

    env = {"CUDA_HOME": toolkit.root}
    if toolkit.extra_include_dirs:
        before = os.environ.get("CPLUS_INCLUDE_PATH")
        env["CPLUS_INCLUDE_PATH"] = os.pathsep.join([*([before] if before else []), *toolkit.extra_include_dirs])
    if archs is not None:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(torch_arch_name(a) for a in normalize_archs(archs))
    saved_env = {k: os.environ.get(k) for k in env}
    saved_home = cpp_extension.CUDA_HOME
    os.environ.update(env)
    cpp_extension.CUDA_HOME = toolkit.root
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = saved_home
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------------
# GPU architectures.


def normalize_archs(archs: Sequence[str] | str) -> tuple[str, ...]:
    """'sm_90', '90', '9.0', 'sm_90a' (or a comma/semicolon list of them) -> ('sm_90', ...), sorted, unique."""
    if isinstance(archs, str):
        archs = [a for a in re.split(r"[,; ]+", archs) if a]
    out = []
    for arch in archs:
        m = re.fullmatch(r"(?:sm_|compute_)?(\d+)([af]?)|(\d+)\.(\d)([af]?)", arch.strip())
        if m is None:
            raise ValueError(f"not a GPU architecture: {arch!r} (use e.g. sm_90 or 9.0)")
        digits, suffix = (m.group(1), m.group(2)) if m.group(1) else (m.group(3) + m.group(4), m.group(5))
        out.append(f"sm_{digits}{suffix}")
    if not out:
        raise ValueError("no GPU architecture given")
    return tuple(sorted(set(out), key=lambda a: (int(re.sub(r"\D", "", a)), a)))


def torch_arch_name(arch: str) -> str:
    """'sm_90a' -> '9.0a' (TORCH_CUDA_ARCH_LIST's spelling)."""
    digits, suffix = re.fullmatch(r"sm_(\d+)([af]?)", arch).groups()  # type: ignore[union-attr]
    return f"{digits[:-1]}.{digits[-1]}{suffix}"


def local_archs() -> tuple[str, ...]:
    """The architectures of the visible GPUs, e.g. ('sm_90',); raises RuntimeError without CUDA."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available (no GPU architecture to build for; pass archs= to cross-compile)")
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return normalize_archs([f"sm_{major}{minor}" for major, minor in caps])


def gencode_flags(archs: Sequence[str]) -> list[str]:
    """nvcc flags that embed machine code (SASS) for each architecture."""
    return [f"-gencode=arch=compute_{a[3:]},code={a}" for a in normalize_archs(archs)]


# ---------------------------------------------------------------------------------------------------------------
# Plugins.


@dataclass(frozen=True)
class PluginSpec:
    """One CUDA plugin: its name and files (absolute paths next to the op's Python module, i.e. the installed
    package's own copies), plus extra nvcc flags."""

    name: str
    sources: tuple[str, ...]
    headers: tuple[str, ...] = ()
    extra_cuda_cflags: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build needs, resolved before it starts (and printed as one line)."""

    spec: PluginSpec
    toolkit: CudaToolkit
    archs: tuple[str, ...]
    cuda_cflags: tuple[str, ...]
    build_dir: Path
    module_name: str  # unique per build directory, so torch's in-process version counter never renames it

    def describe(self) -> str:
        return f"{', '.join(self.archs)} with {self.toolkit.describe()}"


def extensions_root() -> Path:
    """TORCH_EXTENSIONS_DIR, else torch's per-user default (~/.cache/torch_extensions)."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def source_digest(files: Sequence[str], settings: Sequence[str] = ()) -> str:
    """md5 over the names and contents of `files` (order-independent) and the build `settings`."""
    md5 = hashlib.md5()
    for path in sorted(files, key=os.path.basename):
        md5.update(os.path.basename(path).encode())
        md5.update(Path(path).read_bytes())
    for setting in settings:
        md5.update(b"\0" + setting.encode())
    return md5.hexdigest()


def plan_build(spec: PluginSpec, archs: Sequence[str] | None = None, toolkit: CudaToolkit | None = None) -> BuildPlan:
    """Resolve toolkit, architectures (default: the local GPUs), flags and the cached build directory."""
    toolkit = toolkit or find_cuda_toolkit()
    archs = normalize_archs(archs) if archs is not None else local_archs()
    cuda_cflags = ("--use_fast_math", *gencode_flags(archs), *spec.extra_cuda_cflags)
    settings = [*cuda_cflags, toolkit.version, torch.__version__, f"py{sys.version_info[0]}{sys.version_info[1]}"]
    tag = "_".join(a.replace("_", "") for a in archs)  # sm80_sm90
    digest = source_digest([*spec.sources, *spec.headers], settings)
    build_dir = extensions_root() / f"{spec.name}-{digest}-{tag}"
    return BuildPlan(spec, toolkit, archs, cuda_cflags, build_dir, f"{spec.name}_{tag}")


def _copy_sources(plan: BuildPlan) -> None:
    """Copy the sources into the plan's build directory (atomically: concurrent processes never see half a copy)."""
    if plan.build_dir.is_dir():
        return
    plan.build_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=plan.build_dir.parent, prefix=f".{plan.spec.name}-"))
    for path in (*plan.spec.sources, *plan.spec.headers):
        shutil.copyfile(path, tmp / os.path.basename(path))
    try:
        os.replace(tmp, plan.build_dir)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


def run_build(plan: BuildPlan) -> ModuleType:
    """Compile and link the plan's extension (ninja: nothing to do when cached) and import it. No GPU needed:
    the module imports after `import torch`, its kernels run only on a GPU of one of `plan.archs`."""
    from torch.utils import cpp_extension

    cpp_extension.verify_ninja_availability()  # clear error instead of a confusing build failure
    _copy_sources(plan)
    with toolkit_env(plan.toolkit):
        return cpp_extension.load(
            name=plan.module_name,
            sources=[str(plan.build_dir / os.path.basename(s)) for s in plan.spec.sources],
            build_directory=str(plan.build_dir),
            extra_cuda_cflags=list(plan.cuda_cflags),  # explicit -gencode: torch adds no arch flags of its own
            verbose=_verbosity == "full",
        )


def build_plugin(spec: PluginSpec, archs: Sequence[str] | None = None) -> ModuleType:
    """Build (or load from the cache) `spec` for `archs` (default: the local GPUs) and import it; raises on failure.

    With explicit archs this needs nvcc and ninja but no GPU: CI uses it to check that the kernels compile.
    """
    plan = plan_build(spec, archs)
    if _verbosity != "none" and _is_rank0():
        verb = "Loading cached" if (plan.build_dir / f"{plan.module_name}.so").is_file() else "Building"
        print(f'{verb} CUDA plugin "{spec.name}" for {plan.describe()}', file=sys.stderr, flush=True)
    return run_build(plan)


def get_plugin(spec: PluginSpec) -> ModuleType | None:
    """Build (first call) or return the cached plugin for the local GPU; None if it cannot be built here.

    A failure prints ONE line and is remembered: the caller falls back to its reference implementation for the
    rest of the process instead of retrying on every call.
    """
    if spec.name in _plugins:
        return _plugins[spec.name]
    loud = _verbosity != "none" and _is_rank0()
    started = False
    try:
        plan = plan_build(spec)
        if loud:
            print(f'Setting up CUDA plugin "{spec.name}" for {plan.describe()}... ', end="", file=sys.stderr,
                  flush=True)  # fmt: skip
            started = True
        module: ModuleType | None = run_build(plan)
        if loud:
            print("Done.", file=sys.stderr, flush=True)
    except Exception as err:  # noqa: BLE001 - any build/import failure means "use the reference path"
        module = None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # a build log's last line says why
        if _verbosity == "full":
            traceback.print_exc()
        if _is_rank0():
            print(
                f'{"Failed! " if started else ""}WARNING: could not build CUDA plugin "{spec.name}" ({reason}); '
                "using the plain-PyTorch reference implementation for the rest of this process "
                "(torch_utils.custom_ops.set_verbosity('full') shows the build log).",
                file=sys.stderr,
                flush=True,
            )
    _plugins[spec.name] = module
    return module
