"""Explicit metric registry (name -> function), timing, and the metric-<name>.jsonl result log.

Full-protocol metrics: fid50k_full, kid50k_full (50k generated vs the whole dataset), ds10k (1000 sets x 10 per
factor, the paper's DS), cons10k. Small variants for smoke runs and tests (numbers NOT comparable with papers):
fid1k, kid1k, ds100, cons1k.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from metrics.consistency import compute_consistency
from metrics.context import MetricContext
from metrics.disentanglement import compute_ds
from metrics.fid import compute_fid
from metrics.kid import compute_kid
from torch_utils.errors import UserError
from torch_utils.misc import format_time

__all__ = [
    "MetricContext",
    "MetricSpec",
    "calc_metric",
    "check_metric_names",
    "get_metric",
    "is_valid_metric",
    "list_metrics",
    "report_metric",
]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: fn(ctx) -> {key: float}, and what it needs (so CLIs can validate before GPU work)."""

    fn: Callable[[MetricContext], dict[str, float]]
    needs_real_images: bool
    needs_reconstructor: bool
    description: str


def _fid50k_full(ctx: MetricContext) -> dict[str, float]:
    return compute_fid(ctx, num_gen=50_000, max_real=None)


def _kid50k_full(ctx: MetricContext) -> dict[str, float]:
    return compute_kid(ctx, num_gen=50_000, max_real=1_000_000, num_subsets=100, max_subset_size=1000)


def _ds10k(ctx: MetricContext) -> dict[str, float]:
    return compute_ds(ctx, num_sets=1000, samples_per_set=10)


def _cons10k(ctx: MetricContext) -> dict[str, float]:
    return compute_consistency(ctx, num_samples=10_000)


def _fid1k(ctx: MetricContext) -> dict[str, float]:
    return compute_fid(ctx, num_gen=1000, max_real=1000)


def _kid1k(ctx: MetricContext) -> dict[str, float]:
    return compute_kid(ctx, num_gen=1000, max_real=1000, num_subsets=10, max_subset_size=100)


def _ds100(ctx: MetricContext) -> dict[str, float]:
    return compute_ds(ctx, num_sets=10, samples_per_set=10)


def _cons1k(ctx: MetricContext) -> dict[str, float]:
    return compute_consistency(ctx, num_samples=1000)


_METRICS: dict[str, MetricSpec] = {
    "fid50k_full": MetricSpec(_fid50k_full, True, False, "FID, 50k generated vs all real images (paper table 1)"),
    "kid50k_full": MetricSpec(_kid50k_full, True, False, "KID, 50k generated vs up to 1M real, 100 subsets of 1000"),
    "ds10k": MetricSpec(_ds10k, False, True, "disentanglement score, 1000 sets x 10 samples per factor (eq. 11)"),
    "cons10k": MetricSpec(_cons10k, False, True, "3DMM consistency MSE per coefficient group, 10k samples"),
    "fid1k": MetricSpec(_fid1k, True, False, "smoke: FID, 1k generated vs 1k real (biased upwards)"),
    "kid1k": MetricSpec(_kid1k, True, False, "smoke: KID, 1k vs 1k, 10 subsets of 100"),
    "ds100": MetricSpec(_ds100, False, True, "smoke: disentanglement score, 10 sets x 10 samples"),
    "cons1k": MetricSpec(_cons1k, False, True, "smoke: 3DMM consistency, 1k samples"),
}


def list_metrics() -> list[str]:
    """Registered metric names, in registration order."""
    return list(_METRICS)


def is_valid_metric(name: str) -> bool:
    """True if `name` is registered."""
    return name in _METRICS


def get_metric(name: str) -> MetricSpec:
    """The MetricSpec for `name`; UserError listing the valid names otherwise."""
    if name not in _METRICS:
        raise UserError(f"unknown metric '{name}'; valid metrics: {', '.join(_METRICS)}")
    return _METRICS[name]


def check_metric_names(names: list[str]) -> None:
    """Validates names before any work starts; one UserError naming every unknown metric and the valid ones."""
    unknown = [name for name in names if name not in _METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(_METRICS)}")


def calc_metric(name: str, ctx: MetricContext) -> dict:
    """Runs metric `name` on every rank (collective: all ranks must call it) and returns a result record.

    Record: {"results": {key: float}, "metric": name, "total_time": seconds, "total_time_str": str,
    "num_gpus": int}. All ranks return the same results.
    """
    spec = get_metric(name)
    start = time.time()
    results = {key: float(value) for key, value in spec.fn(ctx).items()}
    total_time = time.time() - start
    return {
        "results": results,
        "metric": name,
        "total_time": total_time,
        "total_time_str": format_time(total_time),
        "num_gpus": ctx.num_gpus,
    }


def report_metric(result: dict, run_dir: str | None = None, snapshot_name: str | None = None) -> str:
    """Formats `result` as one JSON line (+ snapshot, timestamp) and appends it to <run_dir>/metric-<name>.jsonl.

    Call it on rank 0 only. With run_dir None nothing is written. Returns the JSON line (without newline).
    """
    record = dict(result, snapshot=snapshot_name, timestamp=time.time())
    line = json.dumps(record)
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, f"metric-{result['metric']}.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return line
