"""Shared test helpers for the FR network tests: random weights with random BN statistics."""

from __future__ import annotations

import torch


def randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights AND random BN running stats (zero heads / unit stats would hide loading bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.ndim == 4:  # conv weights: He-like scale keeps activations finite through 50 layers
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if name.endswith("bn3.weight") else 0.0))
