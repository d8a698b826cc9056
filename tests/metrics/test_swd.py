"""SWD against a naive transcription of the Progressive GAN protocol, scipy / explicit-loop pyramids, and behaviour.

The naive SWD below shares only the seeded draws (patch centres, directions) with metrics.swd; everything else
(pyramid via scipy.ndimage 'mirror' convolution, patch gathering in python loops, per-set normalisation in numpy,
per-direction explicit sorts, float64 throughout) is written out from the protocol in the reference notes, 1.2.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from metrics import swd as swd_module
from metrics.swd import (
    laplacian_pyramid,
    patch_centres,
    pyr_down,
    pyr_up,
    pyramid_level,
    random_directions,
    swd,
    swd_floor,
    swd_resolutions,
)
from torch_utils.errors import UserError

KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _scipy_pyr_down(x: np.ndarray) -> np.ndarray:
    return scipy.ndimage.convolve(x, KERNEL[None, None], mode="mirror")[:, :, ::2, ::2]


def _scipy_pyr_up(x: np.ndarray) -> np.ndarray:
    up = np.zeros(x.shape[:2] + (2 * x.shape[2], 2 * x.shape[3]))
    up[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(up, 4 * KERNEL[None, None], mode="mirror")


def _loop_blur(img: np.ndarray) -> np.ndarray:
    """5x5 binomial blur of one channel [H, W] with explicit loops; mirror index: -1 -> 1, H -> H - 2."""
    h, w = img.shape
    mirror = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    out[y, x] += KERNEL[dy + 2, dx + 2] * img[mirror(y + dy, h), mirror(x + dx, w)]
    return out


def _naive_swd(reals: np.ndarray, fakes: np.ndarray, seed: int, per_image: int) -> dict:
    sizes, s = [], reals.shape[-1]
    while s >= 16:
        sizes.append(s)
        s //= 2
    pyramids = []
    for images in (reals, fakes):
        pyr = [images.astype(np.float64)]
        for _ in range(1, len(sizes)):
            pyr.append(_scipy_pyr_down(pyr[-1]))
            pyr[-2] = pyr[-2] - _scipy_pyr_up(pyr[-1])
        pyramids.append(pyr)
    result = {}
    for level, size in enumerate(sizes):
        descs = []
        for stream, pyr in enumerate(pyramids):
            centres = patch_centres(seed, level, stream, len(reals), size, per_image)
            rows = []
            for i in range(len(reals)):
                for p in range(per_image):
                    y, x = centres[i, p]
                    assert 3 <= y <= size - 4 and 3 <= x <= size - 4
                    rows.append(pyr[level][i, :, y - 3 : y + 4, x - 3 : x + 4].reshape(-1))
            d = np.array(rows).reshape(len(rows), 3, 49)
            d = (d - d.mean(axis=(0, 2))[:, None]) / d.std(axis=(0, 2))[:, None]
            descs.append(d.reshape(len(rows), 147))
        dirs = random_directions(seed, level).astype(np.float64)
        repeats = []
        for r in range(dirs.shape[0]):
            dists = []
            for j in range(dirs.shape[2]):
                proj_a = np.array(sorted(descs[0] @ dirs[r, :, j]))
                proj_b = np.array(sorted(descs[1] @ dirs[r, :, j]))
                dists.append(np.mean(np.abs(proj_a - proj_b)))
            repeats.append(np.mean(dists))
        result[size] = 1e3 * np.mean(repeats)
    result["avg"] = np.mean([result[s] for s in sizes])
    return result


def _textured_images(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n, 3, size, size]: smooth random shapes plus fine texture, so every pyramid band carries signal."""
    rng = np.random.default_rng(seed)
    coarse = scipy.ndimage.gaussian_filter(rng.standard_normal((n, 3, size, size)), (0, 0, size / 8, size / 8))
    fine = rng.standard_normal((n, 3, size, size))
    img = 128 + 60 * coarse / coarse.std() + 25 * fine
    return img.clip(0, 255).round().astype(np.uint8)


def _blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    out = scipy.ndimage.gaussian_filter(images.astype(np.float64), (0, 0, sigma, sigma), mode="mirror")
    return out.round().clip(0, 255).astype(np.uint8)


def test_swd_matches_naive_protocol_transcription():
    reals = _textured_images(8, 64, seed=0)
    fakes = _blurred(_textured_images(8, 64, seed=1), 0.8)
    got = swd(reals, fakes, seed=3, nhoods_per_image=16, batch_size=3)
    expected = _naive_swd(reals, fakes, seed=3, per_image=16)
    assert list(got) == [64, 32, 16, "avg"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=2e-5), key


def test_pyramid_matches_scipy_mirror_convolution():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 3, 64, 64)).astype(np.float64)
    expected, g = [], images
    for _ in range(2):
        g_next = _scipy_pyr_down(g)
        expected.append(g - _scipy_pyr_up(g_next))
        g = g_next
    expected.append(g)
    got = laplacian_pyramid(torch.from_numpy(images).float(), 3)
    assert [tuple(lv.shape[-2:]) for lv in got] == [(64, 64), (32, 32), (16, 16)]
    for level, (lv, ref) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(lv.double().numpy(), ref, atol=2e-4)
        np.testing.assert_allclose(pyramid_level(torch.from_numpy(images).float(), level, 3).numpy(), lv.numpy())


def test_pyramid_border_is_mirror_not_edge_repeating_reflect():
    img = np.random.default_rng(1).uniform(0, 255, size=(16, 16))
    x = torch.from_numpy(img)[None, None].float()
    np.testing.assert_allclose(pyr_down(x)[0, 0].numpy(), _loop_blur(img)[::2, ::2], atol=1e-4)
    up = np.zeros((32, 32))
    up[::2, ::2] = img
    np.testing.assert_allclose(pyr_up(x)[0, 0].numpy(), 4 * _loop_blur(up), atol=1e-4)
    # scipy's 'reflect' repeats the edge pixel (c b a | a b c): a different filter at the border.
    repeated = scipy.ndimage.convolve(img, KERNEL, mode="reflect")[::2, ::2]
    assert np.abs(pyr_down(x)[0, 0].numpy() - repeated)[0].max() > 1e-2


def test_swd_is_seeded_and_independent_of_batch_size_and_input_type():
    reals, fakes = _textured_images(6, 32, seed=2), _textured_images(6, 32, seed=3)
    first = swd(reals, fakes, seed=5, nhoods_per_image=32)
    assert swd(reals, fakes, seed=5, nhoods_per_image=32) == first
    other = swd(reals, fakes, seed=6, nhoods_per_image=32)
    assert other[32] != first[32]
    batched = swd(torch.from_numpy(reals), torch.from_numpy(fakes), seed=5, nhoods_per_image=32, batch_size=4)
    assert batched == pytest.approx(first, rel=1e-6)


def test_swd_of_one_set_shrinks_with_count_and_grows_monotonically_with_blur():
    images = _textured_images(192, 32, seed=4)
    small = swd(images[:16], images[:16], nhoods_per_image=32)["avg"]
    same = swd(images, images, nhoods_per_image=32)  # differs from 0 only by the patch draws
    blurs = [swd(images, _blurred(images, sigma), nhoods_per_image=32) for sigma in (1.0, 2.0, 4.0)]
    assert same["avg"] < 0.5 * small
    for key in (32, 16, "avg"):
        # At 16 px a sigma-1 blur is within the sampling noise of the floor, so the floor is compared at 32 and avg.
        values = ([same[key]] if key != 16 else []) + [b[key] for b in blurs]
        assert values == sorted(values) and len(set(values)) == len(values), (key, values)
    assert blurs[0]["avg"] > 2 * same["avg"]


def test_swd_floor_scores_two_disjoint_draws(monkeypatch):
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 16, 16), np.uint8)
    calls = []
    monkeypatch.setattr(swd_module, "swd", lambda a, b, seed, **kw: calls.append((a, b, seed, kw)) or {"avg": 0.0})
    swd_floor(images, 4, seed=7, nhoods_per_image=8)
    ((a, b, seed, kw),) = calls
    ids_a, ids_b = set(a[:, 0, 0, 0].tolist()), set(b[:, 0, 0, 0].tolist())
    assert len(ids_a) == len(ids_b) == 4 and not ids_a & ids_b and (seed, kw) == (7, {"nhoods_per_image": 8})
    with pytest.raises(UserError, match="distinct real images"):
        swd_floor(images, 6)


def test_swd_resolutions_and_input_errors():
    assert swd_resolutions(64) == [64, 32, 16]
    assert swd_resolutions(256) == [256, 128, 64, 32, 16]
    assert swd_resolutions(16) == [16] and swd_resolutions(50) == [50, 25]
    with pytest.raises(UserError, match="even"):
        swd_resolutions(66)
    images = np.zeros((4, 3, 16, 16), np.uint8)
    with pytest.raises(UserError, match="at least 16"):
        swd(np.zeros((4, 3, 8, 8), np.uint8), np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(UserError, match="equally many"):
        swd(images, images[:3])
    with pytest.raises(UserError, match="uint8"):
        swd(images.astype(np.float32), images)
    with pytest.raises(UserError, match="square RGB"):
        swd(images[:, :1], images[:, :1])
