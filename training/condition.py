"""The condition G is given, as one object from the coefficient bank to every consumer (the conditioning seam).

    Condition(p [N, 257] float32, rep(p) [N, 9, R, R] float32 in [-1, 1], rendered on first use)

p is the Deep3DFaceRecon coefficient vector (layout: deep3drecon.coeffs); rep(p) is its 9-channel rendering (eq. 3,
training.rep). A design reads what it needs (`Generator.needs`): the method reads rep, a mapping-network design
reads p. Rendering happens once per Condition and only if someone reads `.rep`, so a design that never looks at
rep never pays for a render.

`ConditionBank` is the bank sampler: the dataset's own labels (the paper draws p from the empirical
distribution), turned into Conditions by row index, with rep(p) of every row optionally pre-rendered once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from training.rep import REP_CHANNELS, make_rep

RenderFn = Callable[[torch.Tensor], torch.Tensor]  # p [N, 257] -> rep [N, 9, R, R] in [-1, 1]


class Condition:
    """p [N, 257] and its rep(p) [N, 9, R, R] in [-1, 1]; rep is rendered by `render` on first read, then kept.

    render runs in the caller's grad mode, so a Condition of a p that requires grad gives a differentiable rep
    (inversion refining p); the bank's Conditions render without gradient.
    """

    def __init__(self, p: torch.Tensor, rep: torch.Tensor | None = None, render: RenderFn | None = None) -> None:
        if p.ndim != 2:
            raise ValueError(f"p must be [N, 257], got {tuple(p.shape)}")
        if rep is not None and rep.shape[0] != p.shape[0]:
            raise ValueError(f"rep has {rep.shape[0]} rows but p has {p.shape[0]}")
        self.p, self._rep, self._render = p, rep, render

    @property
    def rep(self) -> torch.Tensor:
        """rep(p) [N, 9, R, R] in [-1, 1]: rendered now on the first read, the same tensor afterwards."""
        if self._rep is None:
            if self._render is None:
                raise ValueError("this Condition has p only and no renderer for rep(p)")
            self._rep = self._render(self.p)
        return self._rep

    @property
    def has_rep(self) -> bool:
        """True when rep(p) is already rendered (reading it costs nothing)."""
        return self._rep is not None

    def __len__(self) -> int:
        return self.p.shape[0]

    def __getitem__(self, index: slice | torch.Tensor | list[int]) -> Condition:
        """Rows of the condition; an already rendered rep is sliced with p, never rendered again."""
        rep = self._rep[index] if self._rep is not None else None
        return Condition(self.p[index], rep, self._render)

    def repeat_interleave(self, repeats: int) -> Condition:
        """Each row `repeats` times in a row (a grid row of one p): [N] -> [N * repeats].

        rep (when there is a renderer) is rendered for the N distinct rows, kept here, and repeated: the copies are
        never rendered again.
        """
        p = self.p.repeat_interleave(repeats, dim=0)
        if self._rep is None and self._render is None:
            return Condition(p)
        return Condition(p, self.rep.repeat_interleave(repeats, dim=0))

    def to(self, device: torch.device | str) -> Condition:
        """The same condition with p (and a rendered rep) on `device`."""
        rep = self._rep.to(device) if self._rep is not None else None
        return Condition(self.p.to(device), rep, self._render)


class ConditionBank:
    """The bank of coefficient vectors p_bank [M, 257] that G's conditions are drawn from, and their rep(p).

    renderer None gives Conditions with p only (for a reader that never renders). With `cache_mb` large enough,
    rep(p) of every row is pre-rendered once on `device` (float32, M * 9 * R^2 * 4 bytes: 18 MiB for 512 rows at
    32 px, 154 GiB for FFHQ's 70k at 256); otherwise rows are rendered when a Condition's rep is first read. Both
    give rep(p) without gradient, equal up to float32 summation order (the renderer's batch size differs).
    """

    def __init__(self, p_bank: np.ndarray | torch.Tensor, renderer: torch.nn.Module | None, size: int,
                 device: torch.device | str = "cpu", cache_mb: float = 0.0, batch: int = 64) -> None:  # fmt: skip
        self.labels = np.asarray(torch.as_tensor(p_bank).cpu(), dtype=np.float32)  # host copy: numpy-side sampling
        self.p = torch.as_tensor(self.labels, device=device)  # [M, 257] on the device the conditions live on
        self.renderer, self.size = renderer, size
        self.cache_bytes = len(self.labels) * REP_CHANNELS * size * size * 4
        self.cached: torch.Tensor | None = None
        if renderer is not None and 0 < self.cache_bytes <= cache_mb * 2**20:
            with torch.no_grad():
                self.cached = torch.cat([self.render(self.p[i : i + batch]) for i in range(0, len(self.p), batch)])

    def __len__(self) -> int:
        return len(self.labels)

    def render(self, p: torch.Tensor) -> torch.Tensor:
        """rep(p) [N, 9, R, R] in [-1, 1] of any p [N, 257] (differentiable w.r.t. p in grad mode)."""
        if self.renderer is None:
            raise ValueError("this ConditionBank has no renderer")
        return make_rep(self.renderer, p, self.size)

    def _render_no_grad(self, p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.render(p)

    def condition(self, p: torch.Tensor) -> Condition:
        """A Condition of any p [N, 257] (edits, FR estimates); rep rendered with this bank's renderer on first read."""
        return Condition(p.to(self.p.device), render=self.render if self.renderer is not None else None)

    def rows(self, index: torch.Tensor | np.ndarray) -> Condition:
        """The Condition of bank rows index [N] int64: rep from the cache, or rendered (no grad) on first read."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.p.device)
        if self.cached is not None:
            return Condition(self.p[index], self.cached[index])
        return Condition(self.p[index], render=self._render_no_grad if self.renderer is not None else None)

    def sample(self, n: int, generator: torch.Generator) -> Condition:
        """n uniformly drawn rows (the paper's empirical p distribution), from `generator` on the bank's device."""
        return self.rows(torch.randint(len(self), [n], device=self.p.device, generator=generator))

    def describe(self) -> str:
        """One log line: cached or rendered per batch, and the cache size."""
        size_mb = self.cache_bytes / 2**20
        if self.cached is not None:
            return f"rep(p) of the {len(self)} bank rows pre-rendered once ({size_mb:.0f} MB)"
        return f"rep(p) rendered per batch (the bank's cache would take {size_mb:.0f} MB; rep_cache_mb limits it)"
