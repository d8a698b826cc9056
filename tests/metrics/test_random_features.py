"""Random-feature KID / density / coverage against transcribed formulas and naive loops; the network is pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics import random_features as rf
from metrics.random_features import (
    FEATURE_DIM,
    RandomCNNFeatures,
    density_coverage,
    random_cnn_weights,
    random_feature_scores,
    random_features,
    weights_checksum,
)
from torch_utils.errors import UserError

# SHA-256 of randcnn-v1's float32 weights for net_seed 0. If this changes, every published rKID / density /
# coverage value changes with it: bump the network's name ("randcnn-v2") instead of editing the pin.
CHECKSUM_SEED0 = "e2ad5a8f4c903836e8b4d796c870382da3ceb32be8cbbd6273916b35b5bf9c84"


def _images(n: int, size: int, seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 200, size=(n, 3, size, size)) + shift).astype(np.uint8)


def _transcribed_kid(real: np.ndarray, gen: np.ndarray, num_subsets: int, size: int, seed: int) -> float:
    """KID (Binkowski et al.): mean over subsets of the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    d = real.shape[1]
    rng = np.random.default_rng(seed)  # same subset draws as metrics.kid: generated first, then real
    values = []
    for _ in range(num_subsets):
        x = gen[rng.choice(len(gen), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        kernel = lambda a, b: (np.dot(a, b) / d + 1) ** 3
        kxx = sum(kernel(x[i], x[j]) for i in range(size) for j in range(size) if i != j)
        kyy = sum(kernel(y[i], y[j]) for i in range(size) for j in range(size) if i != j)
        kxy = sum(kernel(x[i], y[j]) for i in range(size) for j in range(size))
        values.append((kxx + kyy) / (size * (size - 1)) - 2 * kxy / size**2)
    return float(np.mean(values))


def _naive_density_coverage(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    dist = lambda a, b: float(np.sqrt(np.sum((a - b) ** 2)))
    radii = []
    for i in range(len(real)):
        others = sorted(dist(real[i], real[j]) for j in range(len(real)) if j != i)
        radii.append(others[k - 1])  # k-th nearest other real sample
    inside = sum(1 for y in fake for i, x in enumerate(real) if dist(y, x) < radii[i])
    covered = sum(1 for i, x in enumerate(real) if min(dist(y, x) for y in fake) < radii[i])
    return inside / (k * len(fake)), covered / len(real)


def test_rkid_is_the_kid_formula_on_the_random_features():
    reals, fakes = _images(14, 32, seed=0), _images(12, 32, seed=1, shift=40)
    scores = random_feature_scores(reals, fakes, seed=3, num_subsets=3, max_subset_size=8, batch_size=5)
    real_f, fake_f = random_features(reals), random_features(fakes)
    assert scores["rkid"] == pytest.approx(_transcribed_kid(real_f, fake_f, 3, 8, seed=3), rel=1e-6)
    assert scores["rkid"] > 0
    assert (scores["density"], scores["coverage"]) == pytest.approx(_naive_density_coverage(real_f, fake_f, 5))


@pytest.mark.parametrize("k", [1, 5])
def test_density_coverage_match_naive_loops(monkeypatch, k):
    monkeypatch.setattr(rf, "_DIST_ROWS", 7)  # several chunks of reals and fakes
    rng = np.random.default_rng(k)
    real = rng.standard_normal((40, 6))
    fake = np.concatenate([rng.standard_normal((20, 6)) * 0.7 + [1.5, 0, 0, 0, 0, 0], rng.standard_normal((15, 6)) + 3])
    density, coverage = _naive_density_coverage(real, fake, k)
    assert 0 < coverage < 1 and density > 0
    assert density_coverage(real, fake, k) == {"density": pytest.approx(density), "coverage": pytest.approx(coverage)}


def test_density_coverage_balls_are_open():
    real = np.arange(5.0)[:, None]  # lattice: every k=1 radius is exactly 1 (exact in float)
    fake = np.array([[2.0]])  # on real 2, and exactly on the borders of the balls of reals 1 and 3
    assert density_coverage(real, fake, k=1) == {"density": 1.0, "coverage": 0.2}


def test_density_coverage_separate_matching_and_dropped_modes():
    rng = np.random.default_rng(0)
    real, same = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    half = np.abs(rng.standard_normal((600, 8)))  # one orthant of the reals: 1/256 of the modes
    matched = density_coverage(real, same)
    dropped = density_coverage(real, half)
    assert 0.8 < matched["density"] < 1.2 and matched["coverage"] > 0.9
    assert dropped["coverage"] < 0.5 < matched["coverage"]
    with pytest.raises(UserError, match="k=5"):
        density_coverage(real[:5], same)


def test_network_is_pinned_deterministic_and_follows_its_documented_recipe():
    net = RandomCNNFeatures(0)
    assert weights_checksum(net) == CHECKSUM_SEED0
    assert weights_checksum(RandomCNNFeatures(0)) == CHECKSUM_SEED0
    assert weights_checksum(RandomCNNFeatures(1)) != CHECKSUM_SEED0
    # The documented recipe, written out for the first two layers: (2u - 1) sqrt(6 / fan_in), u ~ legacy MT19937.
    legacy = np.random.RandomState(0)
    first = (2 * legacy.random_sample((32, 3, 3, 3)) - 1) * np.sqrt(6 / 27)
    second = (2 * legacy.random_sample((32, 32, 3, 3)) - 1) * np.sqrt(6 / 288)
    np.testing.assert_array_equal(net.w0.numpy(), first.astype(np.float32))
    np.testing.assert_array_equal(net.w1.numpy(), second.astype(np.float32))
    shapes = [tuple(w.shape) for w in random_cnn_weights(0)]
    assert shapes[-1] == (256, 256, 3, 3) and len(shapes) == 8 and net.name == "randcnn-v1-s0-64px"

    images = _images(6, 64, seed=2)
    feats = random_features(images, net=net)
    assert feats.shape == (6, FEATURE_DIM) and feats.dtype == np.float64 and (feats >= 0).all()
    np.testing.assert_array_equal(random_features(images), feats)  # rebuilt net, same features
    np.testing.assert_allclose(random_features(torch.from_numpy(images), batch_size=4), feats, rtol=1e-5)
    assert not np.allclose(random_features(images, net_seed=1), feats)


def test_forward_pass_is_pinned_on_fixed_patterns():
    """Pins preprocessing, resize and architecture (the checksum pins only the weights); float32 tolerance."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(64), np.arange(64), indexing="ij")
    images = np.stack([(x * 4 + y * 2 + c * 50) % 256, (x * y + 90 * c) % 256]).astype(np.uint8)
    feats = random_features(images)
    np.testing.assert_allclose(feats.sum(axis=1), [272.7737953287, 192.0706622956], rtol=1e-4)
    np.testing.assert_allclose(
        feats[0, [0, 1, 2, 3, 1023]], [0.7254154682, 0.8961876035, 0.9972152114, 0.9516285658, 0.2878614664], rtol=1e-4
    )
    np.testing.assert_allclose(
        random_features(images[:, :, :48, :48]).sum(axis=1), [237.3483991545, 197.940139896], rtol=1e-4
    )
    c, y, x = np.meshgrid(np.arange(3), np.arange(128), np.arange(128), indexing="ij")
    large = ((x * 4 + y * 2 + c * 50) % 256).astype(np.uint8)[None]  # downsampled: the antialiasing matters
    np.testing.assert_allclose(random_features(large).sum(axis=1), [267.6616974378], rtol=1e-4)


def test_random_features_resize_and_reject_bad_input():
    images = _images(3, 64, seed=4)
    small = torch.from_numpy(images).float().reshape(3, 3, 32, 2, 32, 2).mean(dim=(3, 5)).round().to(torch.uint8)
    assert random_features(small).shape == (3, FEATURE_DIM)
    with pytest.raises(UserError, match="uint8"):
        random_features(images.astype(np.float32))


def test_scores_of_one_distribution_are_near_neutral_and_a_shift_is_seen():
    reals, same, shifted = _images(64, 32, seed=5), _images(64, 32, seed=6), _images(64, 32, seed=7, shift=50)
    matched = random_feature_scores(reals, same, num_subsets=10, max_subset_size=32)
    moved = random_feature_scores(reals, shifted, num_subsets=10, max_subset_size=32)
    assert abs(matched["rkid"]) < 0.1 * moved["rkid"]
    assert matched["coverage"] > 0.8 > moved["coverage"]
