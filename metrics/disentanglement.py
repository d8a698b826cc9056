"""Disentanglement Score (DS) of DiscoFaceGAN, as specified in the paper's section 3.2 (eq. 11).

For each factor u_i in {id, exp, illum, angle}: draw K sets (default 1000); in each set every factor except u_i
comes from one real coefficient vector (and z is fixed), u_i from N (default 10) other real vectors; generate the
N images, re-estimate p_hat = FR(x) and measure, for every factor u_j, the spread of the N estimates:

    s_j^(i)[k]  = (1/N) sum_n || u_j(p_hat[k, n]) - (1/N) sum_n' u_j(p_hat[k, n']) ||_2   (mean L2 to set mean)
    sigma_j^(i) = ((1/K) sum_k s_j^(i)[k]) / || u_j(p_mean) ||_2     (p_mean: mean of the dataset's coefficients)
    DS(u_i)     = prod_{j != i} sigma_i^(i) / (sigma_j^(i) + eps)                                     (eq. 11)

Higher is better: varying u_i should move only u_i. Choices (see reference notes, section 1): identity is the
160-d shape+texture block (DFG's factor definition), illumination = the 27 SH coefficients, angle = the 3 Euler
angles (no translation); fixed and varied factors are empirical dataset vectors (the paper samples real p);
eps = 1e-8 as cGOF. Images are quantised to uint8 before FR, as the published protocol scores saved PNGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from metrics.context import (
    COEFF_SLICES,
    NUM_COEFFS,
    MetricContext,
    all_reduce_sum,
    batches,
    rank_indices,
    run_generator,
)
from metrics.features import images_to_uint8
from torch_utils.errors import UserError

# Factor -> coefficient groups of p (COEFF_SLICES names); the order fixes the per-factor RNG streams.
DS_FACTORS: dict[str, tuple[str, ...]] = {
    "id": ("id", "tex"),
    "exp": ("exp",),
    "illum": ("gamma",),
    "angle": ("angle",),
}


def factor_columns(factor: str, factors: Mapping[str, Sequence[str]] = DS_FACTORS) -> np.ndarray:
    """Column indices of p [.., 257] that make up `factor` (e.g. id -> 0:80 and 144:224)."""
    return np.concatenate([np.arange(NUM_COEFFS)[COEFF_SLICES[group]] for group in factors[factor]])


def set_spreads(u: np.ndarray) -> np.ndarray:
    """Mean L2 distance to the set mean: u [K, N, D] -> [K] float64."""
    u = np.asarray(u, np.float64)
    return np.linalg.norm(u - u.mean(axis=1, keepdims=True), axis=-1).mean(axis=1)


def scores_from_spreads(
    mean_spreads: np.ndarray, norms: np.ndarray, names: Sequence[str], eps: float = 1e-8
) -> dict[str, float]:
    """DS from set-averaged spreads [F, F] (row = varied factor i, column = measured factor j) and norms [F].

    Returns ds_<i> for every factor and sigma_<i>_<j> (normalised spread of j when i varies) for diagnostics.
    """
    sigma = np.asarray(mean_spreads, np.float64) / np.asarray(norms, np.float64)[None, :]
    result: dict[str, float] = {}
    for i, name_i in enumerate(names):
        others = [j for j in range(len(names)) if j != i]
        result[f"ds_{name_i}"] = float(np.prod([sigma[i, i] / (sigma[i, j] + eps) for j in others]))
    for i, name_i in enumerate(names):
        for j, name_j in enumerate(names):
            result[f"sigma_{name_i}_{name_j}"] = float(sigma[i, j])
    return result


def dataset_norms(p_bank: np.ndarray, factors: Mapping[str, Sequence[str]] = DS_FACTORS) -> np.ndarray:
    """|| u_j(mean of p_bank) ||_2 for every factor j: p_bank [M, 257] -> [F] float64 (the DS normaliser)."""
    p_mean = np.asarray(p_bank, np.float64).mean(axis=0)
    return np.array([np.linalg.norm(p_mean[factor_columns(f, factors)]) for f in factors])


def disentanglement_score(
    estimated: Mapping[str, np.ndarray],
    p_bank: np.ndarray,
    factors: Mapping[str, Sequence[str]] = DS_FACTORS,
    eps: float = 1e-8,
) -> dict[str, float]:
    """DS from re-estimated coefficients: estimated[i] = FR outputs [K, N, 257] of the sets where factor i varied.

    p_bank: dataset coefficients [M, 257] (only their mean is used, as the normaliser). Returns ds_<factor>
    and sigma_<varied>_<measured> floats (module docstring gives the formula).
    """
    names = list(factors)
    spreads = np.array(
        [[set_spreads(np.asarray(estimated[i])[..., factor_columns(j, factors)]).mean() for j in names] for i in names]
    )
    return scores_from_spreads(spreads, dataset_norms(p_bank, factors), names, eps)


def sample_ds_set(
    p_bank: np.ndarray,
    varied: str,
    set_index: int,
    samples_per_set: int,
    z_dim: int,
    seed: int = 0,
    factors: Mapping[str, Sequence[str]] = DS_FACTORS,
) -> tuple[np.ndarray, np.ndarray]:
    """One DS set: p [N, 257] (all factors but `varied` from one bank row; `varied` from N other rows), z [z_dim].

    The RNG is keyed by (seed, factor position, set index), so set k is the same for any batch size or GPU count.
    """
    rng = np.random.default_rng([seed, list(factors).index(varied), set_index])
    base = p_bank[rng.integers(len(p_bank))]
    donors = p_bank[rng.integers(len(p_bank), size=samples_per_set)]
    p = np.repeat(base[None].astype(np.float32), samples_per_set, axis=0)
    cols = factor_columns(varied, factors)
    p[:, cols] = donors[:, cols]
    z = rng.standard_normal(z_dim).astype(np.float32)
    return p, z


@torch.no_grad()
def accumulate_ds_spreads(
    ctx: MetricContext,
    num_sets: int,
    samples_per_set: int,
    quantize: bool = True,
    factors: Mapping[str, Sequence[str]] = DS_FACTORS,
) -> np.ndarray:
    """This rank's SUM over its sets of s_j^(i)[k]: [F, F] float64 (row = varied i, column = measured j).

    Ranks take interleaved set indices; summing the partial results over ranks gives the full-run sums.
    """
    ctx.require("G", "p_bank", "reconstructor")
    names = list(factors)
    columns = [factor_columns(j, factors) for j in names]
    sums = np.zeros((len(names), len(names)), dtype=np.float64)
    mine = rank_indices(num_sets, ctx.rank, ctx.num_gpus)
    sets_per_batch = max(1, ctx.batch_size // samples_per_set)
    total, done = len(mine) * len(names), 0
    for i, varied in enumerate(names):
        for chunk in batches(mine, sets_per_batch):
            drawn = [
                sample_ds_set(ctx.p_bank, varied, int(k), samples_per_set, ctx.G.z_dim, ctx.seed, factors)
                for k in chunk
            ]
            p = np.concatenate([p_set for p_set, _ in drawn])
            z = np.repeat(np.stack([z_set for _, z_set in drawn]), samples_per_set, axis=0)
            img = run_generator(ctx, z, p, noise_mode="const")  # z and noise fixed: only u_i varies in a set
            if quantize:
                img = images_to_uint8(img).float() / 127.5 - 1
            p_hat = ctx.reconstructor(img).double().cpu().numpy().reshape(len(chunk), samples_per_set, NUM_COEFFS)
            for j, cols in enumerate(columns):
                sums[i, j] += set_spreads(p_hat[..., cols]).sum()
            done += len(chunk)
            ctx.report(done, total)
    return sums


def compute_ds(
    ctx: MetricContext,
    num_sets: int = 1000,
    samples_per_set: int = 10,
    quantize: bool = True,
    factors: Mapping[str, Sequence[str]] = DS_FACTORS,
) -> dict[str, float]:
    """DS of ctx.G for every factor over `num_sets` x `samples_per_set` images per factor (paper: 1000 x 10)."""
    if ctx.G is not None and not getattr(ctx.G, "is_conditional", False):
        raise UserError("the disentanglement score needs a 3DMM-conditioned generator")
    if samples_per_set < 2:
        raise UserError("the disentanglement score needs at least 2 samples per set")
    sums = all_reduce_sum(accumulate_ds_spreads(ctx, num_sets, samples_per_set, quantize, factors), ctx.device)
    return scores_from_spreads(sums / num_sets, dataset_norms(ctx.p_bank, factors), list(factors))
