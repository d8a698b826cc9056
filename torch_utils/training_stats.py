"""Scalar statistics gathered during training, reduced across ranks once per tick.

One `StatsCollector` is created by the entry point and passed down (no module-level state). Every rank must
report the same names in the same order between two `collect()` calls, because collect() all-reduces them.
"""

from __future__ import annotations

import torch

from torch_utils import distributed


class StatsCollector:
    """Accumulates count / sum / sum of squares per name in float64 and summarises them per tick."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._moments: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def report(self, name: str, value: torch.Tensor | float) -> None:
        """Add a scalar or every element of a tensor to the statistic `name` (cheap: no host sync)."""
        value = torch.as_tensor(value).detach().flatten().to(self.device, torch.float64)
        if value.numel() == 0:
            return
        moments = torch.stack(
            [
                value.new_full((), value.numel()),  # filled on the device: no host-to-device copy per report
                value.sum(),
                value.square().sum(),
            ]
        )
        if name in self._moments:
            self._moments[name] += moments
        else:
            self._moments[name] = moments

    @torch.no_grad()
    def collect(self) -> dict[str, dict[str, float]]:
        """Reduce over ranks and return {name: {num, mean, std}} since the last call; then reset."""
        names = sorted(self._moments)
        result: dict[str, dict[str, float]] = {}
        if names:
            stacked = distributed.all_reduce_sum(torch.stack([self._moments[n] for n in names]))
            for name, (num, total, total_sq) in zip(names, stacked.cpu().tolist()):
                mean = total / max(num, 1.0)
                var = max(total_sq / max(num, 1.0) - mean * mean, 0.0)
                result[name] = {"num": num, "mean": mean, "std": var**0.5}
        self._moments = {}
        return result
