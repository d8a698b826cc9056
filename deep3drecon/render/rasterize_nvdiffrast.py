"""nvdiffrast backend (CUDA only, optional): same output contract as the torch backend (see ``contract.py``).

nvdiffrast is not a dependency of this project (its licence is non-commercial and it is not on PyPI under its own
name); users install it from its repository. It is imported lazily, only when this backend is used, and always
with the pure-CUDA ``RasterizeCudaContext`` (no OpenGL/EGL, which is the usual failure on headless servers).
"""

from __future__ import annotations

import importlib.util

import torch

from torch_utils.errors import first_line

from .contract import Rasterization

INSTALL_HINT = (
    "install it from its repository (non-commercial licence): pip install ninja setuptools wheel && "
    "pip install git+https://github.com/NVlabs/nvdiffrast.git --no-build-isolation, or use backend='torch'"
)

# One rasterizer context per CUDA device: contexts are expensive to create and meant to be reused.
_contexts: dict[torch.device, object] = {}
_probe_failures: dict[torch.device, str] = {}


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


def _context(device: torch.device) -> object:
    """The cached ``RasterizeCudaContext`` for ``device``."""
    import nvdiffrast.torch as dr  # lazy: optional extra

    if device not in _contexts:
        if not hasattr(dr, "RasterizeCudaContext"):
            raise ImportError("this nvdiffrast release has no RasterizeCudaContext (needs >= 0.3)")
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
