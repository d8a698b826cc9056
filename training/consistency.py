"""The consistency term of the G loss (paper section 2.2-2.3): eq. 5-6 and its weight in eq. 13.

    alpha(nimg) = min(nimg / (blend_kimg * 1000), 1)                                     (eq. 6 schedule)
    d           = || rep(FR(alpha * x + (1 - alpha) * r(p))) - rep(p) ||^2                (eq. 6)
    term        = lambda * d                                                              (eq. 13)
FR is the frozen pretrained reconstructor; gradients reach G through x (and through the differentiable renderer
and FR's input), never FR's weights. The squared norm is averaged over the 9 x R x R entries of rep
(training.rep.rep_distance) so that lambda = 20 keeps the paper's balance with the GAN loss at any resolution.
rep(p) comes with the Condition (rendered once per round and shared with E), so only rep(p_hat) is rendered here.
This term owns lambda and the blending length: the loop passes the image count, nothing derived.

Two ablations of training.designs change one part each: method-noblend builds it with blend_kimg 0 (alpha = 1
from the first image), method-coeffcons measures d in coefficient space instead of rep space:
    d_coeff = mean over the 6 groups g of  mean_{j in g} (p_hat_j - p_j)^2 / mean_{j in g} var_bank(p_j)
(groups of deep3drecon.coeffs: id, exp, tex, angle, gamma, trans; var_bank = the bank's per-coefficient variance),
so that each group contributes its error relative to its own spread and none dominates by its scale or length;
a group with no spread in the bank (variance 0, e.g. a fixed translation) is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from deep3drecon.coeffs import COEFF_SLICES
from training.condition import Condition
from training.rep import make_rep, rep_distance, rep_render
from training.run import fast_paths


def blend_alpha(cur_nimg: int, blend_kimg: float) -> float:
    """alpha of eq. 6: 0 at the start, rising linearly to 1 after blend_kimg thousand images, then 1."""
    if blend_kimg <= 0:
        return 1.0
    return float(min(max(cur_nimg / (blend_kimg * 1000.0), 0.0), 1.0))


def coeff_group_scales(labels: np.ndarray) -> torch.Tensor:
    """1 / (the bank's mean per-coefficient variance of each group) [6]; 0 for a group with no spread."""
    var = np.asarray(labels, dtype=np.float64).var(axis=0)  # [257] population variance over the bank
    group_var = np.array([var[sl].mean() for sl in COEFF_SLICES.values()])
    return torch.as_tensor(np.where(group_var > 1e-12, 1.0 / np.maximum(group_var, 1e-12), 0.0), dtype=torch.float32)


def coeff_distance(coeffs_hat: torch.Tensor, p: torch.Tensor, group_scales: torch.Tensor) -> torch.Tensor:
    """coeffs_hat, p [N, 257], group_scales [6] -> d [N]: the variance-scaled coefficient distance (module docs)."""
    per_group = torch.stack([(coeffs_hat[:, sl] - p[:, sl]).square().mean(dim=1) for sl in COEFF_SLICES.values()],
                            dim=1)  # [N, 6]  # fmt: skip
    used = (group_scales > 0).sum().clamp(min=1)
    return (per_group * group_scales.to(per_group)).sum(dim=1) / used


class ConsistencyLoss(torch.nn.Module):
    """Per-sample lambda x eq. 6 distance between rep(p) and the rep of FR's estimate from the blended image.

    space "rep" is the paper's; "coeff" (method-coeffcons) needs group_scales from `coeff_group_scales(bank labels)`.

    fr_autocast (off | bf16 | fp16) runs FR under autocast; its estimate is cast back to float32 before rendering.
    compile_backend (e.g. "inductor") runs FR through torch.compile; `reconstructor` stays the eager module (the
    metrics use it with other batch sizes).
    """

    def __init__(self, renderer: torch.nn.Module, reconstructor: torch.nn.Module, lambda_cons: float = 20.0,
                 blend_kimg: float = 2000.0, fr_autocast: str = "off",
                 compile_backend: str | None = None, space: str = "rep",
                 group_scales: torch.Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        if space not in ("rep", "coeff") or (space == "coeff") != (group_scales is not None):
            raise ValueError(f"space {space!r}: 'rep', or 'coeff' with group_scales")
        self.space = space
        self.register_buffer("group_scales", group_scales, persistent=False)
        fast_paths.fr_autocast(torch.device("cpu"), fr_autocast)  # validates the mode name early
        self.renderer = renderer
        self.reconstructor = reconstructor
        self.lambda_cons, self.blend_kimg = lambda_cons, blend_kimg
        self.fr_autocast = fr_autocast
        compiled = compile_backend is not None
        self._fr = fast_paths.compile_module(reconstructor, compile_backend) if compiled else reconstructor

    def alpha(self, cur_nimg: int) -> float:
        """Progressive blending weight of the generated image after cur_nimg real images (eq. 6)."""
        return blend_alpha(cur_nimg, self.blend_kimg)

    def distance(self, fake: torch.Tensor, rep: torch.Tensor, alpha: float,
                 p: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """fake [N, 3, R, R] in [-1, 1], rep = rep(p) [N, 9, R, R] (, p [N, 257] for "coeff") -> d [N] (eq. 6)."""
        blended = alpha * fake + (1.0 - alpha) * rep_render(rep)  # eq. 6: progressive blending
        with fast_paths.fr_autocast(fake.device, self.fr_autocast):
            coeffs_hat = self._fr(blended)
        coeffs_hat = coeffs_hat.float()  # the renderer and the loss stay float32 under any FR precision
        if self.space == "coeff":  # method-coeffcons: no render of the estimate, variance-scaled groups
            return coeff_distance(coeffs_hat, p, self.group_scales)
        return rep_distance(make_rep(self.renderer, coeffs_hat, fake.shape[-1]), rep)

    def forward(self, fake: torch.Tensor, cond: Condition, cur_nimg: int,
                report: Callable[[str, object], None] | None = None) -> torch.Tensor:  # fmt: skip
        """fake [N, 3, R, R] generated from cond -> lambda * d [N] (eq. 13's term); reports d and alpha."""
        alpha = self.alpha(cur_nimg)
        dist = self.distance(fake, cond.rep, alpha, cond.p if self.space == "coeff" else None)
        if report is not None:
            report("Loss/G/consistency", dist)
            report("Progress/alpha", alpha)
        return self.lambda_cons * dist
