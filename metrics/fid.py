"""Frechet Inception Distance (FID): generated vs real Inception-v3 pool3 statistics.

FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))   (Heusel et al. 2017; real part of the square root).
Protocol for `fid50k_full`: 50k generated images (labels from the dataset's coefficient bank, no truncation)
against every real image, no x-flips.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from metrics.context import MetricContext
from metrics.feature_stats import compute_generator_stats, compute_real_stats


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1 [D], sigma1 [D, D]) and N(mu2, sigma2); float64 throughout.

    Follows the reference implementations: sqrtm of the product, retry with eps * I added to both covariances
    if the root is not finite (singular product, as TTUR), and keep the real part (stylegan2-ada); a warning is
    issued when the discarded imaginary diagonal exceeds TTUR's 1e-3 tolerance.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        eps = 1e-6
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.abs(np.diagonal(covmean).imag).max()
        if max_imag > 1e-3:
            warnings.warn(
                f"FID: discarding imaginary part of sqrtm (max |imag| on diagonal {max_imag:.3g})", stacklevel=2
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def compute_fid(ctx: MetricContext, num_gen: int, max_real: int | None = None) -> dict[str, float]:
    """FID of `num_gen` generated images vs the dataset (all images, or a fixed random `max_real` subset).

    Returns {"fid": value}. Every rank computes the same value from the reduced statistics. Both passes are
    memoised in ctx.memo (shared with KID when both are asked in one evaluation).
    """
    extractor = ctx.extractor()
    mu_real, sigma_real = compute_real_stats(ctx, extractor, max_items=max_real).mean_cov()
    mu_gen, sigma_gen = compute_generator_stats(ctx, extractor, num_gen).mean_cov()
    return {"fid": frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real)}
