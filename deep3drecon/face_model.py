"""Parametric face model (BFM 2009 front face + expression basis) as used by Deep3DFaceRecon.

Reads a `BFM_model_front.mat` (the official conversion, or the procedural stand-in of `deep3drecon.synthetic`)
and turns 257 coefficients into posed geometry, albedo, shaded colour and 68 landmarks, reproducing the
reference release (sicxu/Deep3DFaceRecon_pytorch, `models/bfm.py`) formula for formula: batched, differentiable,
on whatever device the module lives on.

Coordinate frames and conventions (all numbers are the release's):

* World frame: decimetres, x right, y up, z toward the viewer. The mean shape is recentred on load (mean over
  all vertices of the file). Pose: ``posed = R @ shape + trans`` with ``R = Rz @ Ry @ Rx`` (fixed axes, radians).
* ``vertices_cam`` is the release's camera-space vertex array: ``(x, y, d)`` with ``d = 10 - z_world`` the
  POSITIVE depth (the camera sits at world (0, 0, 10) looking toward -z, up = +y). x and y are unchanged, so
  x points right and y points up on screen.
* ``normals`` are the rotated world-frame normals, i.e. OpenGL view-space normals: x right, y up, +z toward the
  viewer (NOT flipped like the depth). These are what the SH shading uses.
* Pinhole camera at 224: ``u = 1015 * x / d + 112``, ``v = 1015 * y / d + 112`` (y-up, continuous coordinates
  measured from the image's left / bottom EDGE). At resolution R the focal length is ``1015 * R / 224`` and the
  centre ``R / 2``: the same field of view, hence resolution-independent clip coordinates.

Clip coordinates (``to_clip``), identical to the release's nvdiffrast matrix for every resolution::

    clip = (k * x, -k * y, 2 * d - 15, d)        with k = 1015 / 112 = 9.0625, w = d > 0
    NDC  = clip[:3] / d:  x_ndc = k x / d,  y_ndc = -k y / d,  z_ndc = 2 - 15 / d  (-1 at d = 5, +1 at d = 15)

Raster convention a renderer MUST use with these clip coordinates (it is nvdiffrast's native memory order, so
nvdiffrast output needs no flip): the output image is H x W, row i = 0 is the TOP row, and the centre of pixel
(row i, column j) sits at::

    x_ndc = (2 j + 1) / W - 1,        y_ndc = (2 i + 1) / H - 1

(NDC y grows DOWN the image because y was negated above.) Pixel (i, j) covers x_ndc in [2j/W - 1, 2(j+1)/W - 1].
Depth test: keep the smallest z_ndc (nearest). Do not cull back faces: triangles of the file are counter-clockwise
seen from the viewer in the world frame (outward normal = (v1 - v2) x (v2 - v3)), which becomes clockwise in this
y-down NDC.

Public 2-D points (``landmarks``, ``project``) are y-DOWN pixel coordinates whose integer values are pixel centres
(pixel (i, j) centre = (x, y) = (j, i)), consistent with the raster convention above::

    x_pix = u_R - 0.5,    y_pix = R - v_R - 0.5      (u_R, v_R: the release's y-up coordinates at size R)

The release itself stores landmarks as (u, 223 - v) (half a pixel away from its own render); convert with
``x_release = x_pix + 0.5``, ``y_release_yup = 223.5 - y_pix`` at 224 when comparing with release outputs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from torch import nn

from deep3drecon.coeffs import COEFF_DIMS, COEFF_SLICES, NUM_COEFFS, split_coeffs  # noqa: F401 (re-exported)
from torch_utils.errors import UserError

__all__ = [
    "CAMERA_DISTANCE",
    "CENTER",
    "COEFF_DIMS",
    "COEFF_SLICES",
    "CROP_SIZE",
    "FOCAL",
    "FaceGeometry",
    "FaceModel",
    "INIT_LIT",
    "SH_CONSTANTS",
    "ZFAR",
    "ZNEAR",
    "split_coeffs",
]

# Release constants (models/bfm.py, util/nvdiffrast.py): camera 1 m away, 12.59 degree field of view at 224.
CAMERA_DISTANCE = 10.0
FOCAL = 1015.0
CENTER = 112.0
CROP_SIZE = 224
ZNEAR = 5.0
ZFAR = 15.0
INIT_LIT = 0.8  # added to the DC SH coefficient of every colour channel


# SH irradiance constants a_k (Lambertian kernel) and c_k (basis normalisation), exactly as the release.
_A0, _A1, _A2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
_C0, _C1 = 1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi)
_C2 = 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)
SH_CONSTANTS: dict[str, float] = {"a0": _A0, "a1": _A1, "a2": _A2, "c0": _C0, "c1": _C1, "c2": _C2}

_REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")


@dataclass
class FaceGeometry:
    """Per-vertex outputs of `FaceModel.compute` for a batch of N faces with V vertices (float32, model device).

    vertices_cam: [N, V, 3] release camera space (x right, y up, positive depth d = 10 - z_world).
    normals:      [N, V, 3] unit normals, rotated world frame = OpenGL view space (+z toward the viewer).
    albedo:       [N, V, 3] RGB reflectance, nominally [0, 1], not clamped.
    color:        [N, V, 3] albedo * SH irradiance, [0, 1]-ish, not clamped (release behaviour).
    landmarks:    [N, 68, 2] y-down pixel coordinates in the 224 crop (integer = pixel centre).
    """

    vertices_cam: torch.Tensor
    normals: torch.Tensor
    albedo: torch.Tensor
    color: torch.Tensor
    landmarks: torch.Tensor


def _to_index(array: np.ndarray, name: str) -> torch.Tensor:
    """1-based float indices from the .mat file -> int64 0-based tensor (the release subtracts 1 on load)."""
    arr = np.asarray(array)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 1):
        raise UserError(f"face model field '{name}' must hold 1-based indices; found values below 1")
    return torch.from_numpy(np.rint(arr).astype(np.int64) - 1)


class FaceModel(nn.Module):
    """BFM-style linear face model; every array is a buffer, so `.to(device)` moves the whole model.

    Buffers: mean_shape [V, 3] (recentred, dm), id_base [3V, 80], exp_base [3V, 64], mean_tex [3V] (0-255),
    tex_base [3V, 80] (0-255), triangles [F, 3] int64 0-based, point_buf [V, 8] int64 0-based (value F = padding
    pointing at an appended zero normal), keypoints [68] int64. Optional training regions (None when absent):
    skin_mask [V] float {0, 1}, front_vertex_idx [K] int64, front_triangles [F', 3] int64 (full-mesh ids, mapped
    through `frontmask2_idx` as the TF original does; see reference section 2.5).
    """

    def __init__(self, fields: dict[str, Any], recenter: bool = True) -> None:
        super().__init__()
        missing = [k for k in _REQUIRED_KEYS if k not in fields]
        if missing:
            raise UserError(f"face model is missing fields {missing}; expected a BFM_model_front.mat layout")
        f32 = lambda key: torch.from_numpy(np.asarray(fields[key], dtype=np.float32))  # release casts all to fp32
        mean_shape = f32("meanshape").reshape(-1, 3)
        num_v = mean_shape.shape[0]
        if recenter:
            # The file stores the un-centred BFM mean; the release subtracts the per-axis mean of its own vertices.
            mean_shape = mean_shape - mean_shape.mean(dim=0, keepdim=True)
        id_base, exp_base, tex_base = f32("idBase"), f32("exBase"), f32("texBase")
        mean_tex = f32("meantex").reshape(-1)
        for key, t, cols in (("idBase", id_base, 80), ("exBase", exp_base, 64), ("texBase", tex_base, 80)):
            if tuple(t.shape) != (3 * num_v, cols):
                raise UserError(f"face model field '{key}' has shape {list(t.shape)}, expected [{3 * num_v}, {cols}]")
        if mean_tex.numel() != 3 * num_v:
            raise UserError(f"face model field 'meantex' has {mean_tex.numel()} values, expected {3 * num_v}")
        triangles = _to_index(fields["tri"], "tri").reshape(-1, 3)
        point_buf = _to_index(fields["point_buf"], "point_buf").reshape(num_v, -1)
        keypoints = _to_index(fields["keypoints"], "keypoints").reshape(-1)
        num_f = triangles.shape[0]
        if triangles.max() >= num_v or point_buf.max() > num_f or keypoints.numel() != 68 or keypoints.max() >= num_v:
            raise UserError("face model index fields (tri, point_buf, keypoints) are out of range for its vertices")

        self.register_buffer("mean_shape", mean_shape)
        self.register_buffer("id_base", id_base)
        self.register_buffer("exp_base", exp_base)
        self.register_buffer("mean_tex", mean_tex)
        self.register_buffer("tex_base", tex_base)
        self.register_buffer("triangles", triangles)
        self.register_buffer("point_buf", point_buf)
        self.register_buffer("keypoints", keypoints)

        # Training-only regions: optional, as in the release (read only with is_train=True).
        skin = fields.get("skinmask")
        skin_t = None if skin is None else torch.from_numpy(np.asarray(skin, np.float32).reshape(-1))
        self.register_buffer("skin_mask", skin_t)
        front_idx = fields.get("frontmask2_idx")
        front_idx_t = None if front_idx is None else _to_index(front_idx, "frontmask2_idx").reshape(-1)
        self.register_buffer("front_vertex_idx", front_idx_t)
        tri_mask2 = fields.get("tri_mask2")
        front_tris = None
        if tri_mask2 is not None and front_idx_t is not None:
            front_tris = front_idx_t[_to_index(tri_mask2, "tri_mask2").reshape(-1, 3)]
        self.register_buffer("front_triangles", front_tris)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mat(cls, path: str | os.PathLike, recenter: bool = True) -> FaceModel:
        """Load a `BFM_model_front.mat` (official or synthetic); clear one-line error if missing or malformed."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UserError(
                f"face model file not found: {path} (build BFM_model_front.mat with the Deep3DFaceRecon conversion, "
                "or use deep3drecon.assets.synthetic_face_model_path())"
            )
        try:
            fields = scipy.io.loadmat(path)
        except Exception as exc:  # scipy raises several types for corrupt files; report them as one line
            raise UserError(f"cannot read face model {path}: {exc}") from exc
        return cls(fields, recenter=recenter)

    @property
    def num_vertices(self) -> int:
        """Number of vertices V."""
        return int(self.mean_shape.shape[0])

    @property
    def num_triangles(self) -> int:
        """Number of triangles F."""
        return int(self.triangles.shape[0])

    # ------------------------------------------------------------------ the release's building blocks
    def compute_shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """Canonical (un-posed) shape [N, V, 3] in dm from id [N, 80] and exp [N, 64]."""
        offsets = F.linear(id_coeff, self.id_base) + F.linear(exp_coeff, self.exp_base)  # [N, 3V], xyz interleaved
        return offsets.reshape(offsets.shape[0], -1, 3) + self.mean_shape

    def compute_albedo(self, tex_coeff: torch.Tensor) -> torch.Tensor:
        """Albedo [N, V, 3] = (meantex + texBase . tex) / 255, nominally [0, 1], unclamped."""
        tex = (F.linear(tex_coeff, self.tex_base) + self.mean_tex) / 255.0
        return tex.reshape(tex.shape[0], -1, 3)

    def compute_normals(self, shape: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals [N, V, 3] of shape [N, V, 3]: normalised sum of adjacent unit face normals."""
        tri = self.triangles
        v1, v2, v3 = shape[:, tri[:, 0]], shape[:, tri[:, 1]], shape[:, tri[:, 2]]
        face_normals = F.normalize(torch.linalg.cross(v1 - v2, v2 - v3, dim=-1), dim=-1)
        # point_buf pads with index F: append one zero normal there so padding adds nothing.
        face_normals = torch.cat([face_normals, face_normals.new_zeros(face_normals.shape[0], 1, 3)], dim=1)
        return F.normalize(face_normals[:, self.point_buf].sum(dim=2), dim=-1)

    @staticmethod
    def compute_rotation(angles: torch.Tensor) -> torch.Tensor:
        """Rotation matrices R = Rz @ Ry @ Rx [N, 3, 3] (acting on column vectors) from angles [N, 3] in radians."""
        cos, sin = torch.cos(angles), torch.sin(angles)
        one, zero = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])
        cx, cy, cz = cos.unbind(dim=1)
        sx, sy, sz = sin.unbind(dim=1)
        rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=1).reshape(-1, 3, 3)
        ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).reshape(-1, 3, 3)
        rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
        return rz @ ry @ rx

    @staticmethod
    def to_camera(posed: torch.Tensor) -> torch.Tensor:
        """World-frame points [N, V, 3] -> release camera space (x, y, 10 - z) [N, V, 3] (not in place)."""
        return torch.cat([posed[..., :2], CAMERA_DISTANCE - posed[..., 2:]], dim=-1)

    @staticmethod
    def compute_color(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """SH shading [N, V, 3] = albedo * irradiance(normals [N, V, 3] rotated, gamma [N, 27] channel-major)."""
        gamma = gamma.reshape(-1, 3, 9).clone()
        gamma[:, :, 0] = gamma[:, :, 0] + INIT_LIT  # the release's default ambient light
        nx, ny, nz = normals.unbind(dim=-1)
        a1c1, a2c2 = _A1 * _C1, _A2 * _C2
        basis = torch.stack(
            [
                torch.full_like(nx, _A0 * _C0),
                -a1c1 * ny,
                a1c1 * nz,
                -a1c1 * nx,
                a2c2 * nx * ny,
                -a2c2 * ny * nz,
                a2c2 / (2 * math.sqrt(3.0)) * (3 * nz**2 - 1),
                -a2c2 * nx * nz,
                a2c2 / 2 * (nx**2 - ny**2),
            ],
            dim=-1,
        )  # [N, V, 9]
        irradiance = torch.einsum("nvk,nck->nvc", basis, gamma)
        return albedo * irradiance

    # ------------------------------------------------------------------ camera
    @staticmethod
    def to_clip(vertices_cam: torch.Tensor) -> torch.Tensor:
        """Clip coordinates [N, V, 4] = (k x, -k y, 2 d - 15, d), k = 1015/112, for any output size (module docs)."""
        x, y, d = vertices_cam.unbind(dim=-1)
        k = FOCAL / CENTER
        z_scale, z_offset = (ZFAR + ZNEAR) / (ZFAR - ZNEAR), 2 * ZFAR * ZNEAR / (ZFAR - ZNEAR)  # 2 and 15
        return torch.stack([k * x, -k * y, z_scale * d - z_offset, d], dim=-1)

    @staticmethod
    def project(vertices_cam: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
        """Perspective projection [N, V, 2] to y-down pixel coordinates of a size x size image (integer = centre)."""
        focal, center = FOCAL * size / CROP_SIZE, size / 2.0
        d = vertices_cam[..., 2]
        u = focal * vertices_cam[..., 0] / d + center  # release to_image, y-up, edge-based
        v = focal * vertices_cam[..., 1] / d + center
        return torch.stack([u - 0.5, size - v - 0.5], dim=-1)

    # ------------------------------------------------------------------ full forward
    def compute(self, coeffs: torch.Tensor) -> FaceGeometry:
        """Coefficients [N, 257] -> FaceGeometry (release `compute_for_render`, order of operations preserved)."""
        c = split_coeffs(coeffs.to(self.mean_shape.dtype))
        shape = self.compute_shape(c["id"], c["exp"])
        rot_t = self.compute_rotation(c["angle"]).transpose(1, 2)  # row-vector form p @ R^T, as the release
        posed = shape @ rot_t + c["trans"].unsqueeze(1)
        vertices_cam = self.to_camera(posed)
        landmarks = self.project(vertices_cam[:, self.keypoints], CROP_SIZE)
        albedo = self.compute_albedo(c["tex"])
        normals = self.compute_normals(shape) @ rot_t  # normals of the un-posed shape, then rotated
        color = self.compute_color(albedo, normals, c["gamma"])
        return FaceGeometry(vertices_cam=vertices_cam, normals=normals, albedo=albedo, color=color, landmarks=landmarks)

    def forward(self, coeffs: torch.Tensor) -> FaceGeometry:
        """Same as `compute`."""
        return self.compute(coeffs)
