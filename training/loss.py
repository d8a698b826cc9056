"""GAN objectives (paper eq. 12-13): non-saturating logistic loss, lazy R1, plus lambda x the consistency loss.

Phases, run in this order each iteration (StyleGAN2 convention):
  Gmain  every iteration     softplus(-D(G(rep(p), z))) + lambda * d(p, z)        (eq. 13)
  Dmain  every iteration     softplus(D(G(rep(p), z))) + softplus(-D(x))           (eq. 12, no R1)
  Dreg   every reg_interval  gamma / 2 * ||grad_x D(x)||^2, times reg_interval     (lazy R1)
Style mixing and path-length regularisation are off in the paper; mixing remains an option (default 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix
from torch_utils.training_stats import StatsCollector
from training.consistency import ConsistencyLoss


class GANLoss:
    """Computes each phase's loss and accumulates its gradients (the caller zeroes and steps)."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, stats: StatsCollector, r1_gamma: float = 1.0,
                 style_mixing_prob: float = 0.0, consistency: ConsistencyLoss | None = None,
                 lambda_cons: float = 20.0, w_avg_in_g_pass: bool = False) -> None:
        self.G, self.D, self.stats = G, D, stats
        self.w_avg_in_g_pass = w_avg_in_g_pass  # StyleGAN2-ADA moves w_avg in the G pass too (StyleGAN3: D only)
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.consistency = consistency
        self.lambda_cons = lambda_cons

    def run_G(self, z: torch.Tensor, rep: torch.Tensor | None, update_emas: bool = False) -> torch.Tensor:
        """Generate fake images [N, 3, R, R] in [-1, 1] from z [N, z_dim] and rep [N, 9, R, R] (or None)."""
        ws = self.G.mapping(z, update_emas=update_emas)
        if self.style_mixing_prob > 0 and torch.rand([]).item() < self.style_mixing_prob:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), update_emas=False)[:, cutoff:]
        feats = self.G.features(rep) if rep is not None else None  # E(rep(p)), one map per synthesis conv layer
        return self.G.synthesis(ws, feats=feats)  # feats enter networks.SynthesisLayer.forward (eq. 7)

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, gen_z: torch.Tensor,
                             gen_rep: torch.Tensor | None, alpha: float, gain: float) -> None:
        """Backward one phase's loss for one accumulation round. real_img [N, 3, R, R] in [-1, 1]."""
        if phase == "Gmain":
            # gen_rep = rep(p), rendered once for this round: it feeds E (eq. 7) and the consistency target (eq. 6).
            fake = self.run_G(gen_z, gen_rep, update_emas=self.w_avg_in_g_pass)
            logits = self.D(fake)
            loss_gan = F.softplus(-logits).flatten()  # -log(sigmoid(D(G)))
            self.stats.report("Loss/scores/fake", logits)
            self.stats.report("Loss/signs/fake", logits.sign())
            loss = loss_gan
            if self.consistency is not None and gen_rep is not None and self.lambda_cons > 0:
                dist = self.consistency(fake, gen_rep, alpha)
                self.stats.report("Loss/G/consistency", dist)
                loss = loss + self.lambda_cons * dist  # eq. 13
            self.stats.report("Loss/G/loss", loss_gan)
            loss.mean().mul(gain).backward()

        elif phase == "Dmain":
            with torch.no_grad():
                fake = self.run_G(gen_z, gen_rep, update_emas=True)
            logits_fake = self.D(fake)
            logits_real = self.D(real_img.detach())
            self.stats.report("Loss/scores/fake", logits_fake)
            self.stats.report("Loss/scores/real", logits_real)
            self.stats.report("Loss/signs/real", logits_real.sign())
            loss = F.softplus(logits_fake).flatten() + F.softplus(-logits_real).flatten()
            self.stats.report("Loss/D/loss", loss)
            loss.mean().mul(gain).backward()

        elif phase == "Dreg":
            real = real_img.detach().requires_grad_(True)
            logits = self.D(real)
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
