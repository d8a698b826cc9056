"""The consistency loss with progressive blending (paper section 2.2, eq. 5-6).

    d = || rep(FR(alpha * x + (1 - alpha) * r(p))) - rep(p) ||^2          (eq. 6)
FR is the frozen pretrained reconstructor; gradients reach G through x (and through the differentiable renderer
and FR's input), never FR's weights. The squared norm is averaged over the 9 x R x R entries of rep (a per-pixel
mean rather than a sum) so that lambda = 20 keeps the paper's balance with the GAN loss at any resolution.
rep(p) is rendered once per G step by the caller and passed in: its shaded part r(p) is the blend target and the
whole rep is the eq. 6 target, so only rep(p_hat) is rendered here.
"""

from __future__ import annotations

import torch

from training.rep import make_rep, rep_render
from training.run import fast_paths


def blend_alpha(cur_nimg: int, blend_kimg: float) -> float:
    """alpha of eq. 6: 0 at the start, rising linearly to 1 after blend_kimg thousand images, then 1."""
    if blend_kimg <= 0:
        return 1.0
    return float(min(max(cur_nimg / (blend_kimg * 1000.0), 0.0), 1.0))


class ConsistencyLoss(torch.nn.Module):
    """Per-sample eq. 6 distance between rep(p) and the rep of FR's estimate from the blended image.

    fr_autocast (off | bf16 | fp16) runs FR under autocast; its estimate is cast back to float32 before rendering.
    compile_backend (e.g. "inductor") runs FR through torch.compile; `reconstructor` stays the eager module (the
    metrics use it with other batch sizes).
    """

    def __init__(self, renderer: torch.nn.Module, reconstructor: torch.nn.Module, fr_autocast: str = "off",
                 compile_backend: str | None = None) -> None:  # fmt: skip
        super().__init__()
        fast_paths.fr_autocast(torch.device("cpu"), fr_autocast)  # validates the mode name early
        self.renderer = renderer
        self.reconstructor = reconstructor
        self.fr_autocast = fr_autocast
        compiled = compile_backend is not None
        self._fr = fast_paths.compile_module(reconstructor, compile_backend) if compiled else reconstructor

    def forward(self, fake: torch.Tensor, rep: torch.Tensor, alpha: float) -> torch.Tensor:
        """fake [N, 3, R, R] in [-1, 1], rep = rep(p) [N, 9, R, R] -> d [N] (eq. 6, per-element mean)."""
        blended = alpha * fake + (1.0 - alpha) * rep_render(rep)  # eq. 6: progressive blending
        with fast_paths.fr_autocast(fake.device, self.fr_autocast):
            coeffs_hat = self._fr(blended)
        coeffs_hat = coeffs_hat.float()  # the renderer and the loss stay float32 under any FR precision
        rep_hat = make_rep(self.renderer, coeffs_hat, fake.shape[-1])
        return (rep_hat - rep).square().flatten(1).mean(dim=1)
