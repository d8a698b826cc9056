"""Streamed feature statistics for FID/KID: mergeable float64 moments, real-image cache, generator features.

`FeatureStats` keeps n, sum x and sum x x^T in float64, so batches and ranks merge exactly (addition) and the
result equals the one-shot numpy mean / covariance (np.cov, ddof=1, as TTUR's reference FID code). Raw features
(for KID) are kept only when asked, as float32, and gathered on rank 0 only.

Real statistics are cached on disk per (dataset content, extractor, subset): see `dataset_fingerprint` for what
"content" means; a new version of a dataset replaces the old cache entry. Within one evaluation (one
MetricContext) real and generated statistics are memoised, so FID and KID asked together share both passes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import zipfile

import numpy as np
import torch

from metrics.context import (
    MetricContext,
    all_reduce_sum,
    batches,
    broadcast_flag,
    current_rank,
    default_cache_dir,
    gather_rows_to_rank0,
    rank_indices,
    run_generator,
    sample_latents_and_labels,
)
from metrics.features import FeatureExtractor, images_to_uint8


class FeatureStats:
    """Running moments of features [N, D]: count n, s1 = sum x [D], s2 = sum x x^T [D, D] (float64).

    With `capture_all`, the raw features are also kept (float32 [n, D], for KID). `merge` adds another
    instance (another batch or rank); `all_reduce` sums over torch.distributed ranks and gathers the captured
    features on rank 0 only (`features_on_rank0` is then True on the other ranks).
    """

    def __init__(self, dim: int, capture_all: bool = False):
        self.dim = dim
        self.capture_all = capture_all
        self.n = 0
        self.s1 = np.zeros(dim, dtype=np.float64)
        self.s2 = np.zeros((dim, dim), dtype=np.float64)
        self._chunks: list[np.ndarray] = []
        self.features_on_rank0 = False

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
        """Sums moments over ranks and gathers captured rows in rank order on rank 0 (no-op if not distributed)."""
        packed = np.concatenate([[float(self.n)], self.s1, self.s2.ravel()])
        packed = all_reduce_sum(packed, device)
        self.n = int(round(packed[0]))
        self.s1 = packed[1 : 1 + self.dim].copy()
        self.s2 = packed[1 + self.dim :].reshape(self.dim, self.dim).copy()
        if self.capture_all:
            gathered = gather_rows_to_rank0(self.features(), device)
            self._chunks = [] if gathered is None else [gathered]
            self.features_on_rank0 = gathered is None
        return self

    def features(self) -> np.ndarray:
        """Captured features float32 [n, D] (requires capture_all)."""
        if not self.capture_all:
            raise ValueError("features were not captured (capture_all=False)")
        if self.features_on_rank0:
            raise ValueError("captured features are gathered on rank 0 only")
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim), np.float32)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D] (divisor n - 1, like np.cov), float64; needs n >= 2."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def nbytes(self) -> int:
        """Bytes `save` writes (moments + captured features), to tell the user before writing."""
        rows = self.n if self.capture_all else 0
        return 8 * (1 + self.dim + self.dim * self.dim) + 4 * rows * self.dim

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
    def load(cls, path: str, capture_all: bool, features_here: bool = True) -> FeatureStats:
        """Reads an .npz written by `save` (no pickles: allow_pickle=False).

        With capture_all and not `features_here` (ranks other than 0) the features are not read: they stay on disk.
        """
        with np.load(path, allow_pickle=False) as data:
            stats = cls(int(data["s1"].shape[0]), capture_all=capture_all)
            stats.n, stats.s1, stats.s2 = int(data["n"]), data["s1"].copy(), data["s2"].copy()
            if capture_all and features_here:
                stats._chunks = [data["features"].copy()]
            stats.features_on_rank0 = capture_all and not features_here
        return stats

    @staticmethod
    def has_features(path: str) -> bool:
        """True if the .npz at `path` holds captured features (reads the archive's index only)."""
        with np.load(path, allow_pickle=False) as data:
            return "features" in data.files


def dataset_fingerprint(dataset: object) -> str | None:
    """Hex digest of what the real images are: the dataset's image list and the content of its file(s).

    - zip file: every member's name, CRC-32 and sizes from the zip's central directory. The CRC is computed
      from the member's bytes, so any edit of an image changes the fingerprint (same size and restored mtime
      included), without reading the images.
    - folder: every file's relative path, size, mtime and ctime (nanoseconds). ctime is set by the kernel on
      every write and cannot be restored with `touch`/`utime`, so an in-place edit changes it; copying the
      folder changes it too (statistics are then recomputed once). Contents are not hashed (that would read
      the whole dataset).
    - another single file: SHA-256 of its bytes.
    Plus `len(dataset)` and its `image_names` when it has them (a `max_size` subset is another dataset).
    Returns None when the dataset has no existing `.path` (then real statistics are not cached on disk).
    """
    path = getattr(dataset, "path", None)
    if path is None or not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps([len(dataset), getattr(dataset, "image_names", None)]).encode())  # type: ignore[arg-type]
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for fname in sorted(files):
                full = os.path.join(root, fname)
                st = os.stat(full)
                entry = f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
                digest.update(entry.encode())
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\0{info.compress_size}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _subset(ctx: MetricContext, max_items: int | None) -> int | None:
    """None when every real image is used (then the subset seed does not matter), else the subset size."""
    return None if max_items is None or max_items >= len(ctx.dataset) else int(max_items)


def _real_cache_path(ctx: MetricContext, extractor: FeatureExtractor, subset: int | None) -> str | None:
    """Cache file `<name>-<extractor>-<slot>-<content>.npz`, or None if the dataset has no path.

    slot = (absolute path, subset and its seed): one entry per slot is kept; content = `dataset_fingerprint`.
    """
    fingerprint = dataset_fingerprint(ctx.dataset)
    if fingerprint is None:
        return None
    chosen = "all" if subset is None else [subset, ctx.seed]
    slot = hashlib.sha256(json.dumps([os.path.abspath(ctx.dataset.path), chosen]).encode()).hexdigest()
    name = getattr(ctx.dataset, "name", "dataset")
    fname = f"{name}-{extractor.name}-{slot[:10]}-{fingerprint[:16]}.npz"
    return os.path.join(ctx.cache_dir or default_cache_dir(), fname)


def remove_stale_entries(cache_path: str) -> list[str]:
    """Deletes other versions of `cache_path`'s slot (same name, extractor and slot, older content) and entries of
    the earlier single-digest naming for the same name and extractor; returns the removed paths."""
    folder, fname = os.path.split(cache_path)
    prefix = fname[: -len(".npz") - 17]  # "<name>-<extractor>-<slot>"
    base = prefix[: -11]  # "<name>-<extractor>"
    legacy = re.compile(re.escape(base) + r"-[0-9a-f]{32}\.npz$")
    removed = []
    for other in glob.glob(os.path.join(glob.escape(folder), "*.npz")):
        other_name = os.path.basename(other)
        same_slot = other_name.startswith(prefix + "-") and len(other_name) == len(fname)
        if other_name != fname and (same_slot or legacy.match(other_name)):
            os.remove(other)
            removed.append(other)
    return removed


def _real_indices(num_items: int, subset: int | None, seed: int) -> np.ndarray:
    """All indices, or a fixed random subset of `subset` of them (sorted), like the reference `max_size`."""
    if subset is None:
        return np.arange(num_items)
    return np.sort(np.random.RandomState(seed).choice(num_items, subset, replace=False))


def _wants_features(ctx: MetricContext, kind: str, count: int | None) -> bool:
    """True if a metric of this evaluation asked for the raw features of this pass (ctx.capture_features)."""
    if kind == "real":
        return any(k == "real" and _subset(ctx, c) == count for k, c in ctx.capture_features)
    return (kind, count) in ctx.capture_features


def compute_real_stats(
    ctx: MetricContext, extractor: FeatureExtractor, max_items: int | None = None, capture_all: bool = False
) -> FeatureStats:
    """Features of real images (all, or a fixed random subset of `max_items`), reduced over ranks, cached.

    Each rank extracts its interleaved share; rank 0 decides whether the cache holds what is needed and writes
    it (saying its size first). Captured features end up on rank 0 only. Memoised in ctx.memo.
    """
    ctx.require("dataset")
    subset = _subset(ctx, max_items)
    capture = capture_all or _wants_features(ctx, "real", subset)
    memo_key = ("real", extractor.name, subset, None if subset is None else ctx.seed)
    memoised = ctx.memo.get(memo_key)
    if memoised is not None and (memoised.capture_all or not capture):
        return memoised
    cache_path = _real_cache_path(ctx, extractor, subset)
    usable = cache_path is not None and os.path.isfile(cache_path)
    usable = usable and (not capture or FeatureStats.has_features(cache_path))  # type: ignore[arg-type]
    if broadcast_flag(usable, ctx.device):
        stats = FeatureStats.load(cache_path, capture, features_here=current_rank() == 0)  # type: ignore[arg-type]
    else:
        stats = _extract_real(ctx, extractor, _real_indices(len(ctx.dataset), subset, ctx.seed), capture)
        if cache_path is not None and ctx.rank == 0:
            ctx.say(f"writing real statistics ({stats.nbytes() / 2**20:.0f} MB) to {cache_path}")
            stats.save(cache_path)
            for old in remove_stale_entries(cache_path):
                ctx.say(f"removed stale real statistics {old}")
    ctx.memo[memo_key] = stats
    return stats


def _extract_real(ctx: MetricContext, extractor: FeatureExtractor, chosen: np.ndarray, capture: bool) -> FeatureStats:
    """This rank's interleaved share of `chosen` real images through the extractor, reduced over ranks."""
    mine = chosen[rank_indices(len(chosen), ctx.rank, ctx.num_gpus)]
    loader = torch.utils.data.DataLoader(  # own generator: the loader's base seed does not draw from torch's RNG
        torch.utils.data.Subset(ctx.dataset, mine.tolist()), batch_size=ctx.batch_size, num_workers=ctx.num_workers,
        generator=torch.Generator().manual_seed(ctx.seed),
    )
    stats = FeatureStats(extractor.feature_dim, capture_all=capture)
    done = 0
    for images, _labels in loader:
        stats.append(extractor(torch.as_tensor(images).to(ctx.device)))
        done += len(images)
        ctx.report(done, len(mine))
    return stats.all_reduce(ctx.device)


def compute_generator_stats(
    ctx: MetricContext, extractor: FeatureExtractor, num_gen: int, capture_all: bool = False
) -> FeatureStats:
    """Features of `num_gen` generated images, labels drawn from the p-bank, reduced over ranks; memoised.

    As the reference protocol: each image gets the label of a uniformly drawn bank row, no truncation, random
    per-pixel noise (seeded, see `run_generator`); images are quantised to uint8 once before the detector.
    """
    ctx.require("G")
    capture = capture_all or _wants_features(ctx, "gen", num_gen)
    memo_key = ("gen", extractor.name, num_gen, ctx.seed)
    memoised = ctx.memo.get(memo_key)
    if memoised is not None and (memoised.capture_all or not capture):
        return memoised
    num_labels = 0 if ctx.bank is None else len(ctx.bank)
    mine = rank_indices(num_gen, ctx.rank, ctx.num_gpus)
    stats = FeatureStats(extractor.feature_dim, capture_all=capture)
    done = 0
    for chunk in batches(mine, ctx.batch_size):
        z, label_idx = sample_latents_and_labels(chunk, ctx.G.z_dim, num_labels, ctx.seed)
        img = run_generator(ctx, z, ctx.condition(label_idx), noise_mode="random", noise_key=int(chunk[0]))
        stats.append(extractor(images_to_uint8(img)))
        done += len(chunk)
        ctx.report(done, len(mine))
    ctx.memo[memo_key] = stats.all_reduce(ctx.device)
    return stats
