"""What a metric is given (`MetricContext`, built by the one `build_context`) and the machinery metrics share.

Shared here: splitting work across ranks, float64 sum-reductions over torch.distributed, per-sample
deterministic latents/labels (the image for a global sample index never depends on batch size or GPU count),
and running G on Conditions of the bank (training.condition).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deep3drecon.coeffs import COEFF_SLICES, NUM_COEFFS  # noqa: F401 (re-exported for the metrics)
from metrics.features import FeatureExtractorFactory, inception_factory
from torch_utils.errors import UserError
from training.condition import Condition, ConditionBank


def default_cache_dir() -> str:
    """Real-image statistics cache: $TAXFREE3DMM_CACHE/gan-metrics, else ~/.cache/taxfree3dmm/gan-metrics."""
    root = os.environ.get("TAXFREE3DMM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "taxfree3dmm")
    return os.path.join(root, "gan-metrics")


@dataclass
class MetricContext:
    """Everything a metric function needs; built once by the caller (calc_metrics.py or the training loop).

    G: the G_ema module, G(z [N, z_dim], cond, truncation_psi, noise_mode) -> img [N, 3, R, R] in [-1, 1], with
    `G.needs` saying which fields of the Condition it reads (empty: unconditional). dataset: `len`,
    `[i] -> (uint8 [3, R, R], float32 [257])`, `.name`, optional `.path` (enables the real-statistics cache).
    bank: the ConditionBank of the dataset's labels p [M, 257] that generated images are conditioned on (the
    empirical distribution, as the paper trains) with the renderer for rep(p) at G's resolution (rows pre-rendered
    when it was built with a cache, so several snapshots are scored on one rendering); None for an unconditional G.
    reconstructor: FR(img [N, 3, H, W] in [-1, 1]) -> coeffs [N, 257].
    progress: called as (done, total) with this rank's item counts. feature_extractor_factory: device ->
    FeatureExtractor (default TF Inception).
    log: one-line messages for the user (e.g. the size of a cache file before it is written); None = silent.
    memo: results shared between the metrics of one evaluation (feature extractor, real and generated feature
    statistics), so FID and KID asked together make one real pass and one generation pass; build a fresh
    context (or clear it) when G changes. capture_features: passes whose raw features must be kept because a
    metric of this evaluation needs them (("real", max_real) / ("gen", num_gen); set by the registry).
    """

    G: torch.nn.Module | None = None
    dataset: Any = None
    bank: ConditionBank | None = None
    reconstructor: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    num_gpus: int = 1
    batch_size: int = 32
    progress: Callable[[int, int], None] | None = None
    cache_dir: str | None = None
    feature_extractor_factory: FeatureExtractorFactory = field(default_factory=inception_factory)
    num_workers: int = 3
    seed: int = 0
    log: Callable[[str], None] | None = None
    memo: dict = field(default_factory=dict)
    capture_features: set = field(default_factory=set)

    def require(self, *names: str) -> None:
        """Raises UserError if any named field is None (e.g. DS needs `reconstructor`)."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise UserError(f"this metric needs {', '.join(missing)} in the MetricContext")

    def report(self, done: int, total: int) -> None:
        """Forwards progress (this rank's items done / total) to the callback, if any."""
        if self.progress is not None:
            self.progress(done, total)

    def say(self, message: str) -> None:
        """Sends a one-line message to `log` on rank 0."""
        if self.log is not None and self.rank == 0:
            self.log(message)

    def condition(self, rows: np.ndarray) -> Condition | None:
        """The Condition of bank rows [N] int64 for G, or None when G takes none (unconditional)."""
        if not self.G.needs:
            return None
        self.require("bank")
        return self.bank.rows(rows)

    def condition_of(self, p: np.ndarray | torch.Tensor) -> Condition:
        """The Condition of any coefficients p [N, 257] (e.g. DS's mixed rows), rendered with the bank's renderer."""
        self.require("bank")
        return self.bank.condition(torch.as_tensor(np.asarray(p, dtype=np.float32)))

    def extractor(self):
        """The feature extractor, built once per evaluation (memoised) on ctx.device."""
        if "extractor" not in self.memo:
            self.memo["extractor"] = self.feature_extractor_factory(self.device)
        return self.memo["extractor"]


def rank_indices(num_items: int, rank: int, num_gpus: int) -> np.ndarray:
    """Global item indices handled by `rank`: i = rank, rank + num_gpus, ... (interleaved, as the reference)."""
    return np.arange(rank, num_items, num_gpus, dtype=np.int64)


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Splits an index array into consecutive chunks of at most `batch_size`."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), max(1, batch_size))]


def distributed_active() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _collective_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    return device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Sums a float64 array over ranks (identity when not distributed). Every rank must call it (symmetric)."""
    if not distributed_active():
        return array
    t = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float64), device=_collective_device(device))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.cpu().numpy()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's boolean on every rank (so all ranks take the same branch around collectives)."""
    if not distributed_active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=_collective_device(device))
    torch.distributed.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def gather_rows_to_rank0(rows: np.ndarray, device: torch.device) -> np.ndarray | None:
    """Concatenates per-rank arrays [n_r, D] (n_r may differ) in rank order on rank 0; other ranks get None.

    Only rank 0 holds the gathered array (the other ranks never allocate it). Identity when not distributed.
    Collective: every rank must call it.
    """
    if not distributed_active():
        return rows
    cdev = _collective_device(device)
    world, rank = torch.distributed.get_world_size(), current_rank()
    counts = [torch.zeros(1, dtype=torch.int64, device=cdev) for _ in range(world)]
    torch.distributed.all_gather(counts, torch.tensor([len(rows)], dtype=torch.int64, device=cdev))
    counts_list = [int(c.item()) for c in counts]
    padded = np.zeros((max(counts_list), *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows
    local = torch.as_tensor(padded, device=cdev)
    gathered = [torch.empty_like(local) for _ in counts_list] if rank == 0 else None
    torch.distributed.gather(local, gathered, dst=0)
    if rank != 0:
        return None
    return np.concatenate([g[:n].cpu().numpy() for g, n in zip(gathered, counts_list)])


def current_rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    return torch.distributed.get_rank() if distributed_active() else 0


def broadcast_scalar(value: float | None, device: torch.device) -> float:
    """Rank 0's float on every rank (other ranks may pass None). Collective; identity when not distributed."""
    mine = float(value) if current_rank() == 0 and value is not None else 0.0
    return float(all_reduce_sum(np.array([mine], np.float64), device)[0])


def sample_latents_and_labels(
    indices: Sequence[int], z_dim: int, num_labels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample RNG keyed by (seed, global index): z [N, z_dim] float32 ~ N(0, I) and label rows [N] int64.

    Keying by the global index makes sample i identical for any batch size and any number of GPUs.
    """
    z = np.empty((len(indices), z_dim), dtype=np.float32)
    label_idx = np.zeros(len(indices), dtype=np.int64)
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, int(i)])
        z[row] = rng.standard_normal(z_dim)
        if num_labels > 0:
            label_idx[row] = rng.integers(num_labels)
    return z, label_idx


@contextlib.contextmanager
def seeded_torch_rng(device: torch.device, *key: int) -> Iterator[None]:
    """Runs the block with torch's global RNG seeded from `key` and restores the outer RNG state afterwards.

    G draws its per-pixel noise from the global RNG; seeding it per batch makes metric values repeatable while
    training (or anything else) continues with an untouched RNG stream.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0]))
        yield


@torch.no_grad()
def run_generator(
    ctx: MetricContext, z: np.ndarray, cond: Condition | None, noise_mode: str = "random", noise_key: int = 0
) -> torch.Tensor:
    """G(z, cond) without truncation: z [N, z_dim], cond of N rows (None for an unconditional G) -> img [N, 3, R, R].

    With noise_mode="random" the noise is drawn from torch's RNG seeded by (ctx.seed, noise_key), callers pass
    the batch's first global sample index: the same images for the same seed, batch size and GPU count (z and
    labels are keyed per sample; the noise maps of a batch are drawn together, so they follow the batching).
    """
    ctx.require("G")
    z_t = torch.as_tensor(z, dtype=torch.float32, device=ctx.device)
    with seeded_torch_rng(ctx.device, ctx.seed, noise_key):
        return ctx.G(z_t, cond, truncation_psi=1, noise_mode=noise_mode)


def build_context(G: torch.nn.Module | None, dataset: Any, *, device: torch.device,
                  renderer: torch.nn.Module | None = None, bank: ConditionBank | None = None,
                  reconstructor: torch.nn.Module | None = None, rep_cache_mb: float = 0.0,
                  **fields: Any) -> MetricContext:  # fmt: skip
    """The one MetricContext builder (calc_metrics.py, train.py --metrics, the smoke report, the GPU check).

    The condition bank is `bank` when the caller has one (the training loop's, maybe pre-rendered), else it is built
    from the dataset's labels and `renderer` (rows pre-rendered once when they fit in rep_cache_mb) for a G that
    takes a condition. fields: any other MetricContext field (rank, num_gpus, batch_size, seed, log, ...).
    """
    if bank is None and G is not None and G.needs:
        if renderer is None:
            raise UserError("this generator is 3DMM-conditional: its metrics need the face model's renderer (--bfm)")
        bank = ConditionBank(dataset.labels, renderer, G.img_resolution, device, rep_cache_mb)
    if getattr(dataset, "xflip", False):  # metrics see the dataset as it is, whatever the training loader does
        dataset = dataset.without_xflip()
    return MetricContext(G=G, dataset=dataset, bank=bank, reconstructor=reconstructor, device=device, **fields)
