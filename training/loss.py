"""GAN objectives (paper eq. 12-13): non-saturating logistic loss, lazy R1, plus the design's G-phase terms.

Phases, run in this order each iteration (StyleGAN2 convention):
  Gmain  every iteration     softplus(-D(G(z, c), c)) + lambda * d(p, z)              (eq. 13)
  Dmain  every iteration     softplus(D(G(z, c), c)) + softplus(-D(x, c_x))           (eq. 12, no R1)
  Dreg   every reg_interval  gamma / 2 * ||grad_x D(x, c_x)||^2, times reg_interval   (lazy R1)
c is the training.condition.Condition G is given (None for StyleGAN2), c_x the real images' own labels' Condition;
G and D alone decide what they read (D reads it only in a design that conditions D, sg2-cond). The G-phase term
is the design's: the consistency loss (eq. 13, training.consistency), DFG's imitative losses (training.imitative),
or none. Style mixing and path-length regularisation are off in the paper; mixing remains an option (default 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix
from torch_utils.training_stats import StatsCollector
from training.condition import Condition


class GANLoss:
    """Computes each phase's loss and accumulates its gradients (the caller zeroes and steps)."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, stats: StatsCollector, r1_gamma: float = 1.0,
                 style_mixing_prob: float = 0.0, consistency: torch.nn.Module | None = None,
                 w_avg_in_g_pass: bool = False) -> None:  # fmt: skip
        self.G, self.D, self.stats = G, D, stats
        self.w_avg_in_g_pass = w_avg_in_g_pass  # StyleGAN2-ADA moves w_avg in the G pass too (StyleGAN3: D only)
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        # The design's G-phase term, per-sample [N] from (fake, cond, cur_nimg, report): the consistency loss (owns
        # lambda and the blending schedule, eq. 6, 13), DFG's imitative losses, or None.
        self.consistency = consistency

    def run_G(self, z: torch.Tensor, cond: Condition | None, update_emas: bool = False) -> torch.Tensor:
        """Generate fake images [N, 3, R, R] in [-1, 1] from z [N, z_dim] and cond (StyleGAN3's run_G(z, c))."""
        ws = self.G.mapping(z, cond, update_emas=update_emas)
        if self.style_mixing_prob > 0 and torch.rand([]).item() < self.style_mixing_prob:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), cond, update_emas=False)[:, cutoff:]
        return self.G.synthesis(ws, cond)

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_cond: Condition | None,
                             gen_z: torch.Tensor | None, gen_cond: Condition | None, gain: float,
                             cur_nimg: int) -> None:  # fmt: skip
        """Backward one phase's loss for one accumulation round (StyleGAN3's signature).

        real_img [N, 3, R, R] in [-1, 1]; real_cond: the Condition of its own labels (None without labels).
        """
        if phase == "Gmain":
            # gen_cond's rep(p) is rendered once for this round: it feeds E (eq. 7) and the consistency target.
            fake = self.run_G(gen_z, gen_cond, update_emas=self.w_avg_in_g_pass)
            logits = self.D(fake, gen_cond)
            loss_gan = F.softplus(-logits).flatten()  # -log(sigmoid(D(G)))
            self.stats.report("Loss/scores/fake", logits)
            self.stats.report("Loss/signs/fake", logits.sign())
            loss = loss_gan
            if self.consistency is not None:
                loss = loss + self.consistency(fake, gen_cond, cur_nimg, self.stats.report)  # eq. 13
            self.stats.report("Loss/G/loss", loss_gan)
            loss.mean().mul(gain).backward()

        elif phase == "Dmain":
            with torch.no_grad():
                fake = self.run_G(gen_z, gen_cond, update_emas=True)
            logits_fake = self.D(fake, gen_cond)
            logits_real = self.D(real_img.detach(), real_cond)
            self.stats.report("Loss/scores/fake", logits_fake)
            self.stats.report("Loss/scores/real", logits_real)
            self.stats.report("Loss/signs/real", logits_real.sign())
            loss = F.softplus(logits_fake).flatten() + F.softplus(-logits_real).flatten()
            self.stats.report("Loss/D/loss", loss)
            loss.mean().mul(gain).backward()

        elif phase == "Dreg":
            real = real_img.detach().requires_grad_(True)
            logits = self.D(real, real_cond)
            # Only d(logits)/d(input) is needed here; skipping conv weight gradients halves this pass.
            with conv2d_gradfix.no_weight_gradients():
                (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True, only_inputs=True)
            penalty = grad.square().sum(dim=[1, 2, 3])
            loss = penalty * (self.r1_gamma / 2)
            self.stats.report("Loss/r1_penalty", penalty)
            self.stats.report("Loss/D/reg", loss)
            # logits * 0 keeps every D parameter in the graph (matters for exact multi-GPU gradient averaging).
            (loss + logits.flatten() * 0).mean().mul(gain).backward()

        else:
            raise ValueError(f"unknown phase {phase}")
