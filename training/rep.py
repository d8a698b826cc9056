"""rep(p): the paper's 9-channel 3DMM representation (eq. 3), rendered at the generator's resolution.

    rep = [2 r - 1, 2 a - 1, n]   float32 [N, 9, R, R], every channel in [-1, 1]
r = shaded render (3), a = Lambertian albedo (3), n = camera-space unit normals (3), from deep3drecon's renderer.
Outside the face mask the renderer gives zeros, so r and a read -1 (black) and n reads 0 there.
This module is the one place that defines the normalisation.
"""

from __future__ import annotations

import torch

REP_CHANNELS = 9


def make_rep(renderer: torch.nn.Module, coeffs: torch.Tensor, size: int) -> torch.Tensor:
    """Render coefficients [N, 257] into rep [N, 9, size, size] in [-1, 1] (differentiable w.r.t. coeffs)."""
    out = renderer(coeffs, size)
    # The shaded render can exceed 1 under strong SH light; clamp so rep stays in its documented range.
    render = out.render.clamp(0, 1)
    albedo = out.albedo.clamp(0, 1)
    return torch.cat([render * 2 - 1, albedo * 2 - 1, out.normals], dim=1)


def rep_render(rep: torch.Tensor) -> torch.Tensor:
    """The shaded-render part r of rep [N, 9, R, R], as an image [N, 3, R, R] in [-1, 1]."""
    return rep[:, :3]


def rep_distance(rep_a: torch.Tensor, rep_b: torch.Tensor) -> torch.Tensor:
    """||rep_a - rep_b||^2 per sample as a mean over its 9 x R x R entries: [N, 9, R, R] x 2 -> [N] (eq. 5-6).

    The one rep distance of the consistency loss and the cons metric's cons_rep (in the inputs' dtype). A per-entry
    mean rather than a sum keeps lambda = 20 in the paper's balance with the GAN loss at any resolution.
    """
    return (rep_a - rep_b).square().flatten(1).mean(dim=1)
