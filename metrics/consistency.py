"""3DMM consistency of a conditioned generator: how well FR(G(rep(p), z)) recovers the conditioning p.

For N samples (p from the dataset's coefficient bank, z ~ N(0, I)), with p_hat = FR(G(rep(p), z)):

    cons_<g>  = (1 / (N D_g)) sum_n || p_hat_g[n] - p_g[n] ||_2^2      for g in id, exp, tex, angle, gamma, trans
    cons_rep  = (1 / (N C H W)) sum_n || rep(p_hat[n]) - rep(p[n]) ||_2^2   (eq. 5 with the paper's p = 2)

i.e. per-coefficient (per-element) mean squared errors, so groups of different sizes compare directly. Images
stay float (not quantised): this measures the quantity the consistency loss trains on.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.context import (
    COEFF_SLICES,
    MetricContext,
    all_reduce_sum,
    batches,
    rank_indices,
    run_generator,
    sample_latents_and_labels,
)
from torch_utils.errors import UserError
from training.rep import rep_distance

CONSISTENCY_GROUPS: tuple[str, ...] = tuple(COEFF_SLICES)  # id, exp, tex, angle, gamma, trans (deep3drecon.coeffs)


def group_squared_errors(p_hat: np.ndarray, p: np.ndarray, groups: tuple[str, ...] = CONSISTENCY_GROUPS) -> np.ndarray:
    """Sum over samples and dims of (p_hat - p)^2 per group: p_hat, p [N, 257] -> [len(groups)] float64."""
    diff = np.asarray(p_hat, np.float64) - np.asarray(p, np.float64)
    return np.array([(diff[:, COEFF_SLICES[g]] ** 2).sum() for g in groups])


@torch.no_grad()
def compute_consistency(
    ctx: MetricContext, num_samples: int, groups: tuple[str, ...] = CONSISTENCY_GROUPS
) -> dict[str, float]:
    """Per-group coefficient MSE cons_<g> and rep-space MSE cons_rep over `num_samples` generated images.

    Ranks take interleaved sample indices; the squared-error sums are reduced over ranks before dividing.
    """
    ctx.require("G", "bank", "reconstructor")
    if not ctx.G.needs:
        raise UserError("the consistency metric needs a 3DMM-conditioned generator")
    # sums = [per-group SSE..., rep SSE normalised per element, sample count]
    sums = np.zeros(len(groups) + 2, dtype=np.float64)
    mine = rank_indices(num_samples, ctx.rank, ctx.num_gpus)
    for done, chunk in enumerate(batches(mine, ctx.batch_size), start=1):
        z, label_idx = sample_latents_and_labels(chunk, ctx.G.z_dim, len(ctx.bank), ctx.seed)
        cond = ctx.condition(label_idx)  # p of the bank rows; rep(p) from the bank's cache or rendered once
        img = run_generator(ctx, z, cond, noise_mode="random", noise_key=int(chunk[0]))
        p_hat = ctx.reconstructor(img).float()
        sums[: len(groups)] += group_squared_errors(p_hat.cpu().numpy(), ctx.bank.labels[label_idx], groups)
        sums[-2] += rep_distance(ctx.bank.render(p_hat).double(), cond.rep.double()).sum().item()
        sums[-1] += len(chunk)
        ctx.report(min(done * ctx.batch_size, len(mine)), len(mine))
    sums = all_reduce_sum(sums, ctx.device)
    n = sums[-1]
    result = {
        f"cons_{g}": float(sums[k] / (n * (COEFF_SLICES[g].stop - COEFF_SLICES[g].start))) for k, g in enumerate(groups)
    }
    result["cons_rep"] = float(sums[-2] / n)
    return result
