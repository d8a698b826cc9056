"""Face renderer: 3DMM coefficients -> the rendered maps [r, a, n] (+ mask, depth) that condition the generator.

Paper sec. 2.2: a differentiable renderer turns p into the shaded render r(p), the Lambertian albedo a and the
normal map n. Geometry, albedo and SH shading are per vertex (``FaceModel``, the release's formulas); this module
only rasterizes (no antialiasing, like the release's nvdiffrast path) and interpolates them per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..face_model import FaceGeometry, FaceModel
from .contract import RenderOutput, parse_size
from .rasterize import interpolate, rasterize, resolve_backend


class Renderer(nn.Module):
    """Renders coefficients [N, 257] to a ``RenderOutput`` of size x size maps with the release's camera framing.

    The field of view is fixed (focal 1015 px at 224, i.e. ``1015 * R / 224`` at size R), so every output size
    shows the same framing and the maps of different sizes line up. ``backend`` is 'auto' (nvdiffrast on CUDA when
    installed, else torch), 'torch' or 'nvdiffrast'; the ``backend`` attribute names the one that actually runs.
    """

    def __init__(self, face_model: FaceModel, backend: str = "auto") -> None:
        super().__init__()
        self.face_model = face_model
        self.requested_backend = backend
        resolve_backend(backend, "cpu")  # fail early on unknown names or a missing nvdiffrast

    @property
    def backend(self) -> str:
        """Name of the rasterizer backend used on the face model's current device ('torch' or 'nvdiffrast')."""
        return resolve_backend(self.requested_backend, self.face_model.triangles.device)

    def render_geometry(self, geom: FaceGeometry, size: int | tuple[int, int]) -> RenderOutput:
        """Rasterize already computed ``FaceGeometry`` (N faces) into a ``RenderOutput`` of the given size."""
        tris = self.face_model.triangles
        clip = self.face_model.to_clip(geom.vertices_cam)
        rast = rasterize(clip, tris, parse_size(size), backend=self.requested_backend)
        depth = geom.vertices_cam[..., 2:3]  # positive camera depth d (= clip w)
        # One interpolation for all maps: colour 3 | albedo 3 | normals 3 | depth 1 channels.
        attrs = torch.cat([geom.color, geom.albedo, geom.normals, depth], dim=-1)
        maps = interpolate(attrs, rast, tris)  # [N, 10, H, W], exactly 0 outside the mask
        mask = rast.mask.to(maps.dtype)
        return RenderOutput(
            # The release never clamps; the contract promises [0, 1] (only extreme lighting leaves that range).
            render=maps[:, 0:3].clamp(0, 1),
            albedo=maps[:, 3:6].clamp(0, 1),
            # Interpolated unit normals are shorter than 1 inside triangles: renormalise (0 stays 0 outside).
            normals=F.normalize(maps[:, 6:9], dim=1, eps=1e-8),
            mask=mask,
            depth=maps[:, 9:10],
        )

    def forward(self, coeffs: torch.Tensor, size: int | tuple[int, int]) -> RenderOutput:
        """coeffs [N, 257] float (id | exp | tex | angle | gamma | trans) -> ``RenderOutput`` of size x size maps."""
        return self.render_geometry(self.face_model.compute(coeffs), size)
