"""Render encoder E (paper appendix B, eq. 14, Fig. 5): rep(p) -> one feature map per synthesis conv layer.

One stage per synthesis resolution, from R down to 4. A general stage is a transition layer (bilinear, i.e. the
[1,3,3,1] FIR, downsampling by 2, then a 1x1 conv) followed by two 1-3-1 bottleneck residual blocks, and two
`toFeat` heads (1x1 conv + leaky ReLU) for the two synthesis conv layers of that resolution. The synthesis conv0
of block r is an upsampling conv whose input is r/2 x r/2, so its head downsamples first; conv1's head does not.
The R stage has no downsampling in its transition; the 4x4 stage feeds the single conv of synthesis block 4
through one head without activation.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_utils.errors import UserError
from training.layers import Conv2dLayer, block_resolutions, channels_at
from training.rep import REP_CHANNELS


class BottleneckBlock(nn.Module):
    """1-3-1 residual block: x [N, C, r, r] -> x + conv1x1(lrelu(conv3x3(lrelu(conv1x1(x))))), same shape.

    Activations only between consecutive convs, no normalisation, no residual rescaling: the last conv starts at
    zero (Fixup), so every block is the identity at initialisation.
    """

    def __init__(self, channels: int, bottleneck_channels: int) -> None:
        super().__init__()
        self.conv0 = Conv2dLayer(channels, bottleneck_channels, 1, activation="lrelu")
        self.conv1 = Conv2dLayer(bottleneck_channels, bottleneck_channels, 3, activation="lrelu")
        self.conv2 = Conv2dLayer(bottleneck_channels, channels, 1)
        nn.init.zeros_(self.conv2.weight)  # the "*" conv of Fig. 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(self.conv0(x)))


class EncoderStage(nn.Module):
    """E_i of eq. 14: e_{i-1} [N, in, 2r, 2r] (or rep at r) -> e_i [N, C, r, r] and its feats, conv order.

    feats: [N, F, r/2, r/2] for synthesis b{r}.conv0 then [N, F, r, r] for b{r}.conv1 (only the latter at r = 4).
    """

    def __init__(
        self, in_channels: int, channels: int, feat_channels: int, resolution: int, down: bool, bottleneck_channels: int
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.transition = Conv2dLayer(in_channels, channels, 1, down=2 if down else 1)  # no activation (Fig. 5)
        self.res0 = BottleneckBlock(channels, bottleneck_channels)
        self.res1 = BottleneckBlock(channels, bottleneck_channels)
        if resolution > 4:
            self.tofeat0 = Conv2dLayer(channels, feat_channels, 1, activation="lrelu", down=2)
            self.tofeat1 = Conv2dLayer(channels, feat_channels, 1, activation="lrelu")
        else:  # "one toFeat layer without leaky ReLU in the 4x4 stage"
            self.tofeat1 = Conv2dLayer(channels, feat_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.res1(self.res0(self.transition(x)))
        heads = [self.tofeat0, self.tofeat1] if self.resolution > 4 else [self.tofeat1]
        return x, [head(x) for head in heads]


class RenderEncoder(nn.Module):
    """E: rep [N, 9, R, R] float32 in [-1, 1] -> feats, 2*log2(R)-3 maps in synthesis conv order (eq. 14).

    feats[k] has shape [N, feat_channels[r_k], s_k, s_k] with r_k / s_k the synthesis `layer_resolutions` /
    `feat_resolutions` of conv layer k: [b4.conv1 @4, b8.conv0 @4, b8.conv1 @8, ..., bR.conv0 @R/2, bR.conv1 @R].
    Stage width at r is min(channel_base // r, channel_max); the bottleneck width is that // bottleneck_divisor.
    feat_channels: None (= the stage width), one int for every resolution, or {resolution: channels}.
    """

    def __init__(
        self,
        img_resolution: int,                                  # R: size of rep and of the generated image
        rep_channels: int = REP_CHANNELS,                     # 9: render r, albedo a, normals n (training/rep.py)
        channel_base: int = 16384,                            # stage width at r = min(channel_base // r, channel_max)
        channel_max: int = 512,
        feat_channels: int | dict[int, int] | None = None,    # F_r channels of each injected map c (None = width)
        bottleneck_divisor: int = 4,                          # residual bottleneck width = stage width // this
    ) -> None:
        super().__init__()
        self.img_resolution, self.rep_channels = img_resolution, rep_channels
        self.resolutions = block_resolutions(img_resolution)[::-1]  # R, R/2, ..., 4
        widths = {r: channels_at(r, channel_base, channel_max) for r in self.resolutions}
        if feat_channels is None:
            feat_channels = dict(widths)
        elif isinstance(feat_channels, int):
            feat_channels = dict.fromkeys(self.resolutions, feat_channels)
        feat_channels = {int(r): int(c) for r, c in feat_channels.items()}  # JSON round-trips str keys
        if set(feat_channels) != set(self.resolutions) or min(feat_channels.values()) < 1:
            raise UserError(f"feat_channels must give >= 1 channel for each resolution in {sorted(self.resolutions)}")
        self.feat_channels = {r: feat_channels[r] for r in sorted(feat_channels)}  # the synthesis network's seam
        in_channels = rep_channels
        for res in self.resolutions:
            stage = EncoderStage(
                in_channels, widths[res], self.feat_channels[res], resolution=res, down=(res < img_resolution),
                bottleneck_channels=max(widths[res] // bottleneck_divisor, 1),
            )  # fmt: skip
            setattr(self, f"b{res}", stage)
            in_channels = widths[res]

    def forward(self, rep: torch.Tensor) -> list[torch.Tensor]:
        expected = (self.rep_channels, self.img_resolution, self.img_resolution)
        if rep.ndim != 4 or tuple(rep.shape[1:]) != expected:
            raise UserError(f"rep must have shape [N, {', '.join(map(str, expected))}], got {tuple(rep.shape)}")
        x, feats_per_stage = rep.to(self.b4.transition.weight.dtype), []  # [N, 9, R, R]; float32 unless cast
        for res in self.resolutions:  # R, R/2, ..., 4
            x, stage_feats = getattr(self, f"b{res}")(x)  # x [N, width_r, r, r]; feats [N, F_r, r/2 | r, ...]
            feats_per_stage.append(stage_feats)
        # Stages run high -> low resolution; the synthesis consumes low -> high (c_{n-i} feeds layer i, eq. 7).
        return [f for stage_feats in reversed(feats_per_stage) for f in stage_feats]  # 2 log2(R) - 3 maps
