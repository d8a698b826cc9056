"""Layers shared by the generator, the discriminator and the render encoder: StyleGAN2's equalized-learning-rate
linear and conv layers, its width rule and block resolutions, and the [1,3,3,1] FIR resampling filter.

Key names and initialisation follow StyleGAN2 (ADA-PyTorch), so state dicts map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torch_utils.errors import UserError
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

FIR_FILTER = [1, 3, 3, 1]  # the paper's "bilinear resampling" (StyleGAN2's [1,3,3,1] FIR)


def fir_filter() -> torch.Tensor:
    """The [1,3,3,1] resampling filter as a [4, 4] buffer on the default device (so `with torch.device(...)` works)."""
    device = torch.get_default_device()
    with torch.device("cpu"):  # build on CPU even under a meta-device context (cheap; no meta decompositions)
        return upfirdn2d.setup_filter(FIR_FILTER, device=device)


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's width rule: min(channel_base // res, channel_max) channels at resolution res."""
    if channel_base < res:
        raise UserError(f"channel_base {channel_base} gives no channels at resolution {res}; use >= {res}")
    return min(channel_base // res, channel_max)


def block_resolutions(img_resolution: int) -> list[int]:
    """[4, 8, ..., img_resolution]; raises UserError unless img_resolution is a power of two >= 4."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise UserError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]


# ----------------------------------------------------------------------------------------------------------------
# Equalized-learning-rate primitives.


class FullyConnectedLayer(nn.Module):
    """Equalized-lr linear layer: x [N, in_features] -> [N, out_features], weight stored N(0,1)/lr_multiplier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        # Runtime gains keep the effective init at He scale while Adam sees O(1) parameters (equalized lr).
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalized-lr conv with optional FIR up/down-sampling: x [N, in, H, W] -> [N, out, H*up/down, W*up/down]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp = up, down, conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = bias_act.activation_funcs[activation].def_gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = conv2d_resample.conv2d_resample(
            x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
            flip_weight=(self.up == 1),  # correlation when not upsampling (slightly faster), as StyleGAN2
        )  # fmt: skip
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
            f"up={self.up}, down={self.down}"
        )
