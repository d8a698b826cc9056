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

The real side does not change between snapshots, so it is cached on disk beside the FID statistics (the context's
cache_dir), one small .npz per (dataset content, metric, N, seed): the floor values, and for rkid the features of
draw A. A later evaluation then reads draw A's images only (swd) or no real image at all (rkid); its numbers equal
an uncached evaluation's to the last bit (tests/metrics/test_weight_free.py). A dataset without a path (or an
edited one: `dataset_fingerprint`) is not cached or gets a new entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from metrics.context import (
    MetricContext,
    batches,
    broadcast_scalar,
    default_cache_dir,
    gather_rows_to_rank0,
    rank_indices,
    run_generator,
    sample_latents_and_labels,
)
from metrics.features import images_to_uint8
from metrics.random_features import RandomCNNFeatures, feature_scores, random_features
from metrics.swd import DIR_REPEATS, DIRS_PER_REPEAT, NHOODS_PER_IMAGE, swd, swd_resolutions
from torch_utils.errors import UserError
from torch_utils.outputs import output_file

_FLOOR_STREAM = 7  # seeds the permutation of real images apart from every other draw of ctx.seed
_CACHE_VERSION = 1  # bump when what a cache entry holds, or how it is computed, changes
_KID_SUBSETS, _NN_K = 100, 5  # KID subsets and density/coverage k: part of the rkid cache key


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


def real_uint8(
    ctx: MetricContext, num_images: int, with_floor: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(draw A, draw B) of num_images real images each as uint8 [N, 3, R, R] on rank 0; B is None when the dataset
    holds fewer than 2 N images or with_floor is False (then only A is read). Collective."""
    ctx.require("dataset")
    total = len(ctx.dataset)
    if total < num_images:
        raise UserError(f"this metric compares {num_images} real images, the dataset has {total}")
    take = min(total, 2 * num_images if with_floor else num_images)
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


# ---------------------------------------------------------------------------------------------------------------
# The real-side cache (module docstring).


def real_side_cache_path(ctx: MetricContext, kind: str, num_images: int, key: list) -> str | None:
    """`<dataset name>-<kind>-<slot>-<content>.npz` in the cache folder, or None when the dataset has no path.

    slot = (absolute dataset path, N, ctx.seed, `key`: what else the entry depends on, cache version);
    content = `feature_stats.dataset_fingerprint`, so an edited dataset gets a new entry (the old one is removed
    when the new one is written)."""
    from metrics.feature_stats import dataset_fingerprint

    fingerprint = dataset_fingerprint(ctx.dataset) if ctx.dataset is not None else None
    if fingerprint is None:
        return None
    slot = json.dumps([os.path.abspath(ctx.dataset.path), num_images, ctx.seed, key, _CACHE_VERSION])
    name = getattr(ctx.dataset, "name", "dataset")
    fname = f"{name}-{kind}-{hashlib.sha256(slot.encode()).hexdigest()[:10]}-{fingerprint[:16]}.npz"
    return os.path.join(ctx.cache_dir or default_cache_dir(), fname)


def _read_entry(path: str | None, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry when it holds exactly `expected` (name -> shape, float64), else None.

    Reads nothing unless the archive's index promises stored (uncompressed) members of at most the expected
    size, so a damaged or planted file costs no more memory than a good one."""
    import zipfile

    if path is None or not os.path.isfile(path):
        return None
    limit = sum(8 * math.prod(shape) for shape in expected.values()) + 4096 * len(expected)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if sorted(i.filename for i in infos) != sorted(f"{k}.npy" for k in expected):
                return None
            if any(i.compress_type != zipfile.ZIP_STORED or i.file_size > limit for i in infos):
                return None
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in expected}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if any(a.dtype != np.float64 or a.shape != expected[k] for k, a in arrays.items()):
        return None
    return arrays


def _write_entry(ctx: MetricContext, path: str | None, arrays: dict[str, np.ndarray]) -> None:
    """Rank 0 writes the entry atomically (a concurrent reader sees the old file or the new one), then removes the
    entries of earlier versions of the same dataset path and slot."""
    from metrics.feature_stats import remove_stale_entries

    if path is None or ctx.rank != 0:
        return
    with output_file(path, overwrite=True) as f:
        np.savez(f, **{k: np.asarray(v, np.float64) for k, v in arrays.items()})
    remove_stale_entries(path)


def _cached_on_every_rank(ctx: MetricContext, entry: dict | None) -> bool:
    """Rank 0's decision (entry found) on every rank, so that all ranks take the same collective path."""
    return broadcast_scalar(1.0 if entry is not None else 0.0, ctx.device) > 0.5


# ---------------------------------------------------------------------------------------------------------------
# The metrics.


def compute_swd(ctx: MetricContext, num_images: int) -> dict[str, float]:
    """swd_<res> and swd_avg of G vs draw A, and swd_floor_<res> / swd_floor_avg of draw B vs draw A."""
    levels = [str(level) for level in swd_resolutions(ctx.G.img_resolution)] + ["avg"]
    cache = real_side_cache_path(ctx, "swd", num_images, [NHOODS_PER_IMAGE, DIR_REPEATS, DIRS_PER_REPEAT, levels])
    entry = _read_entry(cache, {"floor": (len(levels),)}) if ctx.rank == 0 else None
    cached = _cached_on_every_rank(ctx, entry)
    fakes = generated_uint8(ctx, num_images)
    reals, floor_reals = real_uint8(ctx, num_images, with_floor=not cached)
    values = None
    if ctx.rank == 0:
        values = {f"swd_{k}": v for k, v in swd(reals, fakes, seed=ctx.seed).items()}
        if cached:
            floor = dict(zip(levels, entry["floor"].tolist()))
        elif floor_reals is not None:
            floor = {str(k): v for k, v in swd(reals, floor_reals, seed=ctx.seed).items()}
            _write_entry(ctx, cache, {"floor": np.array([floor[k] for k in levels])})
        else:
            ctx.say(f"SWD floor: the dataset has fewer than 2 x {num_images} images; reported as NaN")
            floor = dict.fromkeys(levels, math.nan)
        values.update({f"swd_floor_{k}": v for k, v in floor.items()})
    keys = [f"swd_{level}" for level in levels]
    return _shared(ctx, values, keys + [k.replace("swd_", "swd_floor_") for k in keys])


def compute_random_feature_scores(ctx: MetricContext, num_images: int) -> dict[str, float]:
    """rkid, density, coverage of G vs draw A on the fixed random CNN, and the same of draw B (*_floor)."""
    subset, keys = min(1000, num_images), ["rkid", "density", "coverage"]
    net = RandomCNNFeatures(0, ctx.device)
    cache = real_side_cache_path(ctx, net.name, num_images, [subset, _KID_SUBSETS, _NN_K])
    expected = {"features": (num_images, net.feature_dim), "floor": (len(keys),)}
    entry = _read_entry(cache, expected) if ctx.rank == 0 else None
    cached = _cached_on_every_rank(ctx, entry)
    fakes = generated_uint8(ctx, num_images)
    reals, floor_reals = (None, None) if cached else real_uint8(ctx, num_images)
    values = None
    if ctx.rank == 0:
        real = entry["features"] if cached else random_features(reals, net=net)
        fake = random_features(fakes, net=net)
        values = feature_scores(real, fake, ctx.seed, k=_NN_K, num_subsets=_KID_SUBSETS, max_subset_size=subset)
        if cached:
            floor = dict(zip(keys, entry["floor"].tolist()))
        elif floor_reals is not None:
            other = random_features(floor_reals, net=net)
            floor = feature_scores(real, other, ctx.seed, k=_NN_K, num_subsets=_KID_SUBSETS, max_subset_size=subset)
            _write_entry(ctx, cache, {"features": real, "floor": np.array([floor[k] for k in keys])})
        else:
            ctx.say(f"random-feature floor: the dataset has fewer than 2 x {num_images} images; reported as NaN")
            floor = dict.fromkeys(keys, math.nan)
        values.update({f"{k}_floor": v for k, v in floor.items()})
    return _shared(ctx, values, keys + [f"{k}_floor" for k in keys])
