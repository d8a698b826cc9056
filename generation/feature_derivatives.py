"""Paper figure 2: finite-difference maps of the injected features w.r.t. each 3DMM attribute group, dc/dp.

For a base p and each group g (id, exp, illum = SH gamma, angle), p' = p + eps * sigma_g * u with u a random unit
direction inside g's slice and sigma_g the group's per-coefficient std in the bank. The map for feature layer l is
mean_channels |c_l(p') - c_l(p)| / eps: large only where rep(p) changes, if E keeps variation localised.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deep3drecon.coeffs import COEFF_SLICES
from torch_utils.misc import quantize_uint8
from training.condition import Condition
from training.rep import make_rep

# The coefficients each fig. 2 column perturbs: identity shape, expression, SH light, pose angles.
ATTRIBUTE_SLICES = {"id": COEFF_SLICES["id"], "exp": COEFF_SLICES["exp"], "illum": COEFF_SLICES["gamma"],
                    "angle": COEFF_SLICES["angle"]}


@torch.no_grad()
def feature_derivative_maps(G: torch.nn.Module, renderer: torch.nn.Module, p: torch.Tensor, bank_std: torch.Tensor,
                            eps: float = 0.1, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """p [257] -> {attr: [|dc_l/dp| maps [r_l, r_l] for each synthesis conv layer l]} (channel-mean, >= 0)."""
    R = G.img_resolution
    gen = torch.Generator().manual_seed(seed)
    base = p[None].float()
    injected = lambda p_: G.synthesis.injected_features(Condition(p_, make_rep(renderer, p_, R)))  # E(rep(p))
    feats0 = injected(base)
    maps = {}
    for attr, sl in ATTRIBUTE_SLICES.items():
        u = torch.randn(sl.stop - sl.start, generator=gen).to(p.device)
        u = u / u.norm()
        p1 = base.clone()
        p1[0, sl] += eps * bank_std[sl] * u * (sl.stop - sl.start) ** 0.5  # ~eps sigma per coefficient
        feats1 = injected(p1)
        maps[attr] = [(f1 - f0).abs().mean(dim=1)[0] / eps for f0, f1 in zip(feats0, feats1)]
    return maps


def derivative_sparsity(maps: dict[str, list[torch.Tensor]], threshold: float = 0.1) -> dict[str, float]:
    """Fraction of pixels (over all layers) whose derivative exceeds threshold x that layer's max, per attribute."""
    result = {}
    for attr, layer_maps in maps.items():
        active = total = 0
        for m in layer_maps:
            peak = float(m.max())
            if peak > 0:
                active += int((m > threshold * peak).sum())
            total += m.numel()
        result[attr] = active / max(total, 1)
    return result


def maps_to_image(maps: dict[str, list[torch.Tensor]], size: int) -> np.ndarray:
    """Grid uint8 [rows = layers, cols = attributes] of maps, each upsampled to size and scaled to its own max."""
    rows = []
    num_layers = len(next(iter(maps.values())))
    for layer in range(num_layers):
        row = []
        for attr in maps:
            m = maps[attr][layer][None, None].float().cpu()
            m = F.interpolate(m, size=(size, size), mode="nearest")[0, 0]
            row.append(quantize_uint8(m / m.max().clamp(min=1e-12), drange=(0, 1)))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
