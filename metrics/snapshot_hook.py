"""`train.py --metrics`: the metric registry run on G_ema at every snapshot, on every rank (collective).

The training loop knows nothing of metrics: train.py builds this hook and hands it to the loop, which calls it with
its condition bank (so rep(p), cached or not, reaches every metric the way the loop has it) and its frozen FR.
"""

from __future__ import annotations

import torch

from metrics.context import build_context
from metrics.registry import calc_metric, plan_evaluation, report_metric
from training.condition import ConditionBank
from training.config import TrainConfig
from training.resolve import build_reconstructor


class SnapshotMetrics:
    """hook(G_ema, snapshot_name, bank, reconstructor): evaluate config.metrics, append metric-<name>.jsonl (rank 0)."""

    def __init__(self, config: TrainConfig, dataset, recon_path: str | None, run_dir: str, device: torch.device,
                 rank: int, world_size: int) -> None:  # fmt: skip
        self.config, self.dataset, self.recon_path, self.run_dir = config, dataset, recon_path, run_dir
        self.device, self.rank, self.world_size = device, rank, world_size

    def __call__(self, G_ema: torch.nn.Module, snapshot_name: str, bank: ConditionBank | None,
                 reconstructor: torch.nn.Module | None) -> None:  # fmt: skip
        config = self.config
        # Metrics draw their own seeds (and building an FR initialises weights); fork the global RNG so that training
        # continues as if they had not run (keeps resumed runs identical to uninterrupted ones).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if reconstructor is None and self.recon_path is not None:
                reconstructor = build_reconstructor(self.recon_path, self.device, config.recon_backbone)
            ctx = build_context(G_ema, self.dataset, device=self.device, bank=bank, reconstructor=reconstructor,
                                rank=self.rank, num_gpus=self.world_size, num_workers=config.workers,
                                batch_size=config.batch_gpu or config.batch // self.world_size, seed=config.seed,
                                log=print)  # fmt: skip
            plan_evaluation(list(config.metrics), ctx)  # FID + KID together share their real and generated passes
            for name in config.metrics:
                result = calc_metric(name, ctx)
                if self.rank == 0:
                    print(report_metric(result, run_dir=self.run_dir, snapshot_name=snapshot_name))


def snapshot_hook(config: TrainConfig, dataset, recon_path: str | None, run_dir: str, device: torch.device,
                  rank: int, world_size: int) -> SnapshotMetrics | None:  # fmt: skip
    """The hook train.py hands to the training loop: SnapshotMetrics for config.metrics, None without metrics."""
    if not config.metrics:
        return None
    return SnapshotMetrics(config, dataset, recon_path, run_dir, device, rank, world_size)
