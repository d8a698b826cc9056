"""The consistency loss with progressive blending (paper section 2.2, eq. 5-6).

    d = || rep(FR(alpha * x + (1 - alpha) * r(p))) - rep(p) ||^2          (eq. 6)
FR is the frozen pretrained reconstructor; gradients reach G through x (and through the differentiable renderer
and FR's input), never FR's weights. The squared norm is averaged over the 9 x R x R entries of rep (a per-pixel
mean rather than a sum) so that lambda = 20 keeps the paper's balance with the GAN loss at any resolution.
"""

from __future__ import annotations

import torch

from training.rep import make_rep, rep_render


def blend_alpha(cur_nimg: int, blend_kimg: float) -> float:
    """alpha of eq. 6: 0 at the start, rising linearly to 1 after blend_kimg thousand images, then 1."""
    if blend_kimg <= 0:
        return 1.0
    return float(min(max(cur_nimg / (blend_kimg * 1000.0), 0.0), 1.0))


class ConsistencyLoss(torch.nn.Module):
    """Per-sample eq. 6 distance between rep(p) and the rep of FR's estimate from the blended image."""

    def __init__(self, renderer: torch.nn.Module, reconstructor: torch.nn.Module) -> None:
        super().__init__()
        self.renderer = renderer
        self.reconstructor = reconstructor

    def forward(self, fake: torch.Tensor, rep: torch.Tensor, alpha: float) -> torch.Tensor:
        """fake [N, 3, R, R] in [-1, 1], rep = rep(p) [N, 9, R, R] -> d [N] (eq. 6, per-element mean)."""
        blended = alpha * fake + (1.0 - alpha) * rep_render(rep)  # eq. 6: progressive blending
        coeffs_hat = self.reconstructor(blended)
        rep_hat = make_rep(self.renderer, coeffs_hat, fake.shape[-1])
        return (rep_hat - rep).square().flatten(1).mean(dim=1)
