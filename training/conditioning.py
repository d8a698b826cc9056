"""The 3dfm design's render encoder (3D-FM GAN, Liu et al. ECCV 2022): rep(p) -> input tensor and style scale.

3D-FM GAN conditions StyleGAN2 on a render through two encoders (adobe/3D-FM-GAN): E_Tsr's 512 x 4 x 4 output
REPLACES the synthesis network's constant input, and E_W's vector multiplies the style code of every layer
(multiplicative co-modulation: style_i = E_W(render) * E_W+(photo)_i). For random generation there is no photo,
so the mapping network's w plays E_W+'s part: ws_i <- E_W(rep) * ws_i. Both encoders are ResNet-18s there; here one
StyleGAN2-style strided conv trunk (R -> 4, the discriminator's widths) with two heads, so that the design costs
about as much as the method's E. Its only G-phase term is 3D-FM GAN's face-region L2 to the render
(training.imitative); its LPIPS / L1 / ArcFace terms need paired target photos and are absent.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_utils.errors import UserError
from training.layers import Conv2dLayer, FullyConnectedLayer, block_resolutions, channels_at
from training.rep import REP_CHANNELS


class CoModEncoder(nn.Module):
    """rep [N, 9, R, R] in [-1, 1] -> (x4 [N, C4, 4, 4] for synthesis b4's input, scale [N, w_dim] for every w).

    scale's head has bias 1 (as StyleGAN2's style affines), so the styles start near those of w alone.
    """

    def __init__(self, img_resolution: int, w_dim: int, out_channels: int, channel_base: int = 16384,
                 channel_max: int = 512) -> None:  # fmt: skip
        super().__init__()
        self.img_resolution = img_resolution
        resolutions = block_resolutions(img_resolution)[:0:-1]  # R, R/2, ..., 8
        self.fromrep = Conv2dLayer(REP_CHANNELS, channels_at(img_resolution, channel_base, channel_max), 1,
                                   activation="lrelu")  # fmt: skip
        self.num_down = len(resolutions)
        for i, res in enumerate(resolutions):
            conv = Conv2dLayer(channels_at(res, channel_base, channel_max),
                               channels_at(res // 2, channel_base, channel_max), 3, activation="lrelu", down=2)
            setattr(self, f"down{i}", conv)
        c4 = channels_at(4, channel_base, channel_max)
        self.totensor = Conv2dLayer(c4, out_channels, 3)  # E_Tsr's head: the synthesis input at 4 x 4
        self.toscale = FullyConnectedLayer(c4 * 16, w_dim, bias_init=1)  # E_W's head: the co-modulating vector

    def forward(self, rep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rep.ndim != 4 or rep.shape[1:] != (REP_CHANNELS, self.img_resolution, self.img_resolution):
            raise UserError(f"rep must be [N, {REP_CHANNELS}, {self.img_resolution}, {self.img_resolution}], "
                            f"got {tuple(rep.shape)}")  # fmt: skip
        x = self.fromrep(rep.to(self.fromrep.weight.dtype))
        for i in range(self.num_down):
            x = getattr(self, f"down{i}")(x)  # [N, C_r, r, r] -> r / 2
        return self.totensor(x), self.toscale(x.flatten(1))
