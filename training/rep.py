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


class RepBank:
    """rep(p) of rows of the coefficient bank p_bank [M, 257], pre-rendered once when they fit in `cache_mb`.

    Training draws p from the dataset's own labels (a fixed bank), and the renderer is deterministic, so for a small
    bank rendering every row once replaces two renders per iteration (the Gmain and Dmain conditions) by a lookup.
    The cache is float32 [M, 9, R, R] on the bank's device (M * 9 * R^2 * 4 bytes: 18 MiB for 512 rows at 32 px,
    154 GiB for FFHQ's 70k at 256); with cache_mb = 0 or a bank too large for it, rows are rendered on demand. Both
    give rep(p) without gradient, equal up to float32 summation order (the renderer's batch size differs).
    """

    def __init__(self, renderer: torch.nn.Module, p_bank: torch.Tensor, size: int, cache_mb: float = 0.0,
                 batch: int = 64) -> None:  # fmt: skip
        self.renderer, self.p_bank, self.size = renderer, p_bank, size
        self.cache_bytes = p_bank.shape[0] * REP_CHANNELS * size * size * 4
        self.cached: torch.Tensor | None = None
        if 0 < self.cache_bytes <= cache_mb * 2**20:
            with torch.no_grad():
                self.cached = torch.cat([make_rep(renderer, p_bank[i : i + batch], size)
                                         for i in range(0, p_bank.shape[0], batch)])  # fmt: skip

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """Bank rows index [N] int64 -> rep(p_bank[index]) [N, 9, R, R] in [-1, 1], no gradient."""
        if self.cached is not None:
            return self.cached[index.to(self.cached.device)]
        with torch.no_grad():
            return make_rep(self.renderer, self.p_bank[index], self.size)

    def describe(self) -> str:
        """One log line: cached or rendered per batch, and the cache size."""
        size_mb = self.cache_bytes / 2**20
        if self.cached is not None:
            return f"rep(p) of the {self.p_bank.shape[0]} bank rows pre-rendered once ({size_mb:.0f} MB)"
        return f"rep(p) rendered per batch (the bank's cache would take {size_mb:.0f} MB; rep_cache_mb limits it)"
