"""The renderer's shared contract: output dataclasses and the pixel / clip-space conventions of every backend.

Conventions (identical for all backends, chosen to match nvdiffrast's so the two can be swapped freely):

- Input positions are homogeneous clip coordinates ``clip [N, V, 4] = (x, y, z, w)``; the visible volume is
  ``-w <= x, y, z <= w`` with ``w > 0`` (OpenGL). Larger ``z / w`` is farther; the nearest surface wins.
- Pixel grid = nvdiffrast's native memory order, with no flip: pixel ``(i, j)`` (row ``i``, column ``j``) of an
  ``H x W`` image has its centre at NDC ``x = (2 j + 1) / W - 1`` and ``y = (2 i + 1) / H - 1``, i.e. row 0 is
  at NDC ``y = -1``. Clip coordinates that negate camera y (the release's matrix, ``FaceModel.to_clip``) therefore
  come out upright with row 0 = TOP of the image. A pixel is covered iff its centre lies inside the triangle
  (edges inclusive); no antialiasing, no back-face culling.
- Barycentrics are perspective-correct (the weights that interpolate clip-space quantities linearly), i.e.
  nvdiffrast's ``(u, v, 1 - u - v)`` for the triangle's (first, second, third) vertex.
- Triangles crossing the camera plane (some ``w <= 0``) are handled exactly: a pixel is covered where its view
  ray (positive ``w``) hits the triangle inside the near/far planes ``-w <= z <= w``; the part behind the camera
  never shows. This is what clipping against the view frustum (nvdiffrast) produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rasterization:
    """Per-pixel rasterizer output for N images of H x W pixels (nvdiffrast row order, see module docstring).

    tri_id: [N, H, W] int64, 0-based index into ``tris`` of the visible triangle, -1 for background.
    bary:   [N, H, W, 3] float, perspective-correct barycentric weights of the triangle's 3 vertices (sum 1),
            differentiable w.r.t. the clip positions; 0 on background pixels.
    depth:  [N, H, W] float, NDC depth z / w in [-1, 1] of the visible surface (no gradient); 0 on background.
    backend: name of the backend that produced it ('torch' or 'nvdiffrast').
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    backend: str

    @property
    def mask(self) -> torch.Tensor:
        """[N, 1, H, W] float {0, 1}: 1 where a triangle is visible."""
        return (self.tri_id >= 0).unsqueeze(1).to(self.bary.dtype)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the rasterized images."""
        return int(self.tri_id.shape[1]), int(self.tri_id.shape[2])


@dataclass
class RenderOutput:
    """Rendered face maps, all NCHW float32 with row 0 = top and exactly 0 outside the mask.

    render:  [N, 3, H, W] in [0, 1], shaded colour (albedo x SH irradiance), clamped to [0, 1].
    albedo:  [N, 3, H, W] in [0, 1], Lambertian albedo, clamped to [0, 1].
    normals: [N, 3, H, W] in [-1, 1], unit camera-space normals (interpolated per pixel, then renormalised).
    mask:    [N, 1, H, W] in {0, 1}, 1 where the face mesh covers the pixel centre.
    depth:   [N, 1, H, W] camera depth (clip w, positive, ~10 for a face at the origin; release units: dm).
    """

    render: torch.Tensor
    albedo: torch.Tensor
    normals: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor


def parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise an image size given as ``R`` or ``(H, W)`` to ``(H, W)``; rejects non-positive sizes."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"render size must be positive, got {size!r}")
    return height, width


def pixel_centres_ndc(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """NDC coordinates of the pixel centres: (x [W] for the columns, y [H] for the rows; row 0 at NDC y = -1)."""
    cols = torch.arange(width, device=device, dtype=dtype)
    rows = torch.arange(height, device=device, dtype=dtype)
    return (2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1
