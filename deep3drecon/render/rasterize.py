"""Backend-independent entry points: ``rasterize`` (backend dispatch), ``interpolate`` and backend discovery."""

from __future__ import annotations

import logging

import torch

from torch_utils.errors import UserError

from . import rasterize_nvdiffrast
from .contract import Rasterization, parse_size
from .rasterize_torch import rasterize_torch

BACKENDS = ("auto", "torch", "nvdiffrast")

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()  # (device type, backend) pairs already logged, so each is logged once


def available_backends() -> list[str]:
    """Backends that can run in this process: always 'torch', plus 'nvdiffrast' if importable with CUDA."""
    return ["torch"] + (["nvdiffrast"] if rasterize_nvdiffrast.is_available() else [])


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map a requested backend ('auto' | 'torch' | 'nvdiffrast') to the one that runs on ``device``.

    'auto' picks nvdiffrast for CUDA tensors when it is importable, else torch, and logs the choice once per
    device type. An explicit 'nvdiffrast' without the package raises a one-line ``UserError`` saying how to install.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown renderer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise UserError("renderer backend 'nvdiffrast' needs a CUDA device; use 'torch' or 'auto' on CPU")
        if not rasterize_nvdiffrast.is_available():
            raise UserError(
                f"renderer backend 'nvdiffrast' is not available (needs CUDA and nvdiffrast); "
                f"{rasterize_nvdiffrast.INSTALL_HINT}"
            )
        failure = rasterize_nvdiffrast.probe(device)
        if failure is not None:
            raise UserError(f"renderer backend 'nvdiffrast' is installed but does not work here ({failure}); "
                            f"{rasterize_nvdiffrast.INSTALL_HINT}")
    if backend == "auto":
        failure = None
        if device.type == "cuda" and rasterize_nvdiffrast.is_available():
            failure = rasterize_nvdiffrast.probe(device)
        use_nv = device.type == "cuda" and rasterize_nvdiffrast.is_available() and failure is None
        backend = "nvdiffrast" if use_nv else "torch"
        if (device.type, backend) not in _announced:
            _announced.add((device.type, backend))
            if failure is not None:
                logger.warning("renderer: nvdiffrast is installed but unusable (%s); using the torch rasterizer",
                               failure)
            else:
                logger.info("renderer: using the %s rasterizer on %s", backend, device.type)
    return backend


def rasterize(
    clip: torch.Tensor, tris: torch.Tensor, size: int | tuple[int, int], backend: str = "auto"
) -> Rasterization:
    """Rasterize clip-space triangles into per-pixel (triangle id, barycentrics, depth); see ``contract.py``.

    clip: [N, V, 4] float homogeneous clip coordinates; tris: [F, 3] integer vertex ids (0-based, shared by the
    batch); size: R or (H, W). Returns a ``Rasterization`` in nvdiffrast's pixel conventions (row 0 at NDC y = -1).
    """
    if clip.ndim != 3 or clip.shape[-1] != 4:
        raise ValueError(f"clip must be [N, V, 4], got {tuple(clip.shape)}")
    if tris.ndim != 2 or tris.shape[-1] != 3:
        raise ValueError(f"tris must be [F, 3], got {tuple(tris.shape)}")
    height, width = parse_size(size)
    tris = tris.to(device=clip.device, dtype=torch.int64)
    if resolve_backend(backend, clip.device) == "nvdiffrast":
        return rasterize_nvdiffrast.rasterize_nvdiffrast(clip, tris, height, width)
    return rasterize_torch(clip, tris, height, width)


def interpolate(attr: torch.Tensor, rast: Rasterization, tris: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes attr [N or 1, V, C] (or [V, C]) over the image: returns [N, C, H, W].

    Uses the rasterization's perspective-correct barycentrics; 0 on background pixels. Differentiable w.r.t.
    ``attr`` and, through ``rast.bary``, the clip positions.
    """
    num_images, height, width = rast.tri_id.shape
    if attr.ndim == 2:
        attr = attr[None]
    if attr.shape[0] not in (1, num_images):
        raise ValueError(f"attr batch {attr.shape[0]} does not match the rasterization batch {num_images}")
    attr = attr.expand(num_images, -1, -1)
    num_verts, channels = attr.shape[1], attr.shape[2]
    tris = tris.to(device=attr.device, dtype=torch.int64)
    # Flat vertex index of each pixel's 3 triangle corners; background pixels point at vertex 0 and get weight 0.
    corners = tris[rast.tri_id.clamp_min(0)]  # [N, H, W, 3]
    offset = torch.arange(num_images, device=attr.device).view(-1, 1, 1, 1) * num_verts
    values = attr.reshape(num_images * num_verts, channels)[corners + offset]  # [N, H, W, 3, C]
    out = (values * rast.bary.to(attr.dtype)[..., None]).sum(-2)  # [N, H, W, C]
    return out.permute(0, 3, 1, 2)
