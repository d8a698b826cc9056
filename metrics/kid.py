"""Kernel Inception Distance (KID, Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

k(x, y) = (x . y / d + 1)^3 on d-dim Inception features. Protocol for `kid50k_full` (stylegan2-ada): 50k
generated vs up to 1M real features, MMD^2 averaged over 100 random subsets of m = min(n_real, n_gen, 1000).

Memory: features are kept as float32 (50k x 2048 x 4 B = 400 MB generated, 70k real = 570 MB for FFHQ), on rank
0 only; float64 copies are made per subset (2 x 1000 x 2048 x 8 B = 33 MB), never of the whole sets.
"""

from __future__ import annotations

import numpy as np

from metrics.context import MetricContext, broadcast_scalar, current_rank
from metrics.feature_stats import compute_generator_stats, compute_real_stats


def kernel_inception_distance(
    real_features: np.ndarray,
    gen_features: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Mean unbiased MMD^2 over random subsets; features [n, d] (real) and [m, d] (generated), float64 math.

    Per subset of size s (x = generated, y = real, drawn without replacement):
    MMD^2 = sum_{i != j} k(x_i, x_j) / (s (s-1)) + sum_{i != j} k(y_i, y_j) / (s (s-1)) - 2 sum_{i,j} k(x_i, y_j) / s^2.
    """
    real, gen = np.asarray(real_features), np.asarray(gen_features)
    d = real.shape[1]
    s = min(len(real), len(gen), max_subset_size)
    if s < 2:
        raise ValueError(f"KID needs at least 2 samples per set, have {len(real)} real and {len(gen)} generated")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(len(gen), s, replace=False)].astype(np.float64)
        y = real[rng.choice(len(real), s, replace=False)].astype(np.float64)
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (s * (s - 1))
        total += within - 2 * k_xy.sum() / (s * s)
    return float(total / num_subsets)


def compute_kid(
    ctx: MetricContext,
    num_gen: int,
    max_real: int | None = 1_000_000,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
) -> dict[str, float]:
    """KID of `num_gen` generated images vs up to `max_real` real images; returns {"kid": value} on every rank.

    The features are gathered on rank 0, which computes the value; the other ranks receive it (collective).
    """
    extractor = ctx.extractor()
    real = compute_real_stats(ctx, extractor, max_items=max_real, capture_all=True)
    gen = compute_generator_stats(ctx, extractor, num_gen, capture_all=True)
    value = None
    if current_rank() == 0:
        value = kernel_inception_distance(real.features(), gen.features(), num_subsets, max_subset_size, ctx.seed)
    return {"kid": broadcast_scalar(value, ctx.device)}
