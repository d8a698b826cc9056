"""5-landmark alignment: POS fit, canonical framing, image/landmark agreement, resolution independence, release mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deep3drecon.align import (
    TEMPLATE_5,
    align_face,
    align_params,
    estimate_similarity,
    inverse_transform_landmarks,
    landmarks_68_to_5,
    pos_fit,
    transform_landmarks,
)
from torch_utils.errors import UserError


def face_landmarks(scale: float, center: tuple[float, float]) -> np.ndarray:
    """Template seen frontally: y-down pixels of s * (X, -Y) + centre (an exact similarity, no rotation)."""
    return np.stack([center[0] + scale * TEMPLATE_5[:, 0], center[1] - scale * TEMPLATE_5[:, 1]], axis=1)


def blob_image(points: np.ndarray, size: tuple[int, int], sigma: float = 2.5) -> Image.Image:
    """Grey gradient background with a bright Gaussian blob centred on each y-down point (pixel-centre coords)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 40 + 30 * xx / w + 20 * yy / h
    for x, y in points:
        img = img + 180 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    rgb = np.stack([img, 0.8 * img, 0.6 * img], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))


def blob_centroid(image: Image.Image, guess: np.ndarray, radius: int = 6) -> np.ndarray:
    """Background-subtracted intensity centroid of the blob near `guess` (y-down pixel-centre coords)."""
    arr = np.asarray(image, dtype=np.float64)[..., 0]
    x0, y0 = int(round(guess[0])), int(round(guess[1]))
    win = arr[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    win = np.clip(win - np.percentile(win, 30), 0, None)
    yy, xx = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_68_to_5_uses_release_indices() -> None:
    lm68 = np.random.default_rng(0).normal(size=(68, 2)) * 50
    one = lambda i: lm68[i - 1]  # the release's 1-based definition: mean(37, 40), mean(43, 46), 31, 49, 55
    expected = np.stack([(one(37) + one(40)) / 2, (one(43) + one(46)) / 2, one(31), one(49), one(55)])
    np.testing.assert_allclose(landmarks_68_to_5(lm68), expected)
    batch = torch.from_numpy(np.stack([lm68, lm68 + 1]))
    np.testing.assert_allclose(landmarks_68_to_5(batch)[1].numpy(), expected + 1)


def test_pos_fit_recovers_scale_and_translation() -> None:
    for scale, t in ((120.0, (250.0, 300.0)), (37.5, (-10.0, 8.0))):
        pts = scale * TEMPLATE_5[:, :2] + np.array(t)  # y-up, exact orthographic projection
        t_fit, s_fit = pos_fit(pts)
        assert t_fit.shape == (2,) and isinstance(s_fit, float)
        np.testing.assert_allclose(t_fit, t, atol=1e-9)
        np.testing.assert_allclose(s_fit, scale, rtol=1e-12)
    # In-plane rotation keeps the scale (POS averages the two row norms).
    a = 0.3
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    np.testing.assert_allclose(pos_fit(80 * TEMPLATE_5[:, :2] @ rot.T)[1], 80, rtol=1e-12)


def test_y_flip_is_handled_internally() -> None:
    lm = face_landmarks(90.0, (140.0, 170.0)) + np.random.default_rng(1).normal(size=(5, 2))
    center, scale = estimate_similarity(lm, image_height=300)
    # POS is equivariant under y -> H - 1 - y, so a direct fit in y-down (template y negated) agrees.
    t_down, s_down = pos_fit(lm, TEMPLATE_5 * np.array([1, -1, 1]))
    np.testing.assert_allclose(center, t_down, atol=1e-9)
    np.testing.assert_allclose(scale, s_down, rtol=1e-12)


@pytest.mark.parametrize("size", [224, 256])
def test_known_similarity_maps_to_canonical_positions(size: int) -> None:
    lm = face_landmarks(scale=150.0, center=(201.3, 187.7))
    result = align_face(blob_image(lm, (400, 380)), lm, size=size)
    # Template point (X, Y) lands at crop centre + 102 * size / 224 * (X, -Y) (edge coords; -0.5 for pixel centres).
    k = 102 * size / 224
    canonical = np.stack([size / 2 + k * TEMPLATE_5[:, 0], size / 2 - k * TEMPLATE_5[:, 1]], axis=1) - 0.5
    np.testing.assert_allclose(result.landmarks, canonical, atol=1e-9)
    assert result.image.size == (size, size)
    np.testing.assert_allclose(result.params.scale, k / 150.0)


@pytest.mark.parametrize("exact", [True, False])
def test_image_content_follows_landmarks(exact: bool) -> None:
    rng = np.random.default_rng(2)
    lm = face_landmarks(scale=170.0, center=(260.0, 240.0)) + rng.normal(scale=4, size=(5, 2))
    result = align_face(blob_image(lm, (520, 480), sigma=4.0), lm, size=224, exact=exact)
    for predicted in result.landmarks:
        np.testing.assert_allclose(blob_centroid(result.image, predicted), predicted, atol=0.15)
    back = inverse_transform_landmarks(result.landmarks, result.params)
    np.testing.assert_allclose(back, lm, atol=1e-9)


def test_same_framing_at_224_and_256() -> None:
    rng = np.random.default_rng(3)
    lm = face_landmarks(scale=130.0, center=(180.0, 200.0)) + rng.normal(scale=3, size=(5, 2))
    image = blob_image(lm, (360, 400), sigma=5.0)
    a224, a256 = align_face(image, lm, size=224), align_face(image, lm, size=256)
    # Continuous (edge) coordinates scale by 256 / 224 exactly.
    np.testing.assert_allclose(a256.landmarks + 0.5, (a224.landmarks + 0.5) * 256 / 224, atol=1e-9)
    np.testing.assert_allclose(np.array(a256.params.box), np.array(a224.params.box), atol=1e-9)
    # The 256 crop resized to 224 is the 224 crop up to resampling differences.
    down = np.asarray(a256.image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(down - np.asarray(a224.image, dtype=np.float64)).mean() < 1.0


def release_resize_n_crop(image: Image.Image, lm5_down: np.ndarray, size: int, rescale: float) -> Image.Image:
    """The release's align_img / resize_n_crop_img written from its published formulas (y-up, int truncation)."""
    w0, h0 = image.size
    lm = np.stack([lm5_down[:, 0], h0 - 1 - lm5_down[:, 1]], axis=1)
    # POS from the release's 10 x 8 system, in the row order of its own code (x rows first, then y rows).
    a = np.zeros((10, 8))
    a[:5, 0:3], a[:5, 3], a[5:, 4:7], a[5:, 7] = TEMPLATE_5, 1, TEMPLATE_5, 1
    k = np.linalg.lstsq(a, np.concatenate([lm[:, 0], lm[:, 1]]), rcond=None)[0]
    s = rescale / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    tx, ty = k[3], k[7]
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - size / 2 + (tx - w0 / 2) * s)
    up = int(h / 2 - size / 2 + (h0 / 2 - ty) * s)
    return image.resize((w, h), Image.Resampling.BICUBIC).crop((left, up, left + size, up + size))


def test_release_mode_reproduces_release_pixels() -> None:
    rng = np.random.default_rng(4)
    lm = face_landmarks(scale=110.0, center=(150.0, 175.0)) + rng.normal(scale=5, size=(5, 2))
    image = blob_image(lm, (300, 330))
    result = align_face(image, lm, size=224, exact=False)
    expected = release_resize_n_crop(image, lm, 224, 102.0)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(expected))
    trans = result.params.release_trans_params
    np.testing.assert_allclose(trans[:2], [300, 330])
    # Exact mode frames the same face up to the release's rounding: int() of the resized size (scale error up to
    # one pixel across the image) and of the crop offset (up to one pixel).
    exact = align_face(image, lm, size=224, exact=True)
    assert np.abs(exact.landmarks - result.landmarks).max() < 2.0


def test_black_padding_outside_the_image() -> None:
    lm = face_landmarks(scale=100.0, center=(40.0, 45.0))  # face near the top-left corner: crop leaves the image
    image = Image.new("RGB", (200, 220), (200, 150, 100))
    for exact in (True, False):
        crop = np.asarray(align_face(image, lm, size=224, exact=exact).image)
        assert crop[:20, :20].max() == 0 and crop[-20:, -20:].min() > 90  # black outside, image content inside
    # Edge replication before resampling: no dark fringe along the image border in exact mode.
    crop = np.asarray(align_face(image, lm, size=224).image).astype(int)
    inside = crop[crop.sum(-1) > 0]
    assert np.abs(inside - np.array([200, 150, 100])).max() <= 1


def test_transform_landmarks_accepts_68_points() -> None:
    rng = np.random.default_rng(5)
    lm68 = rng.uniform(100, 200, size=(68, 2))
    result = align_face(Image.new("RGB", (300, 300)), lm68, size=128)
    assert result.landmarks.shape == (68, 2)
    params = align_params(landmarks_68_to_5(lm68), (300, 300), size=128)
    np.testing.assert_allclose(result.landmarks, transform_landmarks(lm68, params))


def test_bad_landmarks_raise_user_error() -> None:
    with pytest.raises(UserError):
        align_face(Image.new("RGB", (64, 64)), np.zeros((4, 2)))
    with pytest.raises(UserError):
        align_face(Image.new("RGB", (64, 64)), np.full((5, 2), 10.0))  # degenerate: zero scale


def test_synthetic_face_render_is_already_aligned() -> None:
    # The release's camera (101.5 px per dm at depth 10) and the template (102 px per unit) agree, so a frontal mean
    # face projected by the face model is (almost) a fixed point of the alignment: this ties the two y-down
    # conventions together (a y flip anywhere would move the centre by tens of pixels).
    from deep3drecon.face_model import FaceModel
    from deep3drecon.synthetic import make_synthetic_model

    model = FaceModel(make_synthetic_model(seed=0))
    lm68 = model.compute(torch.zeros(1, 257)).landmarks[0].numpy()
    params = align_params(lm68, (224, 224), size=224)
    np.testing.assert_allclose(params.scale, 1.0, atol=0.02)
    np.testing.assert_allclose(params.center, (111.5, 111.5), atol=1.0)
