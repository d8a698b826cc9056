"""Deep3DFaceRecon's 5-landmark face alignment (`util/preprocess.py::align_img`), resolution independent.

A scaled-orthographic camera (POS) is fitted by least squares between five image landmarks and the release's 3-D
template; the image is then scaled so that one template unit spans `rescale_factor` = 102 pixels at 224 and cropped
around the point where the template origin projects, padding with black outside the image. At output size R the
rescale factor becomes 102 * R / 224, so every R gives the same framing: a crop at R is the 224 crop scaled by
R / 224 (in continuous, edge-based coordinates), and a face-model render at R (focal 1015 R / 224) lines up with it.

Coordinates. Public landmarks are y-DOWN pixel coordinates whose integer values are pixel centres (pixel (i, j)
centre = (x, y) = (j, i)), as everywhere in this project. The release works in y-up coordinates
(y_up = H - 1 - y); this module converts internally for the POS fit and reports `release_trans_params` in the
release's y-up form. POS is equivariant under that flip, so the fitted centre is the same either way.

Two resampling modes:
* ``exact=True`` (default): one bicubic resampling of the exact source rectangle (float crop box), so the framing is
  exactly the same at every size and `transform_landmarks` is exact to floating point. Differs from the release only
  by the release's integer truncation of the resized size (a scale error of up to one pixel across the image) and of
  the crop offsets (up to one pixel): together at most ~2 output pixels, typically ~1.
* ``exact=False``: the release's procedure verbatim (resize the whole image to int(W0 s') x int(H0 s'), bicubic,
  then crop at int offsets); `transform_landmarks` then follows the pixel mapping actually performed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from torch_utils.errors import UserError

__all__ = [
    "RESCALE_FACTOR",
    "TEMPLATE_5",
    "AlignParams",
    "AlignResult",
    "align_face",
    "align_params",
    "estimate_similarity",
    "inverse_transform_landmarks",
    "landmarks_68_to_5",
    "pos_fit",
    "transform_landmarks",
]

# Release template (similarity_Lm3D_all.mat reduced to 5 points): dm, y up, z toward the viewer. Rows: eye on the
# image's left, eye on the image's right, nose tip, mouth corner image-left, mouth corner image-right (MTCNN order).
TEMPLATE_5: np.ndarray = np.array(
    [
        [-0.3114866, 0.2903608, 0.1337795],
        [0.3097989, 0.2897204, 0.1317953],
        [0.0032535, -0.0461793, 0.5524424],
        [-0.2521693, -0.3813392, 0.2240573],
        [0.2484662, -0.3812824, 0.2223577],
    ]
)
RESCALE_FACTOR = 102.0  # pixels per template unit in the 224 crop (~ focal / camera distance = 101.5)
_REF_SIZE = 224


def landmarks_68_to_5(lm68: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """68 iBUG landmarks [..., 68, 2] -> [..., 5, 2] (numpy/torch): eye centres 36/39, 42/45, nose 30, mouth 48/54."""
    eye_l = (lm68[..., 36, :] + lm68[..., 39, :]) / 2
    eye_r = (lm68[..., 42, :] + lm68[..., 45, :]) / 2
    parts = [eye_l, eye_r, lm68[..., 30, :], lm68[..., 48, :], lm68[..., 54, :]]
    if isinstance(lm68, torch.Tensor):
        return torch.stack(parts, dim=-2)
    return np.stack(parts, axis=-2)


def pos_fit(points: np.ndarray, template: np.ndarray = TEMPLATE_5) -> tuple[np.ndarray, float]:
    """Release POS: least-squares affine camera from template [K, 3] to points [K, 2]; returns (t [2], scale s).

    Solves x = k0 X + k1 Y + k2 Z + k3, y = k4 X + k5 Y + k6 Z + k7 jointly; s is the mean norm of the two rows
    (pixels per template unit), t = (k3, k7) where the template origin projects. t is returned as plain floats
    (the release kept a (2, 1) array, which breaks on NumPy >= 1.24).
    """
    points = np.asarray(points, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    num = template.shape[0]
    design = np.zeros((2 * num, 8))
    design[0::2, 0:3], design[0::2, 3] = template, 1.0
    design[1::2, 4:7], design[1::2, 7] = template, 1.0
    k = np.linalg.lstsq(design, points.reshape(-1), rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.array([k[3], k[7]]), float(scale)


def _as_landmarks(landmarks: object) -> np.ndarray:
    """Validate landmarks as a finite float64 [5 | 68, 2] array."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68) or not np.all(np.isfinite(lm)):
        raise UserError(f"face landmarks must be a finite [5, 2] or [68, 2] array of (x, y) pixels, got {lm.shape}")
    return lm


def estimate_similarity(landmarks: np.ndarray, image_height: int) -> tuple[np.ndarray, float]:
    """POS fit of y-down landmarks [5 | 68, 2] of an image of height H; returns (centre (x, y) y-down [2], scale s).

    The centre is where the template origin projects (pixel-centre coordinates), s the pixels per template unit.
    """
    lm = _as_landmarks(landmarks)
    lm5 = landmarks_68_to_5(lm) if lm.shape[0] == 68 else lm
    lm5_yup = np.stack([lm5[:, 0], image_height - 1 - lm5[:, 1]], axis=1)  # the release's y-up convention
    t_yup, scale = pos_fit(lm5_yup)
    if not np.isfinite(scale) or scale <= 1e-6:
        raise UserError("face landmarks are degenerate (all points coincide); cannot align the face")
    return np.array([t_yup[0], image_height - 1 - t_yup[1]]), scale


@dataclass(frozen=True)
class AlignParams:
    """How a source image maps onto a size x size crop.

    box: (x0, y0, x1, y1) source rectangle in continuous y-down EDGE coordinates (pixel (i, j) spans [j, j+1] x
    [i, i+1]) that maps linearly onto the crop's [0, size] x [0, size]. center: projected template origin (x, y)
    y-down pixel-centre coordinates. scale: output pixels per source pixel (s' = rescale_factor * size / 224 / s).
    """

    size: int
    src_size: tuple[int, int]  # (W0, H0)
    center: tuple[float, float]
    scale: float
    box: tuple[float, float, float, float]
    exact: bool

    @property
    def release_trans_params(self) -> np.ndarray:
        """The release's `trans_params` [W0, H0, s', t_x, t_y(y-up)] for this crop."""
        w0, h0 = self.src_size
        return np.array([w0, h0, self.scale, self.center[0], h0 - 1 - self.center[1]], dtype=np.float64)


@dataclass
class AlignResult:
    """Output of `align_face`: image (PIL, size x size, same mode family), landmarks [K, 2] y-down in the crop."""

    image: Image.Image
    landmarks: np.ndarray
    params: AlignParams


def align_params(
    landmarks: np.ndarray,
    src_size: tuple[int, int],
    size: int = _REF_SIZE,
    rescale_factor: float = RESCALE_FACTOR,
    exact: bool = True,
) -> AlignParams:
    """Crop geometry for landmarks [5 | 68, 2] (y-down) in an image of src_size (W0, H0); rescale_factor is at 224."""
    w0, h0 = int(src_size[0]), int(src_size[1])
    center, s = estimate_similarity(landmarks, h0)
    scale = rescale_factor * size / _REF_SIZE / s
    if exact:
        # Crop centre (edge coordinate size / 2) <- template origin (pixel centre t, i.e. edge t + 0.5).
        half = size / (2 * scale)
        cx, cy = center[0] + 0.5, center[1] + 0.5
        box = (cx - half, cy - half, cx + half, cy + half)
    else:
        # The release's resize_n_crop_img, int() truncation included, in its own y-up variables.
        tx, ty_up = center[0], h0 - 1 - center[1]
        w, h = int(w0 * scale), int(h0 * scale)
        left = int(w / 2 - size / 2 + (tx - w0 / 2) * scale)
        up = int(h / 2 - size / 2 + (h0 / 2 - ty_up) * scale)
        box = (left * w0 / w, up * h0 / h, (left + size) * w0 / w, (up + size) * h0 / h)
    return AlignParams(
        size=size,
        src_size=(w0, h0),
        center=(float(center[0]), float(center[1])),
        scale=scale,
        box=tuple(float(b) for b in box),
        exact=exact,
    )


def transform_landmarks(points: np.ndarray, params: AlignParams) -> np.ndarray:
    """Map y-down pixel points [K, 2] of the source image into the crop (y-down pixel-centre coordinates)."""
    pts = np.asarray(points, dtype=np.float64)
    x0, y0, x1, y1 = params.box
    kx, ky = params.size / (x1 - x0), params.size / (y1 - y0)
    return np.stack([(pts[..., 0] + 0.5 - x0) * kx - 0.5, (pts[..., 1] + 0.5 - y0) * ky - 0.5], axis=-1)


def inverse_transform_landmarks(points: np.ndarray, params: AlignParams) -> np.ndarray:
    """Inverse of `transform_landmarks`: crop points [K, 2] -> source image y-down pixels."""
    pts = np.asarray(points, dtype=np.float64)
    x0, y0, x1, y1 = params.box
    kx, ky = params.size / (x1 - x0), params.size / (y1 - y0)
    return np.stack([(pts[..., 0] + 0.5) / kx + x0 - 0.5, (pts[..., 1] + 0.5) / ky + y0 - 0.5], axis=-1)


def _resample_exact(image: Image.Image, params: AlignParams) -> Image.Image:
    """One bicubic resampling of params.box onto size x size; black where the crop leaves the image."""
    w0, h0 = params.src_size
    x0, y0, x1, y1 = params.box
    # PIL needs the box inside the image: pad by edge replication (so the filter does not smear black into the
    # border pixels), then black out afterwards exactly the output pixels whose centres fall outside the image.
    support = math.ceil(2 * max(1.0, 1.0 / params.scale)) + 2
    pads = [
        max(0, math.ceil(-x0) + support),
        max(0, math.ceil(-y0) + support),
        max(0, math.ceil(x1 - w0) + support),
        max(0, math.ceil(y1 - h0) + support),
    ]
    if any(pads):
        arr = np.asarray(image)
        widths = ((pads[1], pads[3]), (pads[0], pads[2])) + ((0, 0),) * (arr.ndim - 2)
        image = Image.fromarray(np.pad(arr, widths, mode="edge"))
    box = (x0 + pads[0], y0 + pads[1], x1 + pads[0], y1 + pads[1])
    out = image.resize((params.size, params.size), Image.Resampling.BICUBIC, box=box)
    centres = (np.arange(params.size) + 0.5) / params.size
    src_x, src_y = x0 + centres * (x1 - x0), y0 + centres * (y1 - y0)
    inside = ((src_y >= 0) & (src_y <= h0))[:, None] & ((src_x >= 0) & (src_x <= w0))[None, :]
    if inside.all():
        return out
    arr = np.asarray(out).copy()
    arr[~inside] = 0
    return Image.fromarray(arr)


def _resample_release(image: Image.Image, params: AlignParams) -> Image.Image:
    """The release's resize-then-crop (PIL pads the crop with black)."""
    w0, h0 = params.src_size
    w, h = int(w0 * params.scale), int(h0 * params.scale)
    left, up = round(params.box[0] * w / w0), round(params.box[1] * h / h0)  # recover the integer offsets
    resized = image.resize((w, h), Image.Resampling.BICUBIC)
    return resized.crop((left, up, left + params.size, up + params.size))


def align_face(
    image: Image.Image,
    landmarks: np.ndarray,
    size: int = _REF_SIZE,
    rescale_factor: float = RESCALE_FACTOR,
    exact: bool = True,
) -> AlignResult:
    """Align a face: PIL image + y-down landmarks [5 | 68, 2] -> AlignResult(size x size crop, landmarks [K, 2])."""
    if not isinstance(image, Image.Image):
        raise UserError(f"align_face expects a PIL image, got {type(image).__name__}")
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    lm = _as_landmarks(landmarks)
    params = align_params(lm, image.size, size=size, rescale_factor=rescale_factor, exact=exact)
    crop = _resample_exact(image, params) if exact else _resample_release(image, params)
    return AlignResult(image=crop, landmarks=transform_landmarks(lm, params), params=params)
