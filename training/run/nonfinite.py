"""Stops a run whose losses or gradients turn NaN/inf, at the tick after it happens, naming the iteration.

Cost: per phase, one comparison and two `torch.where` on 0-d device tensors with the NaN count that
`distributed.average_gradients` already computed (no host sync); per tick, one read of those tensors and a look at
the loss means the tick's statistics already hold. Every rank sees the same counts (they follow the all-reduce),
so every rank stops at the same tick and no collective is left waiting. The run stops before the snapshot phase,
so the newest snapshot on disk stays the last good one.
"""

from __future__ import annotations

import math

import torch

from torch_utils.errors import UserError
from training.run.snapshot import latest_training_state


class TrainingDiverged(UserError):
    """A loss or gradient turned NaN/inf; the message names the iteration, the phase and the last good snapshot."""


class NonFiniteGuard:
    """Remembers on the device the first iteration whose gradients held NaN; `check` raises TrainingDiverged."""

    def __init__(self, device: torch.device, phases: tuple[str, ...] = ("Gmain", "Dmain", "Dreg")) -> None:
        self.phases = phases
        self.first_iter = torch.full([], -1, dtype=torch.int64, device=device)
        self.first_nimg = torch.full([], -1, dtype=torch.int64, device=device)
        self.first_phase = torch.full([], -1, dtype=torch.int64, device=device)

    @torch.no_grad()
    def observe(self, num_nan: torch.Tensor, phase: str, batch_idx: int, cur_nimg: int) -> None:
        """Record (on the device, no sync) that `phase` of iteration batch_idx had num_nan NaN gradient values."""
        hit = (num_nan.to(self.first_iter.device) > 0) & (self.first_iter < 0)
        self.first_iter = torch.where(hit, batch_idx, self.first_iter)
        self.first_nimg = torch.where(hit, cur_nimg, self.first_nimg)
        self.first_phase = torch.where(hit, self.phases.index(phase), self.first_phase)

    def check(self, tick_stats: dict[str, dict[str, float]], cur_tick: int, run_dir: str) -> None:
        """Raise TrainingDiverged if a gradient held NaN since the start or a tick's loss mean is not finite."""
        iteration = int(self.first_iter)  # the one host sync, once per tick
        bad = sorted(name for name, value in tick_stats.items()
                     if name.startswith("Loss/") and not math.isfinite(value.get("mean", 0.0)))  # fmt: skip
        if iteration < 0 and not bad:
            return
        last_good = latest_training_state(run_dir)
        keep = f"the last good snapshot is {last_good}" if last_good else "no snapshot was written yet"
        advice = "lower the learning rates (--glr/--dlr) or raise --gamma"
        advice += ", and resume from it" if last_good else ""
        if iteration >= 0:
            phase = self.phases[int(self.first_phase)]
            raise TrainingDiverged(f"training stopped: {phase} gradients turned NaN at iteration {iteration} "
                                   f"(kimg {int(self.first_nimg) / 1000:.3f}); {keep}; {advice}")  # fmt: skip
        raise TrainingDiverged(f"training stopped: {', '.join(bad)} turned NaN/inf during tick {cur_tick}; "
                               f"{keep}; {advice}")  # fmt: skip
