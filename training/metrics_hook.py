"""Runs the metric registry on G_ema at a snapshot (train.py --metrics), on every rank (collective)."""

from __future__ import annotations

import functools

import torch

from training.config import TrainConfig
from training.rep import make_rep


def run_snapshot_metrics(config: TrainConfig, G_ema: torch.nn.Module, dataset, renderer: torch.nn.Module | None,
                         consistency: torch.nn.Module | None, recon_path: str | None, run_dir: str, kimg_tag: str,
                         device: torch.device, rank: int, world_size: int) -> None:
    """Evaluate every metric in config.metrics and append results to run_dir/metric-<name>.jsonl (rank 0 writes)."""
    from metrics.registry import MetricContext, calc_metric, plan_evaluation, report_metric

    # Metrics draw their own seeds (and building an FR initialises weights); fork the global RNG so that training
    # continues as if they had not run (keeps resumed runs identical to uninterrupted ones).
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        reconstructor = consistency.reconstructor if consistency is not None else None
        if reconstructor is None and recon_path is not None:
            from training.resolve import build_reconstructor

            reconstructor = build_reconstructor(recon_path, device, config.recon_backbone)
        if getattr(dataset, "xflip", False):  # metrics see the dataset as it is, like calc_metrics.py
            dataset = dataset.without_xflip()
        ctx = MetricContext(
            G=G_ema, dataset=dataset, p_bank=dataset.labels if config.cond else None, reconstructor=reconstructor,
            make_rep=functools.partial(make_rep, renderer, size=dataset.resolution) if renderer is not None else None,
            device=device, rank=rank, num_gpus=world_size, batch_size=config.batch_gpu or config.batch // world_size,
            num_workers=config.workers, seed=config.seed, log=print)
        plan_evaluation(list(config.metrics), ctx)  # FID + KID together share their real and generated passes
        for name in config.metrics:
            result = calc_metric(name, ctx)
            if rank == 0:
                print(report_metric(result, run_dir=run_dir, snapshot_name=f"network-snapshot-{kimg_tag}.pt"))
