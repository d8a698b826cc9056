"""Frozen face reconstructor: generator images in [-1, 1] -> 3DMM coefficients, differentiable w.r.t. the image.

Used by the consistency loss (eq. 6 of the paper): FR(x') must pass gradients to the generated image x' while its
own weights never change. Three guards make that hold regardless of what the surrounding code does:
eval mode is re-imposed on every `.train()` call (BatchNorm keeps its running statistics), every parameter has
requires_grad=False, and the forward pass runs on detached copies of the parameters, so even a later
`parent.requires_grad_(True)` cannot route gradients into FR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from deep3drecon.recon_net import ReconNet


def resize_to_fr(img: torch.Tensor, size: int) -> torch.Tensor:
    """img [N, C, H, W] -> [N, C, size, size]: bilinear, antialiased when downsampling, identity at the same size."""
    if img.shape[-2:] == (size, size):
        return img
    downsampling = img.shape[-2] > size or img.shape[-1] > size
    # Antialias only when shrinking: plain bilinear from 256 to 224 (or 224 to 64) aliases fine texture,
    # while for upsampling antialias=True changes nothing but speed.
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=downsampling)


class FaceReconstructor(nn.Module):
    """Frozen FR: img [N, 3, H, W] float in [-1, 1] (any resolution) -> coeffs [N, 257]; grads reach img only."""

    def __init__(self, net: ReconNet) -> None:
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.train(False)

    @property
    def input_size(self) -> int:
        """Square resolution the wrapped network consumes (224 for the release)."""
        return self.net.input_size

    def train(self, mode: bool = True) -> FaceReconstructor:
        """Keep FR in eval mode whatever `mode` says (a parent's .train() must not switch BatchNorm to batch stats)."""
        super().train(False)
        return self

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img: [N, 3, H, W] float in [-1, 1] (generator range, row 0 = top) -> coeffs [N, 257] in the FR dtype."""
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"FaceReconstructor expects [N, 3, H, W] images, got {tuple(img.shape)}")
        dtype = next(self.net.parameters()).dtype  # e.g. fp16 generator output -> the FR's fp32
        x = (img.to(dtype) + 1) * 0.5  # FR was trained on RGB in [0, 1]
        x = resize_to_fr(x, self.input_size)
        # Detached parameters: gradients can only flow to `img`, never into the weights.
        params = {name: p.detach() for name, p in self.net.named_parameters()}
        return functional_call(self.net, params, (x,))
