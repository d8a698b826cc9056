"""The weight-free quality metrics as registry entries: SWD (metrics.swd) and random-feature KID, density and
coverage (metrics.random_features), each with its real-vs-real floor at the same image count.

    swd<N>   SWD x1e3 per pyramid level and its average, generated vs N real images, and swd_floor_* (two disjoint
             draws of N real images against each other, the official second real pass)
    rkid<N>  KID on the fixed random CNN's features (rkid, x1, not x1e3), density and coverage, and their floors

Real images: a fixed seeded permutation of the dataset; draw A (the first N) is compared with the generated
images, draw B (the next N) gives the floor, which is NaN (said once) when the dataset has fewer than 2 N images.
Generated images: sample i is G(z_i, cond_i) with z and the bank row keyed by (seed, i) and random noise seeded per
batch, exactly as for FID; they are quantised to uint8 like the reals. Every rank generates its interleaved share;
rank 0 gathers the images in global index order (the values do not depend on the GPU count), computes the metric
and shares the numbers. Memory on rank 0: 3 N x 3 R^2 bytes of images (16k at 256 px: 9.7 GB).
"""

from __future__ import annotations

import math

import numpy as np

from metrics.context import (
    MetricContext,
    batches,
    broadcast_scalar,
    gather_rows_to_rank0,
    rank_indices,
    run_generator,
    sample_latents_and_labels,
)
from metrics.features import images_to_uint8
from metrics.random_features import random_feature_scores
from metrics.swd import swd, swd_resolutions
from torch_utils.errors import UserError

_FLOOR_STREAM = 7  # seeds the permutation of real images apart from every other draw of ctx.seed


def _gather_in_order(ctx: MetricContext, indices: np.ndarray, images: np.ndarray) -> np.ndarray | None:
    """This rank's uint8 images [n, 3, R, R] of global `indices` -> all ranks' images sorted by index, on rank 0."""
    rows = np.concatenate([indices[:, None].astype(np.float64), images.reshape(len(images), -1)], axis=1)
    gathered = gather_rows_to_rank0(rows, ctx.device)  # float64 holds uint8 values and indices exactly
    if gathered is None:
        return None
    gathered = gathered[np.argsort(gathered[:, 0], kind="stable")]
    return gathered[:, 1:].astype(np.uint8).reshape(len(gathered), *images.shape[1:])


def generated_uint8(ctx: MetricContext, num_images: int) -> np.ndarray | None:
    """G's images 0 .. num_images-1 as uint8 [N, 3, R, R] on rank 0 (None on other ranks); collective."""
    ctx.require("G")
    mine = rank_indices(num_images, ctx.rank, ctx.num_gpus)
    num_labels = 0 if ctx.bank is None else len(ctx.bank)
    parts, done = [np.zeros((0, 3, ctx.G.img_resolution, ctx.G.img_resolution), np.uint8)], 0
    for chunk in batches(mine, ctx.batch_size):
        z, label_idx = sample_latents_and_labels(chunk, ctx.G.z_dim, num_labels, ctx.seed)
        img = run_generator(ctx, z, ctx.condition(label_idx), noise_mode="random", noise_key=int(chunk[0]))
        parts.append(images_to_uint8(img).cpu().numpy())
        done += len(chunk)
        ctx.report(done, len(mine))
    return _gather_in_order(ctx, mine, np.concatenate(parts))


def real_uint8(ctx: MetricContext, num_images: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(draw A, draw B) of num_images real images each as uint8 [N, 3, R, R] on rank 0; B is None when the dataset
    holds fewer than 2 N images. Collective."""
    ctx.require("dataset")
    total = len(ctx.dataset)
    if total < num_images:
        raise UserError(f"this metric compares {num_images} real images, the dataset has {total}")
    take = min(total, 2 * num_images)
    order = np.random.default_rng([ctx.seed, _FLOOR_STREAM]).permutation(total)[:take]
    mine = rank_indices(take, ctx.rank, ctx.num_gpus)
    size = ctx.dataset.resolution
    images = np.zeros((len(mine), 3, size, size), np.uint8)
    for row, k in enumerate(mine):
        images[row] = ctx.dataset[int(order[k])][0]
    every = _gather_in_order(ctx, mine, images)
    if every is None:
        return None, None
    return every[:num_images], (every[num_images : 2 * num_images] if take == 2 * num_images else None)


def _shared(ctx: MetricContext, values: dict[str, float] | None, keys: list[str]) -> dict[str, float]:
    """Rank 0's results on every rank (each rank passes the same key list)."""
    return {key: broadcast_scalar(None if values is None else values[key], ctx.device) for key in keys}


def compute_swd(ctx: MetricContext, num_images: int) -> dict[str, float]:
    """swd_<res> and swd_avg of G vs draw A, and swd_floor_<res> / swd_floor_avg of draw B vs draw A."""
    fakes = generated_uint8(ctx, num_images)
    reals, floor_reals = real_uint8(ctx, num_images)
    values = None
    if ctx.rank == 0:
        values = {f"swd_{k}": v for k, v in swd(reals, fakes, seed=ctx.seed).items()}
        if floor_reals is not None:
            values.update({f"swd_floor_{k}": v for k, v in swd(reals, floor_reals, seed=ctx.seed).items()})
        else:
            ctx.say(f"SWD floor: the dataset has fewer than 2 x {num_images} images; reported as NaN")
            values.update({key.replace("swd_", "swd_floor_"): math.nan for key in list(values)})
    keys = [f"swd_{level}" for level in swd_resolutions(ctx.G.img_resolution)] + ["swd_avg"]
    return _shared(ctx, values, keys + [k.replace("swd_", "swd_floor_") for k in keys])


def compute_random_feature_scores(ctx: MetricContext, num_images: int) -> dict[str, float]:
    """rkid, density, coverage of G vs draw A on the fixed random CNN, and the same of draw B (*_floor)."""
    fakes = generated_uint8(ctx, num_images)
    reals, floor_reals = real_uint8(ctx, num_images)
    values = None
    subset = min(1000, num_images)
    if ctx.rank == 0:
        values = random_feature_scores(reals, fakes, seed=ctx.seed, max_subset_size=subset, device=ctx.device)
        if floor_reals is not None:
            floor = random_feature_scores(reals, floor_reals, seed=ctx.seed, max_subset_size=subset, device=ctx.device)
        else:
            ctx.say(f"random-feature floor: the dataset has fewer than 2 x {num_images} images; reported as NaN")
            floor = dict.fromkeys(values, math.nan)
        values.update({f"{k}_floor": v for k, v in floor.items()})
    keys = ["rkid", "density", "coverage"]
    return _shared(ctx, values, keys + [f"{k}_floor" for k in keys])
