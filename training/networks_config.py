"""Turns a TrainConfig into the keyword arguments of Generator / Discriminator (stored in every snapshot)."""

from __future__ import annotations

from training.config import TrainConfig


def generator_kwargs(c: TrainConfig, resolution: int) -> dict:
    """Generator(**kwargs) for this run: mapping depth, z_dim, channels, and the render encoder if --cond."""
    encoder_kwargs = None
    if c.cond:
        encoder_kwargs = dict(channel_base=c.enc_channel_base, channel_max=c.enc_channel_max,
                              feat_channels=c.enc_feat_channels)
    return dict(
        z_dim=c.z_dim, w_dim=c.w_dim, img_resolution=resolution, img_channels=3,
        mapping_kwargs=dict(num_layers=c.map_layers),
        synthesis_kwargs=dict(channel_base=c.channel_base, channel_max=c.channel_max,
                              num_fp16_res=c.num_fp16_res, conv_clamp=c.conv_clamp),
        encoder_kwargs=encoder_kwargs,
    )


def discriminator_kwargs(c: TrainConfig, resolution: int) -> dict:
    """Discriminator(**kwargs): unconditional resnet D with minibatch-stddev group c.mbstd_group."""
    return dict(img_resolution=resolution, img_channels=3, channel_base=c.channel_base, channel_max=c.channel_max,
                num_fp16_res=c.num_fp16_res, conv_clamp=c.conv_clamp, mbstd_group_size=c.mbstd_group)
