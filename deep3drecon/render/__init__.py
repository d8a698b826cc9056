"""Differentiable face renderer: rasterizer backends ('torch', 'nvdiffrast') behind one contract, and the Renderer.

``rasterize(clip, tris, size, backend)`` -> ``Rasterization`` (per-pixel triangle id, barycentrics, depth) and
``interpolate(attr, rast, tris)`` -> [N, C, H, W] follow nvdiffrast's conventions (see ``contract.py``);
``Renderer(face_model)(coeffs, size)`` -> ``RenderOutput`` (render, albedo, normals, mask, depth).
"""

from .contract import Rasterization, RenderOutput
from .rasterize import available_backends, interpolate, rasterize, resolve_backend
from .renderer import Renderer

__all__ = [
    "Rasterization",
    "RenderOutput",
    "Renderer",
    "available_backends",
    "interpolate",
    "rasterize",
    "resolve_backend",
]
