"""Explicit metric registry (name -> function), timing, and the metric-<name>.jsonl result log.

Full-protocol metrics: fid50k_full, kid50k_full (50k generated vs the whole dataset), ds10k (1000 sets x 10 per
factor, the paper's DS) and its public variants ds10k_cgof and ds10k_gancontrol (`metrics.ds_variants`),
cons10k. Weight-free quality (`metrics.weight_free`, no Inception needed; each with its real-vs-real floor):
swd16k (the Progressive GAN protocol), swd2k, rkid10k and rkid2k (KID, density, coverage on a fixed random CNN:
comparable only with each other). Small forms for smoke runs and tests (numbers NOT comparable with papers):
fid1k, kid1k, ds100, ds100_cgof, ds100_gancontrol, cons1k.

`plan_evaluation(names, ctx)` before a series of `calc_metric` calls on one context lets metrics share passes:
FID and KID asked together extract the real features once and generate the images once.
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
from metrics.weight_free import compute_random_feature_scores, compute_swd
from torch_utils.errors import UserError
from torch_utils.misc import format_time

__all__ = [
    "MetricContext",
    "MetricSpec",
    "calc_metric",
    "check_metric_names",
    "check_metrics_apply",
    "get_metric",
    "is_valid_metric",
    "list_metrics",
    "plan_evaluation",
    "report_metric",
]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: fn(ctx) -> {key: float}, and what it needs (so CLIs can validate before GPU work).

    variant: the named definition a metric implements (DS: "paper" / "cgof" / "gancontrol"), written into every
    result record. feature_passes: passes whose raw features the metric keeps (("real", max_real),
    ("gen", num_gen)); other metrics of the same evaluation reuse those passes instead of repeating them.
    """

    fn: Callable[[MetricContext], dict[str, float]]
    needs_real_images: bool      # reads the dataset's images (FID, KID, SWD, random-feature KID)
    needs_reconstructor: bool    # runs FR on generated images, so G must take a condition (DS, consistency)
    description: str
    needs_inception: bool = False  # the Inception-v3 weights (FID, KID); the weight-free metrics need none
    variant: str | None = None
    feature_passes: tuple[tuple[str, int | None], ...] = ()


def _ds(num_sets: int, variant: str) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_ds(ctx, num_sets=num_sets, samples_per_set=10, variant=variant)


def _fid(num_gen: int, max_real: int | None) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_fid(ctx, num_gen=num_gen, max_real=max_real)


def _kid(num_gen: int, max_real: int, subsets: int, subset_size: int) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_kid(ctx, num_gen, max_real, num_subsets=subsets, max_subset_size=subset_size)


def _cons(num_samples: int) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_consistency(ctx, num_samples=num_samples)


def _swd(num_images: int) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_swd(ctx, num_images)


def _rkid(num_images: int) -> Callable[[MetricContext], dict[str, float]]:
    return lambda ctx: compute_random_feature_scores(ctx, num_images)


_DS_LINES = {
    "paper": "the paper's eq. 11: mean L2 to the set mean / ||dataset mean||, id 160-d, 4 factors",
    "cgof": "cGOF's code: mean per-dim std / its constants, id 80-d, 3 factors (no illum)",
    "gancontrol": "GAN-Control's code: mean pairwise L2 / the same over dataset rows, id 80-d, 4 factors",
}

_IMAGES = dict(needs_real_images=True, needs_reconstructor=False, needs_inception=True)  # Inception features
_WEIGHT_FREE = dict(needs_real_images=True, needs_reconstructor=False)  # quality without any pretrained weights
_FR = dict(needs_real_images=False, needs_reconstructor=True)       # 3DMM metrics: FR on generated images

_METRICS: dict[str, MetricSpec] = {
    "fid50k_full": MetricSpec(_fid(50_000, None), **_IMAGES,
                              description="FID, 50k generated vs all real images (paper table 1)"),
    "kid50k_full": MetricSpec(_kid(50_000, 1_000_000, 100, 1000), **_IMAGES,
                              description="KID, 50k generated vs up to 1M real, 100 subsets of 1000",
                              feature_passes=(("real", 1_000_000), ("gen", 50_000))),
    "ds10k": MetricSpec(_ds(1000, "paper"), **_FR, variant="paper",
                        description="DS, 1000 sets x 10 per factor, " + _DS_LINES["paper"]),
    "ds10k_cgof": MetricSpec(_ds(1000, "cgof"), **_FR, variant="cgof",
                             description="DS, 1000 sets x 10 per factor, " + _DS_LINES["cgof"]),
    "ds10k_gancontrol": MetricSpec(_ds(1000, "gancontrol"), **_FR, variant="gancontrol",
                                   description="DS, 1000 sets x 10 per factor, " + _DS_LINES["gancontrol"]),
    "cons10k": MetricSpec(_cons(10_000), **_FR, description="3DMM consistency MSE per coefficient group, 10k samples"),
    "fid1k": MetricSpec(_fid(1000, 1000), **_IMAGES,
                        description="smoke: FID, 1k generated vs 1k real (biased upwards)"),
    "kid1k": MetricSpec(_kid(1000, 1000, 10, 100), **_IMAGES, description="smoke: KID, 1k vs 1k, 10 subsets of 100",
                        feature_passes=(("real", 1000), ("gen", 1000))),
    "ds100": MetricSpec(_ds(10, "paper"), **_FR, variant="paper", description="smoke: ds10k with 10 sets x 10"),
    "ds100_cgof": MetricSpec(_ds(10, "cgof"), **_FR, variant="cgof", description="smoke: ds10k_cgof with 10 sets x 10"),
    "ds100_gancontrol": MetricSpec(_ds(10, "gancontrol"), **_FR, variant="gancontrol",
                                   description="smoke: ds10k_gancontrol with 10 sets x 10"),
    "cons1k": MetricSpec(_cons(1000), **_FR, description="smoke: 3DMM consistency, 1k samples"),
    "swd16k": MetricSpec(_swd(16_384), **_WEIGHT_FREE,
                         description="SWD x1e3 per level + avg, 16384 generated vs real (Progressive GAN) + floor"),
    "swd2k": MetricSpec(_swd(2048), **_WEIGHT_FREE, description="SWD x1e3, 2048 generated vs real, + floor"),
    "rkid10k": MetricSpec(_rkid(10_000), **_WEIGHT_FREE,
                          description="KID, density, coverage on a fixed random CNN, 10k vs 10k, + floor"),
    "rkid2k": MetricSpec(_rkid(2048), **_WEIGHT_FREE,
                         description="KID, density, coverage on a fixed random CNN, 2048 vs 2048, + floor"),
}  # fmt: skip


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


def check_metrics_apply(names: list[str], conditional: bool, what: str) -> None:
    """Refuses (one line) metrics that `what` cannot compute: FR-based ones (ds*, cons*) need a conditional G.

    train.py checks the design before training starts and calc_metrics.py the snapshot before any rank starts.
    """
    check_metric_names(names)
    needs_fr = [name for name in names if _METRICS[name].needs_reconstructor]
    if needs_fr and not conditional:
        raise UserError(f"{', '.join(needs_fr)} need a 3DMM-conditioned generator; {what} is unconditional")


def plan_evaluation(names: list[str], ctx: MetricContext) -> None:
    """Prepares `ctx` for evaluating `names` in turn: a fresh memo, and the passes whose features must be kept."""
    ctx.memo.clear()
    ctx.capture_features = {p for name in names for p in get_metric(name).feature_passes}


def calc_metric(name: str, ctx: MetricContext) -> dict:
    """Runs metric `name` on every rank (collective: all ranks must call it) and returns a result record.

    Record: {"results": {key: float}, "metric": name, ["variant": DS definition,] "total_time": seconds,
    "total_time_str": str, "num_gpus": int}. All ranks return the same results.
    """
    spec = get_metric(name)
    start = time.time()
    results = {key: float(value) for key, value in spec.fn(ctx).items()}
    total_time = time.time() - start
    return {
        "results": results,
        "metric": name,
        **({"variant": spec.variant} if spec.variant is not None else {}),
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


def recorded_metrics(run_dir: str, metric: str) -> dict[str, dict]:
    """{snapshot file name: results} from <run_dir>/metric-<metric>.jsonl, the last line of a snapshot winning.

    A line written before its snapshot file was (re)written is of an earlier file of that name (a run retrained
    after a kill) and is left out."""
    path, out = os.path.join(run_dir, f"metric-{metric}.jsonl"), {}
    if not os.path.isfile(path):
        return out
    for line in open(path, encoding="utf-8"):
        record = json.loads(line) if line.strip() else {}
        snap = os.path.join(run_dir, str(record.get("snapshot")))
        if record and (not os.path.isfile(snap) or record["timestamp"] >= os.path.getmtime(snap)):
            out[record["snapshot"]] = record["results"]
    return out
