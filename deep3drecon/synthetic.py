"""Procedural stand-in for `BFM_model_front.mat`: a small, deterministic, licence-free morphable face.

The BFM may not be redistributed, so tests, smoke runs and the synthetic reconstructor use this model instead. It
is written in exactly the official file layout (same keys, dtypes, shapes per vertex, 1-based indices, padded
`point_buf`) so that `FaceModel.from_mat` cannot tell the difference, and it lives in the same units and frame as
the BFM (decimetres, x right, y up, z toward the viewer; eyes ~6.2 cm apart, face ~2 dm tall) so the release's
camera (distance 10, focal 1015 at 224) frames it like a real face and the 5-point alignment template fits.

Geometry: a square grid (denser at the centre) mapped onto an egg-shaped front-face mask, lifted onto an
ellipsoid height field with a nose, eye sockets and eyeballs, brow ridge, cheekbones, lips and chin. The bases are
smooth displacement / colour fields: the first columns are interpretable (identity: face width, length, nose,
jaw, eye spacing, chin, ...; expression: mouth open, smile, eyes closed, brows raised, ...; albedo: skin tone,
redness, lips, brows, ...), the remaining ones random smooth fields with decaying amplitude, mostly left/right
symmetric. The first ACTIVE[group] columns are large enough to see at 32 px (identity moves outlines by 2-3 px per
unit, the jaw drop opens the mouth by 3-4 px, closed eyes replace 4 x 2-px eyes by skin); they are the only ones the
built-in world (dataprep.synthetic_scenes) varies, and all of them are left/right symmetric. The built-in world
uses a WORLD_GRID x WORLD_GRID vertex grid.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io

__all__ = ["ACTIVE", "WORLD_GRID", "make_synthetic_model", "write_synthetic_mat", "LANDMARKS_68"]

# Mean-face 2-D positions (x, y) in dm of the 68 landmarks, standard iBUG order (0-based: jaw 0-16, brows
# 17-26, nose 27-35, eyes 36-47, mouth 48-67). Eye corners and mouth corners are placed so that the 5-point
# reduction lands on the release's alignment template; the nearest mesh vertex becomes the keypoint.
_JAW_THETA = np.linspace(np.pi - 0.12, 2 * np.pi + 0.12, 17)
_JAW = np.stack([0.72 * np.cos(_JAW_THETA), 0.12 + 1.03 * np.sin(_JAW_THETA)], axis=1)
_BROW_L = np.array([[-0.52, 0.40], [-0.44, 0.46], [-0.34, 0.48], [-0.24, 0.47], [-0.14, 0.44]])
_NOSE = np.array([[0, 0.28], [0, 0.18], [0, 0.07], [0, -0.04], [-0.12, -0.14], [-0.06, -0.16], [0, -0.17],
                  [0.06, -0.16], [0.12, -0.14]])  # fmt: skip
_EYE_L = np.array([[-0.43, 0.29], [-0.36, 0.325], [-0.26, 0.325], [-0.19, 0.29], [-0.26, 0.26], [-0.36, 0.26]])
_MOUTH = np.array([[-0.25, -0.38], [-0.16, -0.335], [-0.06, -0.315], [0, -0.325], [0.06, -0.315], [0.16, -0.335],
                   [0.25, -0.38], [0.16, -0.445], [0.06, -0.475], [0, -0.48], [-0.06, -0.475], [-0.16, -0.445],
                   [-0.2, -0.38], [-0.07, -0.36], [0, -0.36], [0.07, -0.36], [0.2, -0.38], [0.07, -0.405],
                   [0, -0.41], [-0.07, -0.405]])  # fmt: skip
_mirror = lambda pts: pts * np.array([-1.0, 1.0])
# Right brow / eye are listed inner-to-outer in the iBUG order, i.e. mirrored left ones in reverse order.
_BROW_R = _mirror(_BROW_L)[::-1]
_EYE_R = _mirror(_EYE_L)[[3, 2, 1, 0, 5, 4]]
LANDMARKS_68: np.ndarray = np.concatenate([_JAW, _BROW_L, _BROW_R, _NOSE, _EYE_L, _EYE_R, _MOUTH], axis=0)

_EYE_CENTRES = np.array([[-0.31, 0.29], [0.31, 0.29]])
_MOUTH_Y = -0.38  # height of the mouth line (mouth corners)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """Anisotropic Gaussian bump exp(-((x-cx)/sx)^2/2 - ((y-cy)/sy)^2/2), same shape as x."""
    return np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)


def _sym_gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """Gaussian bump at (+-cx, cy): the same feature on both halves of the face."""
    return _gauss(x, y, cx, cy, sx, sy) + _gauss(x, y, -cx, cy, sx, sy)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _make_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask-shaped vertex layout: (x, y) [V] in dm on the face mask and CCW triangles [F, 3] (0-based)."""
    t = np.linspace(-1.0, 1.0, n)
    t = (t + 0.6 * t**3) / 1.6  # denser sampling near the centre, where eyes / nose / mouth need detail
    u, v = np.meshgrid(t, t)  # u: columns (x), v: rows (y)
    # Square -> disk (elliptical grid mapping), then disk -> egg-shaped mask narrowing toward the chin.
    xd, yd = u * np.sqrt(1 - v**2 / 2), v * np.sqrt(1 - u**2 / 2)
    y = 1.07 * yd
    x = 0.86 * xd * (1 - 0.24 * np.clip(-yd, 0, 1) ** 2)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    # Alternate the quad diagonal in a checkerboard so the mesh has no directional bias in its normals.
    flip = ((np.arange(n - 1)[:, None] + np.arange(n - 1)[None, :]) % 2).ravel().astype(bool)
    t1 = np.where(flip[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(flip[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    tris = np.concatenate([t1, t2], axis=0)
    # Make every triangle counter-clockwise seen from +z, so (v1 - v2) x (v2 - v3) points toward the viewer.
    px, py = x.ravel()[tris], y.ravel()[tris]
    area = (px[:, 1] - px[:, 0]) * (py[:, 2] - py[:, 0]) - (px[:, 2] - px[:, 0]) * (py[:, 1] - py[:, 0])
    tris[area < 0] = tris[area < 0][:, [0, 2, 1]]
    return x.ravel(), y.ravel(), tris


def _height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean-face depth z(x, y) in dm: ellipsoid head plus facial features."""
    rho2 = (x / 0.98) ** 2 + ((y - 0.05) / 1.3) ** 2
    z = 0.78 * np.sqrt(np.clip(1 - rho2, 0.03, None))
    # Nose: a ridge along x = 0 rising from the bridge to the tip, then falling away under the tip.
    ridge = np.interp(y, [-0.2, -0.13, -0.04, 0.1, 0.3, 0.42], [0.0, 0.12, 0.30, 0.19, 0.07, 0.0])
    width = np.interp(y, [-0.2, -0.04, 0.3], [0.07, 0.065, 0.04])
    z += ridge * np.exp(-0.5 * (x / width) ** 2)
    z += 0.07 * _sym_gauss(x, y, 0.1, -0.12, 0.05, 0.045)  # nostril wings
    z -= 0.09 * _sym_gauss(x, y, 0.31, 0.285, 0.13, 0.085)  # eye sockets
    z += 0.05 * _sym_gauss(x, y, 0.31, 0.285, 0.075, 0.05)  # eyeballs / lids
    z += 0.05 * _gauss(np.abs(x), y, 0.3, 0.44, 0.2, 0.04)  # brow ridge
    z += 0.04 * _sym_gauss(x, y, 0.42, 0.05, 0.12, 0.1)  # cheekbones
    z += 0.05 * _gauss(x, y, 0, -0.33, 0.15, 0.035)  # upper lip
    z += 0.055 * _gauss(x, y, 0, -0.445, 0.13, 0.04)  # lower lip
    z -= 0.02 * _gauss(x, y, 0, _MOUTH_Y, 0.2, 0.012)  # mouth line crease
    z -= 0.025 * _gauss(x, y, 0, -0.56, 0.14, 0.04)  # groove under the lower lip
    z += 0.06 * _gauss(x, y, 0, -0.76, 0.15, 0.1)  # chin
    z += 0.06 * _gauss(x, y, 0, -0.4, 0.3, 0.2)  # muzzle: mouth region sits in front of the eyes
    return z


def _mean_albedo(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean albedo [V, 3] on the 0-255 scale and soft region weights [V] used by the albedo basis."""
    skin = np.array([200.0, 150.0, 125.0])
    lips_w = _gauss(x, y, 0, -0.39, 0.2, 0.055) * np.exp(-0.5 * (np.maximum(np.abs(x) - 0.15, 0) / 0.03) ** 2)
    lips_w = np.clip(1.6 * lips_w, 0, 1)
    inner_mouth = _gauss(x, y, 0, _MOUTH_Y, 0.14, 0.012)
    brow_y = np.interp(np.abs(x), [0.14, 0.24, 0.34, 0.44, 0.52], [0.44, 0.47, 0.48, 0.46, 0.40])
    brow_w = (
        _sigmoid((0.04 - np.abs(y - brow_y)) / 0.008)
        * _sigmoid((0.55 - np.abs(x)) / 0.02)
        * _sigmoid((np.abs(x) - 0.12) / 0.02)
    )
    eye_w, iris_w, pupil_w = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for cx, cy in _EYE_CENTRES:
        r_eye = np.sqrt(((x - cx) / 0.18) ** 2 + ((y - cy) / 0.1) ** 2)
        r_iris = np.hypot(x - cx, y - cy)
        eye_w += _sigmoid((1 - r_eye) / 0.12)
        iris_w += _sigmoid((0.07 - r_iris) / 0.006) * _sigmoid((1 - r_eye) / 0.12)
        pupil_w += _sigmoid((0.03 - r_iris) / 0.004)
    nostril_w = _sym_gauss(x, y, 0.06, -0.15, 0.04, 0.024)  # large enough to show at 32 px
    cheek_w = _sym_gauss(x, y, 0.38, -0.1, 0.12, 0.1)

    color = np.tile(skin, (x.size, 1))
    mix = lambda c, w, target: c + w[:, None] * (np.asarray(target) - c)
    color = mix(color, cheek_w * 0.35, [205, 130, 115])
    color = mix(color, lips_w, [170, 85, 85])
    color = mix(color, inner_mouth, [90, 35, 35])
    color = mix(color, np.clip(brow_w, 0, 1), [85, 60, 45])
    color = mix(color, np.clip(nostril_w, 0, 1), [80, 45, 40])
    color = mix(color, np.clip(eye_w, 0, 1), [235, 230, 225])
    color = mix(color, np.clip(iris_w, 0, 1), [80, 55, 40])
    color = mix(color, np.clip(pupil_w, 0, 1), [20, 15, 15])
    skin_only = np.clip(1 - lips_w - np.clip(eye_w, 0, 1) - np.clip(brow_w, 0, 1), 0, 1)
    regions = {
        "skin": skin_only,
        "lips": lips_w,
        "brows": np.clip(brow_w, 0, 1),
        "iris": np.clip(iris_w, 0, 1),
        "cheeks": cheek_w,
        "eyes": np.clip(eye_w, 0, 1),
    }
    return color, regions


def _random_fields(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    count: int,
    dims: int,
    symmetric: bool,
    center: tuple[float, float],
    spread: float,
    widths: tuple[float, float],
) -> np.ndarray:
    """`count` smooth random fields [count, V, dims], each a sum of 6 Gaussian RBFs, unit RMS per field."""
    out = np.zeros((count, x.size, dims))
    for k in range(count):
        for _ in range(6):
            cx, cy = rng.normal(center[0], spread), rng.normal(center[1], spread)
            s = rng.uniform(*widths)
            amp = rng.normal(size=dims)
            g = _gauss(x, y, cx, cy, s, s)
            if symmetric:
                # Even in x for y/z (and colour), odd for the x displacement: a left/right symmetric change.
                gm = _gauss(x, y, -cx, cy, s, s)
                field = np.outer(g + gm, amp)
                if dims == 3:
                    field[:, 0] = amp[0] * (g - gm)
            else:
                field = np.outer(g, amp)
            out[k] += field
        out[k] /= np.sqrt(np.mean(out[k] ** 2)) + 1e-12
    return out


# The built-in world draws only the first ACTIVE[g] columns of each basis (the named, clearly visible ones); the
# remaining columns are small random fields that keep the file's BFM widths (80 / 64 / 80) and stay available to
# callers who set them, like the tail of a PCA model that a truncated prior leaves at zero.
ACTIVE: dict[str, int] = {"id": 5, "exp": 4, "tex": 3}
# Vertex grid of the built-in world's model: 33 x 33 vertices resolve a 32-64 px face and rasterize 3x faster than
# the default 65 x 65 (which tests keep for a BFM-like vertex count).
WORLD_GRID = 33


def _identity_basis(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Identity displacement fields [V, 3, 80] in dm per unit coefficient ("one standard deviation").

    The first ACTIVE["id"] move outlines by ~0.15-0.2 dm per unit, i.e. 2-3 px at 32 px (1 dm = 14.5 px there
    at the release's camera) and 15-20 px at 224: face width, face length, nose, jaw, eye spacing; then chin length
    (not varied by the world: the chin sits at the lower image edge, where ty and face length push it out), cheeks,
    brow height, ...
    """
    zero = np.zeros_like(x)
    nose = _gauss(x, y, 0, -0.02, 0.1, 0.2)
    nose_w = _gauss(x, y, 0, -0.05, 0.14, 0.2)  # wider window for the in-plane part: a gentler gradient
    jaw = _sigmoid((-0.3 - y) / 0.1)
    eyes = _sym_gauss(x, y, 0.31, 0.29, 0.16, 0.12)
    cheeks = _sym_gauss(x, y, 0.5, -0.15, 0.15, 0.2)
    named = [
        np.stack([0.25 * x, zero, zero], 1),  # face width
        np.stack([zero, 0.2 * (y - 0.05), zero], 1),  # face length
        # nose size: wider, longer (the nostrils move down, the lips stay), more prominent
        np.stack([0.5 * x * nose_w, -0.12 * nose_w * _sigmoid((0.1 - y) / 0.08) * _sigmoid((y + 0.25) / 0.07),
                  0.35 * nose], 1),
        np.stack([0.33 * x * jaw, zero, zero], 1),  # jaw width
        np.stack([0.2 * np.sign(x) * eyes, zero, zero], 1),  # eye spacing
        np.stack([zero, -0.2 * jaw * _sigmoid((-0.55 - y) / 0.08), 0.05 * _gauss(x, y, 0, -0.8, 0.2, 0.15)], 1),
        # ^ chin length
        np.stack([0.12 * np.sign(x) * cheeks, zero, 0.05 * cheeks], 1),  # cheek fullness
        np.stack([zero, 0.1 * _gauss(x, y, 0, 0.45, 0.5, 0.08), 0.02 * _gauss(x, y, 0, 0.44, 0.4, 0.06)], 1),  # brows
    ]
    rand = _random_fields(rng, x, y, 80 - len(named), 3, True, (0, 0), 0.4, (0.15, 0.45))
    amps = 0.03 * (1 + np.arange(rand.shape[0])) ** -0.7
    basis = np.concatenate([np.stack(named), rand * amps[:, None, None]], axis=0)  # [80, V, 3]
    return basis.transpose(1, 2, 0)


def _expression_basis(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Expression displacement fields [V, 3, 64] in dm per unit coefficient.

    The first ACTIVE["exp"]: mouth open (the jaw drops 0.25 dm = 3.6 px at 32 px), smile, eyes closed (nearly shut
    at 1.6, wider open below 0), brows raised (0.15 dm per unit, eyes left in place); then frown, pucker, ...
    """
    zero = np.zeros_like(x)
    # Jaw drop: everything below the mouth line moves down/back; the mouth-line vertices move half way, which
    # opens a dark gap (their colour is the inner-mouth colour).
    below = _sigmoid((_MOUTH_Y - y) / 0.012) * np.exp(-0.5 * (x / 0.55) ** 4)
    corners = _sym_gauss(x, y, 0.25, _MOUTH_Y, 0.09, 0.08)
    side = np.sign(x)
    blink_dy = np.zeros_like(x)
    for cx, cy in _EYE_CENTRES:
        # Closing: the eye (lids and eyeball) collapses onto the lid line just below the eye centre, nearly shut at
        # 1.6 (a factor 1 - c / 1.6 on the height at the lid line); the skin above and below stretches to cover it.
        # Negative coefficients open the eyes wider.
        # The window is a Gaussian in the distance d to the lid line: d * exp(-d^2 / 2 s^2) has slope >= -0.45, so
        # opening the eyes wider (c < 0) stretches the skin around them instead of folding the eye over the brows
        # (a fold would need c < -1.6 / 0.45 = -3.6). Past c = 1.6 the eye would turn inside out; the built-in world
        # clips it there (dataprep.synthetic_scenes.EYES_CLOSED_MAX).
        lid = y - (cy - 0.02)
        blink_dy += -lid * np.exp(-0.5 * (lid / 0.12) ** 2) * np.exp(-0.5 * ((x - cx) / 0.2) ** 4) / 1.6
    # Brow raise: 0 up to the upper eyelid, the whole amount from the brow line up, fading out toward the top of the
    # head. The eyes do not move with the brows, which would make raised brows look like wide-open eyes.
    brows = np.interp(y, [0.37, 0.43, 1.1], [0.0, 1.0, 0.0]) * np.exp(-0.5 * (x / 0.5) ** 4)
    inner_brows = _sym_gauss(x, y, 0.17, 0.44, 0.1, 0.07)
    lips = _gauss(x, y, 0, _MOUTH_Y, 0.25, 0.09)
    cheeks = _sym_gauss(x, y, 0.36, -0.2, 0.12, 0.12)
    named = [
        np.stack([zero, -0.25 * below, -0.05 * below], 1),  # mouth open
        np.stack([0.1 * side * corners, 0.2 * corners + 0.03 * cheeks, 0.03 * cheeks], 1),  # smile
        np.stack([zero, blink_dy, zero], 1),  # eyes closed
        np.stack([zero, 0.15 * brows, zero], 1),  # brows raised (the world draws c >= 0)
        np.stack([-0.07 * side * inner_brows, -0.1 * inner_brows, zero], 1),  # frown
        np.stack([-0.4 * x * lips, zero, 0.05 * lips], 1),  # pucker
        np.stack([0.03 * side * corners, -0.01 * corners, zero], 1),  # mouth stretch
        np.stack([0.04 * below, zero, zero], 1),  # jaw sideways
        np.stack([zero, zero, 0.04 * cheeks], 1),  # cheek puff
        np.stack([zero, 0.04 * _gauss(x, y, 0.25, _MOUTH_Y, 0.08, 0.07), zero], 1),  # one-sided smile
    ]
    rand_mouth = _random_fields(rng, x, y, 30, 3, False, (0, _MOUTH_Y), 0.12, (0.06, 0.15))
    rand_eyes = _random_fields(rng, x, y, 64 - len(named) - 30, 3, False, (0, 0.3), 0.25, (0.06, 0.15))
    rand = np.concatenate([rand_mouth, rand_eyes], axis=0)
    amps = 0.008 * (1 + np.arange(rand.shape[0])) ** -0.5
    basis = np.concatenate([np.stack(named), rand * amps[:, None, None]], axis=0)
    return basis.transpose(1, 2, 0)


def _albedo_basis(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, regions: dict[str, np.ndarray]) -> np.ndarray:
    """Albedo fields [V, 3, 80] on the 0-255 scale per unit coefficient.

    The first ACTIVE["tex"]: skin tone (pale pink <-> brown: darker AND more saturated, so it is not a change of
    light intensity), redness vs yellowness, lip colour; then brow darkness, blush, ...
    """
    outer = lambda w, rgb: np.outer(w, rgb)
    not_eyes = 1 - regions["eyes"]
    named = [
        outer(not_eyes * (1 - regions["brows"]), [-40, -50, -55]),  # skin tone: lighter / darker
        outer(regions["skin"], [24, -8, -24]),  # redness vs yellowness
        outer(regions["lips"], [30, -25, -15]),  # lip colour
        outer(regions["brows"], [-40, -32, -25]),  # brow darkness
        outer(regions["cheeks"], [30, -15, -10]),  # blush
        outer(regions["skin"], [6, 6, -12]),  # yellowness
        outer(regions["iris"], [-25, 10, 45]),  # iris brown <-> blue
    ]
    rand = _random_fields(rng, x, y, 80 - len(named), 3, True, (0, 0), 0.45, (0.1, 0.4))
    # Mostly luminance along the skin hue plus a little chroma, so random albedos stay skin-like.
    to_skin = np.outer(np.full(3, 1 / 3), [1.0, 0.85, 0.75]) + 0.25 * np.eye(3)
    rand = rand @ to_skin
    amps = 5.0 * (1 + np.arange(rand.shape[0])) ** -0.4
    basis = np.concatenate([np.stack(named), rand * amps[:, None, None]], axis=0)
    return basis.transpose(1, 2, 0)


def _point_buf(tris: np.ndarray, num_v: int, width: int = 8) -> np.ndarray:
    """For each vertex the ids of its (<= 8) triangles, padded with F; 0-based [V, 8]."""
    buf = np.full((num_v, width), tris.shape[0], dtype=np.int64)
    fill = np.zeros(num_v, dtype=np.int64)
    for f, tri in enumerate(tris):
        for vid in tri:
            buf[vid, fill[vid]] = f
            fill[vid] += 1
    return buf


def make_synthetic_model(
    seed: int = 0, grid: int = 65, offset: tuple[float, float, float] = (0.05, 0.3, 0.6)
) -> dict[str, np.ndarray]:
    """Synthetic face model as a dict in the `BFM_model_front.mat` layout (V = grid^2 vertices, 1-based indices).

    An odd `grid` puts a vertex column on the symmetry plane x = 0 (nose tip, chin and lip-centre keypoints).

    Keys/dtypes as the official file: meanshape [1, 3V] f32 (dm, NOT recentred: shifted by `offset`), idBase
    [3V, 80] f32, exBase [3V, 64] f64, meantex [1, 3V] f32 (0-255), texBase [3V, 80] f32, tri [F, 3] f32, point_buf
    [V, 8] f32 (padding F + 1), tri_mask2 [F', 3] f32 (indices into frontmask2_idx), keypoints [1, 68] f32,
    frontmask2_idx [K, 1] f32, skinmask [1, V] f32. Mean geometry and colour are fixed; `seed` drives the random
    tail of every basis, so the same seed always gives the same arrays.
    """
    rng = np.random.default_rng(seed)
    x, y, tris = _make_grid(grid)
    z = _height(x, y)
    num_v = x.size

    # Keypoints: nearest vertex to each designed landmark position (mesh is fine enough for distinct ids).
    d2 = (x[None, :] - LANDMARKS_68[:, 0:1]) ** 2 + (y[None, :] - LANDMARKS_68[:, 1:2]) ** 2
    keypoints = np.argmin(d2, axis=1)

    mean_shape = np.stack([x, y, z], axis=1) + np.asarray(offset)
    id_basis = _identity_basis(rng, x, y, z).reshape(3 * num_v, 80)  # rows x,y,z interleaved per vertex
    exp_basis = _expression_basis(rng, x, y).reshape(3 * num_v, 64)
    mean_tex, regions = _mean_albedo(x, y)
    tex_basis = _albedo_basis(rng, x, y, regions).reshape(3 * num_v, 80)

    # Training regions: the inner face (away from the mask border) and the skin without eyes / brows / lips.
    r_mask = (x / 0.86) ** 2 + (y / 1.07) ** 2
    front = np.flatnonzero(r_mask < 0.7)
    in_front = np.zeros(num_v, dtype=bool)
    in_front[front] = True
    front_tris = tris[in_front[tris].all(axis=1)]
    position = np.full(num_v, -1, dtype=np.int64)
    position[front] = np.arange(front.size)
    skin = ((regions["skin"] > 0.9) & in_front).astype(np.float32)

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    return {
        "meanshape": f32(mean_shape.reshape(1, -1)),
        "idBase": f32(id_basis),
        "exBase": np.ascontiguousarray(exp_basis, dtype=np.float64),  # float64 like the official conversion
        "meantex": f32(mean_tex.reshape(1, -1)),
        "texBase": f32(tex_basis),
        "tri": f32(tris + 1),
        "point_buf": f32(_point_buf(tris, num_v) + 1),
        "tri_mask2": f32(position[front_tris] + 1),
        "keypoints": f32(keypoints.reshape(1, -1) + 1),
        "frontmask2_idx": f32(front.reshape(-1, 1) + 1),
        "skinmask": f32(skin.reshape(1, -1)),
    }


def write_synthetic_mat(path: str | os.PathLike, seed: int = 0, **kwargs: object) -> str:
    """Write `make_synthetic_model(seed, **kwargs)` to `path` with scipy.io.savemat (MATLAB v5); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    scipy.io.savemat(path, make_synthetic_model(seed=seed, **kwargs))  # type: ignore[arg-type]
    return path
