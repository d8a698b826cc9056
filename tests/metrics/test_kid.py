"""KID against a naive double-loop unbiased MMD^2 with the same subsets."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.kid import compute_kid, kernel_inception_distance


def _naive_kid(real, gen, num_subsets, subset_size, seed):
    d = real.shape[1]
    k = lambda a, b: (sum(a[t] * b[t] for t in range(d)) / d + 1) ** 3
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = gen[rng.choice(len(gen), subset_size, replace=False)]
        y = real[rng.choice(len(real), subset_size, replace=False)]
        m = subset_size
        kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        values.append(kxx + kyy - 2 * kxy)
    return float(np.mean(values))


def test_kid_matches_naive_unbiased_mmd():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((12, 5))
    gen = rng.standard_normal((10, 5)) + 0.7
    expected = _naive_kid(real, gen, num_subsets=3, subset_size=6, seed=5)
    assert kernel_inception_distance(real, gen, num_subsets=3, max_subset_size=6, seed=5) == pytest.approx(
        expected, rel=1e-10
    )


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((600, 8))
    same = rng.standard_normal((600, 8))
    shifted = rng.standard_normal((600, 8)) + 1.0
    kid_same = kernel_inception_distance(real, same, num_subsets=10, max_subset_size=200)
    kid_shift = kernel_inception_distance(real, shifted, num_subsets=10, max_subset_size=200)
    assert abs(kid_same) < 0.02 < kid_shift


def test_kid_subset_size_is_capped_by_the_smaller_set():
    rng = np.random.default_rng(2)
    real, gen = rng.standard_normal((5, 3)), rng.standard_normal((9, 3))
    expected = _naive_kid(real, gen, num_subsets=2, subset_size=5, seed=0)
    assert kernel_inception_distance(real, gen, num_subsets=2, max_subset_size=100) == pytest.approx(
        expected, rel=1e-10
    )


def test_compute_kid_runs_on_the_stand_in_pipeline(make_ctx):
    result = compute_kid(make_ctx(num_images=20), num_gen=16, max_real=20, num_subsets=4, max_subset_size=8)
    assert set(result) == {"kid"} and np.isfinite(result["kid"])
