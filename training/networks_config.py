"""Turns a TrainConfig into the keyword arguments of Generator / Discriminator (stored in every snapshot)."""

from __future__ import annotations

from deep3drecon.coeffs import NUM_COEFFS
from training.config import TrainConfig
from training.designs import COND_KINDS


def generator_kwargs(config: TrainConfig, resolution: int) -> dict:
    """Generator(**kwargs) for this run: mapping depth, z_dim, channels, and how p enters (config.design)."""
    cond_kind = config.design_spec.cond_kind
    encoder_kwargs = None
    if COND_KINDS[cond_kind].encoder:  # the render encoder E whose features are injected (eq. 7, 14)
        encoder_kwargs = dict(channel_base=config.enc_channel_base, channel_max=config.enc_channel_max,
                              feat_channels=config.enc_feat_channels)
    synthesis_kwargs = dict(channel_base=config.channel_base, channel_max=config.channel_max,
                            num_fp16_res=config.num_fp16_res, conv_clamp=config.conv_clamp)
    if encoder_kwargs is not None:  # the injected-feature columns' init (config.inject_init; --init-from zeroes them)
        synthesis_kwargs["feat_init"] = config.inject_init
    return dict(
        z_dim=config.z_dim, w_dim=config.w_dim, img_resolution=resolution, img_channels=3,
        mapping_kwargs=dict(num_layers=config.map_layers), synthesis_kwargs=synthesis_kwargs,
        encoder_kwargs=encoder_kwargs, cond_kind=cond_kind,
    )


def discriminator_kwargs(config: TrainConfig, resolution: int) -> dict:
    """Discriminator(**kwargs): resnet D with minibatch-stddev group config.mbstd_group; conditioned on p by
    projection only for a design with d_cond (sg2-cond; StyleGAN2-ADA's default D mapping depth 8)."""
    kwargs = dict(img_resolution=resolution, img_channels=3, channel_base=config.channel_base,
                  channel_max=config.channel_max, num_fp16_res=config.num_fp16_res, conv_clamp=config.conv_clamp,
                  mbstd_group_size=config.mbstd_group)
    if config.design_spec.d_cond:  # only then: the default D's kwargs (and snapshots) stay as they were
        kwargs["c_dim"] = NUM_COEFFS
    return kwargs
