"""nvdiffrast backend (CUDA only, optional): same output contract as the torch backend (see ``contract.py``).

nvdiffrast is not a dependency of this project (NVIDIA Source Code License, non-commercial): the optional extra
``pip install -e ".[nvdiffrast]"`` installs it from the package index as ``diffrp-nvdiffrast`` (its sources; the
CUDA plugin is compiled with nvcc on first use, ~1 min on 16 cores, ~4 min on 2). It is imported lazily, only when
this backend is used, and always with the pure-CUDA ``RasterizeCudaContext`` (no OpenGL/EGL, which is the usual
failure on headless servers). ``load_plugin`` builds that plugin with the project's toolkit discovery
(``torch_utils.custom_ops``), also without a GPU for explicit architectures (CI's compile check).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from types import ModuleType

import torch

from torch_utils import custom_ops
from torch_utils.errors import first_line

from .contract import Rasterization

INSTALL_HINT = (
    'install the optional extra: pip install -e ".[nvdiffrast]" (diffrp-nvdiffrast, NVIDIA Source Code License; '
    "its CUDA plugin builds on first use and needs nvcc), or use backend='torch'"
)

# One rasterizer context per CUDA device: contexts are expensive to create and meant to be reused.
_contexts: dict[torch.device, object] = {}
_probe_failures: dict[torch.device, str] = {}
_plugins: dict[tuple[str, ...], ModuleType] = {}  # architectures -> the loaded plugin (one build line per process)


def is_available() -> bool:
    """True if ``nvdiffrast.torch`` can be found and CUDA is usable (cheap; does not import or build it)."""
    try:
        found = importlib.util.find_spec("nvdiffrast") is not None
    except (ImportError, ValueError):
        found = False
    return found and torch.cuda.is_available()


def probe(device: torch.device) -> str | None:
    """Try to make a rasterizer context on ``device``; None if it works, else why not (cached per device).

    Finding the package is not enough: old releases lack RasterizeCudaContext, and the plugin may fail to build
    or load on first use. 'auto' must fall back to the torch backend in all of these cases, not crash.
    """
    device = torch.device(device)
    if device in _contexts:
        return None
    if device in _probe_failures:
        return _probe_failures[device]
    try:
        _context(device)
        return None
    except Exception as err:  # any import/build/driver failure means: not usable here
        _probe_failures[device] = f"{type(err).__name__}: {first_line(err)}"
        return _probe_failures[device]


def _plugin_build_dir(plugin_name: str) -> str:
    """Where torch.utils.cpp_extension.load builds (and nvdiffrast looks for) the extension `plugin_name`."""
    from torch.utils import cpp_extension

    return cpp_extension._get_build_directory(plugin_name, False)


@contextlib.contextmanager
def _quiet_lock_warning() -> Iterator[None]:
    """nvdiffrast warns whenever a 'lock' file exists in its build folder (a stale lock of torch's old file baton).
    torch >= 2.14 locks with an OS-level advisory lock whose file always stays there: silence that false alarm."""
    from torch.utils import cpp_extension

    logger = logging.getLogger("nvdiffrast")
    level = logger.level
    if hasattr(cpp_extension, "FileLock"):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_plugin(archs: Sequence[str] | None = None) -> ModuleType:
    """Build (first call; then from torch's extension cache) and import nvdiffrast's CUDA rasterizer plugin.

    archs: GPU architectures to compile for (default: the local GPUs); with explicit archs no GPU is needed.
    Prints one line naming the toolkit and the architectures. Raises ImportError without nvdiffrast,
    custom_ops.ToolkitNotFound without a CUDA toolkit, and the build's error if it does not compile.
    """
    from nvdiffrast.torch import ops as nvdr_ops  # lazy: optional extra

    toolkit = custom_ops.find_cuda_toolkit()
    archs = custom_ops.normalize_archs(archs) if archs is not None else custom_ops.local_archs()
    if archs in _plugins:
        return _plugins[archs]
    print(f"Setting up the nvdiffrast CUDA plugin for {', '.join(archs)} with {toolkit.describe()}",
          file=sys.stderr, flush=True)  # fmt: skip
    start = time.perf_counter()
    # Its loader calls cpp_extension.load itself: the toolkit, the wheel's headers and the archs go in through
    # torch's CUDA_HOME and the environment (custom_ops.toolkit_env).
    with custom_ops.toolkit_env(toolkit, archs), _quiet_lock_warning():
        try:
            plugin = nvdr_ops._get_plugin(gl=False)
        except ModuleNotFoundError as err:
            # torch >= 2.14: load() builds and imports the module but no longer leaves its build folder on
            # sys.path, so nvdiffrast's own import_module of the plugin name fails. Put the folder there and
            # ask again: the second call finds the built module in torch's cache and imports it.
            name = err.name or ""
            build_dir = _plugin_build_dir(name) if name.startswith("nvdiffrast_plugin") else ""
            if not build_dir or not any(f.startswith(name + ".") for f in os.listdir(build_dir)):
                raise
            if build_dir not in sys.path:
                sys.path.append(build_dir)
            plugin = nvdr_ops._get_plugin(gl=False)
    print(f"nvdiffrast CUDA plugin ready in {time.perf_counter() - start:.0f} s: {plugin.__file__}",
          file=sys.stderr, flush=True)  # fmt: skip
    _plugins[archs] = plugin
    return plugin


def _context(device: torch.device) -> object:
    """The cached ``RasterizeCudaContext`` for ``device`` (its plugin built or loaded first by load_plugin)."""
    import nvdiffrast.torch as dr  # lazy: optional extra

    if device not in _contexts:
        if not hasattr(dr, "RasterizeCudaContext"):
            raise ImportError("this nvdiffrast release has no RasterizeCudaContext (needs >= 0.3)")
        load_plugin()
        _contexts[device] = dr.RasterizeCudaContext(device=device)
    return _contexts[device]


def rasterize_nvdiffrast(clip: torch.Tensor, tris: torch.Tensor, height: int, width: int) -> Rasterization:
    """Rasterize clip [N, V, 4] (CUDA) triangles tris [F, 3] into an H x W ``Rasterization`` with nvdiffrast.

    Barycentrics come from nvdiffrast's (u, v), which carry its gradients w.r.t. the positions. Its memory row
    order (row 0 at NDC y = -1) is the contract's, so no flip is needed: with ``FaceModel.to_clip``'s negated y,
    row 0 is the top of the face. Its 1-based ids (0 = empty) become 0-based / -1.
    """
    try:
        import nvdiffrast.torch as dr  # lazy: optional extra
    except ImportError as err:
        raise ImportError(
            f"renderer backend 'nvdiffrast' requested but nvdiffrast is not importable; {INSTALL_HINT}"
        ) from err
    if not clip.is_cuda:
        raise ValueError("renderer backend 'nvdiffrast' needs CUDA tensors; move the model to a GPU or use 'torch'")
    ctx = _context(clip.device)
    pos = clip.float().contiguous()
    rast, _ = dr.rasterize(ctx, pos, tris.to(device=clip.device, dtype=torch.int32).contiguous(), (height, width))
    u, v, ndc_depth, ids = rast.unbind(-1)
    covered = ids > 0
    bary = torch.stack([u, v, 1 - u - v], dim=-1) * covered[..., None]
    return Rasterization(
        tri_id=ids.round().long() - 1,
        bary=bary.to(clip.dtype),
        depth=torch.where(covered, ndc_depth, torch.zeros_like(ndc_depth)).to(clip.dtype),
        backend="nvdiffrast",
    )
