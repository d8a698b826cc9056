"""Streamed feature statistics for FID/KID: mergeable float64 moments, real-image cache, generator features.

`FeatureStats` keeps n, sum x and sum x x^T in float64, so batches and ranks merge exactly (addition) and the
result equals the one-shot numpy mean / covariance (np.cov, ddof=1, as TTUR's reference FID code).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import torch

from metrics.context import (
    MetricContext,
    all_gather_rows,
    all_reduce_sum,
    batches,
    broadcast_flag,
    default_cache_dir,
    rank_indices,
    run_generator,
    sample_latents_and_labels,
)
from metrics.features import FeatureExtractor, images_to_uint8


class FeatureStats:
    """Running moments of features [N, D]: count n, s1 = sum x [D], s2 = sum x x^T [D, D] (float64).

    With `capture_all`, the raw features are also kept (float32 [n, D], for KID). `merge` adds another
    instance (another batch or rank); `all_reduce` sums over torch.distributed ranks.
    """

    def __init__(self, dim: int, capture_all: bool = False):
        self.dim = dim
        self.capture_all = capture_all
        self.n = 0
        self.s1 = np.zeros(dim, dtype=np.float64)
        self.s2 = np.zeros((dim, dim), dtype=np.float64)
        self._chunks: list[np.ndarray] = []

    def append(self, features: torch.Tensor | np.ndarray) -> None:
        """Adds features [N, D] (any float dtype/device); the outer products are formed in float64."""
        x = torch.as_tensor(features).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {list(x.shape)}")
        self.n += x.shape[0]
        self.s1 += x.sum(dim=0).cpu().numpy()
        self.s2 += (x.T @ x).cpu().numpy()  # on x's device: the GPU does the D x D products
        if self.capture_all:
            self._chunks.append(x.to(torch.float32).cpu().numpy())

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Adds `other`'s moments (and captured rows, appended after ours) into self; returns self."""
        if other.dim != self.dim or other.capture_all != self.capture_all:
            raise ValueError("cannot merge FeatureStats of different dims / capture modes")
        self.n += other.n
        self.s1 += other.s1
        self.s2 += other.s2
        self._chunks.extend(other._chunks)
        return self

    def all_reduce(self, device: torch.device) -> FeatureStats:
        """Sums moments over ranks and gathers captured rows in rank order (no-op if not distributed)."""
        packed = np.concatenate([[float(self.n)], self.s1, self.s2.ravel()])
        packed = all_reduce_sum(packed, device)
        self.n = int(round(packed[0]))
        self.s1 = packed[1 : 1 + self.dim].copy()
        self.s2 = packed[1 + self.dim :].reshape(self.dim, self.dim).copy()
        if self.capture_all:
            self._chunks = [all_gather_rows(self.features(), device)]
        return self

    def features(self) -> np.ndarray:
        """Captured features float32 [n, D] (requires capture_all)."""
        if not self.capture_all:
            raise ValueError("features were not captured (capture_all=False)")
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim), np.float32)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D] (divisor n - 1, like np.cov), float64; needs n >= 2."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def save(self, path: str) -> None:
        """Writes an .npz atomically (temp file + rename, so concurrent readers never see half a file)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        arrays = {"n": np.array(self.n), "s1": self.s1, "s2": self.s2}
        if self.capture_all:
            arrays["features"] = self.features()
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path) or ".")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, capture_all: bool) -> FeatureStats:
        """Reads an .npz written by `save` (no pickles: allow_pickle=False)."""
        with np.load(path, allow_pickle=False) as data:
            stats = cls(int(data["s1"].shape[0]), capture_all=capture_all)
            stats.n, stats.s1, stats.s2 = int(data["n"]), data["s1"].copy(), data["s2"].copy()
            if capture_all:
                stats._chunks = [data["features"].copy()]
        return stats


def dataset_fingerprint(dataset: object) -> str | None:
    """Hex digest of the dataset's source: path, size/mtime of the file (or of every file under a folder), length.

    Returns None when the dataset has no existing `.path` (then real statistics are not cached). Unlike a key
    built from the path alone, editing the data in place changes the fingerprint.
    """
    path = getattr(dataset, "path", None)
    if path is None or not os.path.exists(path):
        return None
    path = os.path.abspath(path)
    entries: list[tuple[str, int, int]] = []
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for fname in files:
                full = os.path.join(root, fname)
                st = os.stat(full)
                entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
        entries.sort()
    else:
        st = os.stat(path)
        entries.append(("", st.st_size, st.st_mtime_ns))
    key = json.dumps({"path": path, "files": entries, "len": len(dataset)})  # type: ignore[arg-type]
    return hashlib.md5(key.encode()).hexdigest()


def _real_cache_path(
    ctx: MetricContext, extractor: FeatureExtractor, max_items: int | None, capture_all: bool
) -> str | None:
    """Cache file `<name>-<extractor>-<md5>.npz` for these real statistics, or None if the dataset has no path."""
    fingerprint = dataset_fingerprint(ctx.dataset)
    if fingerprint is None:
        return None
    key = json.dumps([fingerprint, extractor.name, max_items, capture_all, ctx.seed])
    digest = hashlib.md5(key.encode()).hexdigest()
    name = getattr(ctx.dataset, "name", "dataset")
    return os.path.join(ctx.cache_dir or default_cache_dir(), f"{name}-{extractor.name}-{digest}.npz")


def _real_indices(num_items: int, max_items: int | None, seed: int) -> np.ndarray:
    """All indices, or a fixed random subset of `max_items` of them (sorted), like the reference `max_size`."""
    if max_items is None or max_items >= num_items:
        return np.arange(num_items)
    return np.sort(np.random.RandomState(seed).choice(num_items, max_items, replace=False))


def compute_real_stats(
    ctx: MetricContext, extractor: FeatureExtractor, max_items: int | None = None, capture_all: bool = False
) -> FeatureStats:
    """Features of real images (all, or a fixed random subset of `max_items`), reduced over ranks, cached.

    Each rank extracts its interleaved share; rank 0 decides whether the cache exists and writes it.
    """
    ctx.require("dataset")
    cache_path = _real_cache_path(ctx, extractor, max_items, capture_all)
    if broadcast_flag(cache_path is not None and os.path.isfile(cache_path), ctx.device):
        return FeatureStats.load(cache_path, capture_all)  # type: ignore[arg-type]
    chosen = _real_indices(len(ctx.dataset), max_items, ctx.seed)
    mine = chosen[rank_indices(len(chosen), ctx.rank, ctx.num_gpus)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ctx.dataset, mine.tolist()), batch_size=ctx.batch_size, num_workers=ctx.num_workers
    )
    stats = FeatureStats(extractor.feature_dim, capture_all=capture_all)
    done = 0
    for images, _labels in loader:
        stats.append(extractor(torch.as_tensor(images).to(ctx.device)))
        done += len(images)
        ctx.report(done, len(mine))
    stats.all_reduce(ctx.device)
    if cache_path is not None and ctx.rank == 0:
        stats.save(cache_path)
    return stats


def compute_generator_stats(
    ctx: MetricContext, extractor: FeatureExtractor, num_gen: int, capture_all: bool = False
) -> FeatureStats:
    """Features of `num_gen` generated images, labels drawn from the p-bank, reduced over ranks.

    As the reference protocol: each image gets the label of a uniformly drawn bank row, no truncation, random
    per-pixel noise; images are quantised to uint8 once before the detector.
    """
    ctx.require("G")
    num_labels = 0 if ctx.p_bank is None else len(ctx.p_bank)
    mine = rank_indices(num_gen, ctx.rank, ctx.num_gpus)
    stats = FeatureStats(extractor.feature_dim, capture_all=capture_all)
    done = 0
    for chunk in batches(mine, ctx.batch_size):
        z, label_idx = sample_latents_and_labels(chunk, ctx.G.z_dim, num_labels, ctx.seed)
        p = None if ctx.p_bank is None else ctx.p_bank[label_idx]
        img = run_generator(ctx, z, p, noise_mode="random")
        stats.append(extractor(images_to_uint8(img)))
        done += len(chunk)
        ctx.report(done, len(mine))
    return stats.all_reduce(ctx.device)
