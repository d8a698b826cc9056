"""StyleGAN2 discriminator (resnet architecture, ADA-PyTorch `paper256`): img (, cond) -> logits.

Unconditional unless built with c_dim (the sg2-cond design, training.designs): then D maps p to a cmap with a small
mapping network of its own and projects the epilogue's output onto it (StyleGAN2-ADA's projection discriminator).

State-dict names follow StyleGAN2 (`b256.fromrgb.weight`, `b4.fc.weight`, ...) so that NVIDIA's weights convert
one to one. Images are float32 NCHW in [-1, 1]; the blocks at the num_fp16_res highest resolutions compute in
float16 on CUDA (torch_utils.misc.fp16_blocks_active), the epilogue always in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from torch_utils.errors import UserError
from torch_utils.misc import fp16_blocks_active
from training.condition import Condition
from training.layers import Conv2dLayer, FullyConnectedLayer, block_resolutions, channels_at, fir_filter


class DiscriminatorBlock(nn.Module):
    """Resnet D block: x [N, in, r, r] (or img [N, 3, r, r] in the first block) -> [N, out, r/2, r/2]."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        use_fp16: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer("resample_filter", fir_filter())
        if in_channels == 0:  # only the highest-resolution block sees the image
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        use_fp16 = self.use_fp16 and not force_fp32 and fp16_blocks_active(img.device)
        dtype = torch.float16 if use_fp16 else self.conv0.weight.dtype  # parameter dtype: float32 unless cast
        x = self.fromrgb(img.to(dtype)) if self.in_channels == 0 else x.to(dtype)
        # sqrt(1/2) on both branches keeps the variance of the sum; passed as gain so the clamp scales too.
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y.add_(x)


class MinibatchStdLayer(nn.Module):
    """x [N, C, H, W] -> [N, C + num_channels, H, W]; group of sample i = {j : j = i mod N/G} (strided, StyleGAN2)."""

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        f = self.num_channels
        if n % g or c % f:
            raise UserError(f"minibatch-std needs the per-GPU batch ({n}) divisible by the group size ({g})")
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, N/G, F, C/F, H, W]: sample i sits at (i // (N/G), i % (N/G))
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [N/G, F]: mean std over channels in the slice and pixels
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class ProjectionMapping(nn.Module):
    """D's own mapping of the condition (StyleGAN2-ADA, z_dim 0): p [N, c_dim] -> cmap [N, cmap_dim].

    embed (linear, lr multiplier 1) -> 2nd-moment normalisation -> num_layers lrelu linear layers (lr multiplier
    0.01), no w_avg, no broadcast.
    """

    def __init__(self, c_dim: int, cmap_dim: int, num_layers: int = 8, lr_multiplier: float = 0.01) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.embed = FullyConnectedLayer(c_dim, cmap_dim)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(cmap_dim, cmap_dim, activation="lrelu",
                                                        lr_multiplier=lr_multiplier))  # fmt: skip

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        x = self.embed(p.to(self.embed.weight.dtype))
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalise_2nd_moment
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: x [N, C, 4, 4] -> mbstd -> conv -> fc -> out -> logits [N, 1] float32 (no sigmoid).

    With cmap_dim > 0 `out` gives cmap_dim values and the logit is their projection onto cmap [N, cmap_dim]:
    (out * cmap).sum(1) / sqrt(cmap_dim) (StyleGAN2-ADA's conditional D).
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int = 4,
        mbstd_group_size: int = 8,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
        cmap_dim: int = 0,
    ) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        conv_in = in_channels + mbstd_num_channels
        self.conv = Conv2dLayer(conv_in, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim or 1)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(self.mbstd(x.to(self.conv.weight.dtype)))  # always full precision
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim:  # projection onto D's mapping of p
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """D(img [N, img_channels, R, R] float32 in [-1, 1], cond) -> logits [N, 1] float32 (resnet architecture).

    cond (a training.condition.Condition) is read only when D is built with c_dim > 0 (projection on cond.p, the
    sg2-cond design); every other design's D ignores it, so callers always pass the images' condition.
    cmap_dim None = the 4x4 channel count (StyleGAN2-ADA's default); mapping_layers: depth of D's mapping of p.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        mbstd_group_size: int = 8,
        mbstd_num_channels: int = 1,
        c_dim: int = 0,
        cmap_dim: int | None = None,
        mapping_layers: int = 8,
    ) -> None:
        super().__init__()
        self.img_resolution, self.img_channels, self.c_dim = img_resolution, img_channels, c_dim
        if img_resolution < 8:
            raise UserError(f"the discriminator needs img_resolution >= 8, got {img_resolution}")
        self.block_resolutions = block_resolutions(img_resolution)[:0:-1]  # R, R/2, ..., 8
        fp16_resolution = max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)
        for res in self.block_resolutions:
            tmp_channels = channels_at(res, channel_base, channel_max)
            in_channels = tmp_channels if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, tmp_channels, channels_at(res // 2, channel_base, channel_max),
                resolution=res, img_channels=img_channels, use_fp16=(res >= fp16_resolution), conv_clamp=conv_clamp,
            )  # fmt: skip
            setattr(self, f"b{res}", block)
        if cmap_dim is None:
            cmap_dim = channels_at(4, channel_base, channel_max)
        if c_dim:  # created between the blocks and the epilogue, as StyleGAN2-ADA's `mapping`
            self.mapping = ProjectionMapping(c_dim, cmap_dim, num_layers=mapping_layers)
        self.b4 = DiscriminatorEpilogue(
            channels_at(4, channel_base, channel_max), mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp, cmap_dim=cmap_dim if c_dim else 0,
        )  # fmt: skip

    def forward(self, img: torch.Tensor, cond: Condition | None = None, force_fp32: bool = False) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise UserError(f"D expects images [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        if not self.c_dim:
            return self.b4(x)  # unconditional: cond, if given, is not read
        if cond is None:
            raise UserError("this discriminator is conditioned on p (projection): pass the images' Condition")
        return self.b4(x, self.mapping(cond.p))
