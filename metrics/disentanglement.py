"""Disentanglement Score (DS): the generator-driven experiment behind every variant of `metrics.ds_variants`.

Protocol (paper section 3.2, after DiscoFaceGAN): for each varied factor u_i, K sets (default 1000). In set k,
every coefficient except u_i's comes from ONE real dataset vector, u_i from N (default 10) other real vectors;
z is drawn once per set and the generator's noise is its constant buffers (noise_mode="const"), so nothing but
u_i changes between the N images of a set. The images are quantised to uint8 (the published protocols score
saved PNGs), FR re-estimates p_hat, and the variant's spread of every measured factor u_j is summed over sets.
The sums are reduced over ranks and turned into sigma_j^(i) and DS(u_i) by `ds_variants.scores_from_spreads`.

Set k of factor i is a pure function of (seed, position of u_i in DS_FACTORS, k): the same for any batch size
or GPU count, and the same images for every variant that measures u_i.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.context import NUM_COEFFS, MetricContext, all_reduce_sum, batches, rank_indices, run_generator
from metrics.ds_variants import DS_FACTORS, DS_VARIANTS, DSVariant, group_columns, scores_from_spreads
from metrics.features import images_to_uint8
from torch_utils.errors import UserError


def sample_ds_set(
    p_bank: np.ndarray, varied: str, set_index: int, samples_per_set: int, z_dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One DS set: p [N, 257] (all factors but `varied` from one bank row; `varied` from N other rows), z [z_dim].

    `varied` names a DS_FACTORS entry; the RNG is keyed by (seed, its position in DS_FACTORS, set index).
    """
    rng = np.random.default_rng([seed, list(DS_FACTORS).index(varied), set_index])
    base = p_bank[rng.integers(len(p_bank))]
    donors = p_bank[rng.integers(len(p_bank), size=samples_per_set)]
    p = np.repeat(base[None].astype(np.float32), samples_per_set, axis=0)
    cols = group_columns(DS_FACTORS[varied])
    p[:, cols] = donors[:, cols]
    z = rng.standard_normal(z_dim).astype(np.float32)
    return p, z


@torch.no_grad()
def accumulate_ds_spreads(
    ctx: MetricContext,
    num_sets: int,
    samples_per_set: int,
    quantize: bool = True,
    variant: DSVariant = DS_VARIANTS["paper"],
) -> np.ndarray:
    """This rank's SUM over its sets of the spread s_j^(i)[k]: [F, F] float64 (row = varied i, column = measured j).

    Ranks take interleaved set indices; summing the partial results over ranks gives the full-run sums.
    Progress is reported in images (sets x samples_per_set) over all factors.
    """
    ctx.require("G", "bank", "reconstructor")
    names = variant.factors
    columns = [variant.columns(j) for j in names]
    sums = np.zeros((len(names), len(names)), dtype=np.float64)
    mine = rank_indices(num_sets, ctx.rank, ctx.num_gpus)
    sets_per_batch = max(1, ctx.batch_size // samples_per_set)
    total, done = len(mine) * len(names) * samples_per_set, 0
    for i, varied in enumerate(names):
        for chunk in batches(mine, sets_per_batch):
            drawn = [sample_ds_set(ctx.bank.labels, varied, int(k), samples_per_set, ctx.G.z_dim, ctx.seed)
                     for k in chunk]  # fmt: skip
            p = np.concatenate([p_set for p_set, _ in drawn])
            z = np.repeat(np.stack([z_set for _, z_set in drawn]), samples_per_set, axis=0)
            # z and noise fixed: only u_i varies in a set
            img = run_generator(ctx, z, ctx.condition_of(p), noise_mode="const")
            if quantize:
                img = images_to_uint8(img).float() / 127.5 - 1
            p_hat = ctx.reconstructor(img).double().cpu().numpy().reshape(len(chunk), samples_per_set, NUM_COEFFS)
            for j, cols in enumerate(columns):
                sums[i, j] += variant.spread(p_hat[..., cols]).sum()
            done += len(chunk) * samples_per_set
            ctx.report(done, total)
    return sums


def compute_ds(
    ctx: MetricContext,
    num_sets: int = 1000,
    samples_per_set: int = 10,
    quantize: bool = True,
    variant: str | DSVariant = "paper",
) -> dict[str, float]:
    """DS of ctx.G over `num_sets` x `samples_per_set` images per factor (paper: 1000 x 10) for one variant.

    Returns ds_<factor> and sigma_<varied>_<measured> for the variant's factors (see `metrics.ds_variants`).
    """
    spec = DS_VARIANTS[variant] if isinstance(variant, str) else variant
    if ctx.G is not None and not ctx.G.needs:
        raise UserError("the disentanglement score needs a 3DMM-conditioned generator")
    if samples_per_set < 2:
        raise UserError("the disentanglement score needs at least 2 samples per set")
    sums = all_reduce_sum(accumulate_ds_spreads(ctx, num_sets, samples_per_set, quantize, spec), ctx.device)
    return scores_from_spreads(sums / num_sets, spec.normalisers(ctx.bank.labels), spec.factors, spec.eps)
