"""Tests for training/networks.py (G with the eq. 7 feature seam), training/discriminator.py and training/encoder.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import rep_cond
from torch_utils.errors import UserError
from training.discriminator import Discriminator, MinibatchStdLayer
from training.encoder import BottleneckBlock, RenderEncoder
from training.networks import Generator, MappingNetwork, SynthesisLayer, SynthesisNetwork

TINY_SYN = dict(channel_base=128, channel_max=8)
TINY_ENC = dict(channel_base=64, channel_max=8, feat_channels=3)


def tiny_generator(res: int = 16, conditional: bool = True) -> Generator:
    torch.manual_seed(0)
    G = Generator(
        z_dim=8, w_dim=16, img_resolution=res, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=TINY_SYN,
        encoder_kwargs=TINY_ENC if conditional else None,
    )  # fmt: skip
    for layer in G.synthesis.modules():  # trained injected-feature columns (they start at zero)
        if isinstance(layer, SynthesisLayer) and layer.feat_channels:
            layer.weight.data[:, layer.in_channels :].normal_()
    return G


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Shapes, counts, names.


def test_unconditional_shapes_and_num_ws() -> None:
    G = tiny_generator(16, conditional=False)
    assert G.num_ws == 2 * 4 - 2 and G.needs == () and G.cond_kind == "none" and G.synthesis.encoder is None
    img = G(torch.randn(2, 8))
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32 and torch.isfinite(img).all()
    D = Discriminator(16, **TINY_SYN, mbstd_group_size=2)
    assert D(img).shape == (2, 1)
    with pytest.raises(UserError):
        G(torch.randn(2, 8), rep_cond(torch.zeros(2, 9, 16, 16)))


@pytest.mark.parametrize("res", [16, 32])
def test_conditional_shapes_and_feats_match_synthesis(res: int) -> None:
    G = tiny_generator(res)
    syn = G.synthesis
    rep = torch.rand(2, 9, res, res) * 2 - 1
    feats = syn.injected_features(rep_cond(rep))
    assert G.needs == ("rep",) and G.cond_kind == "inject"
    assert len(feats) == syn.num_conv_layers == 2 * int(np.log2(res)) - 3
    for f, c, r in zip(feats, syn.feat_layer_channels, syn.feat_resolutions):
        assert f.shape == (2, c, r, r)
    assert G(torch.randn(2, 8), rep_cond(rep)).shape == (2, 3, res, res)
    with pytest.raises(UserError):
        G(torch.randn(2, 8))  # a conditional G needs rep


def test_256_layout_num_ws_and_feats() -> None:
    # Tiny widths keep the 256x256 forward cheap; the layout (counts, spatial sizes) does not depend on widths.
    G = Generator(z_dim=4, w_dim=8, img_resolution=256, synthesis_kwargs=dict(channel_base=512, channel_max=2),
                  encoder_kwargs=dict(channel_base=512, channel_max=2, feat_channels=1))  # fmt: skip
    assert G.num_ws == 14 and G.synthesis.num_conv_layers == 13
    assert G.synthesis.layer_resolutions == [4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert G.synthesis.feat_resolutions == [4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256]
    with torch.no_grad():
        cond = rep_cond(torch.zeros(1, 9, 256, 256))
        feats = G.synthesis.injected_features(cond)
        assert [f.shape[-1] for f in feats] == G.synthesis.feat_resolutions
        assert G(torch.randn(1, 4), cond).shape == (1, 3, 256, 256)


def test_paper256_parameter_counts() -> None:
    # Built on CPU (~3 s): cheaper here than the one-time import cost of meta-device decompositions.
    G = Generator(z_dim=64, w_dim=512, img_resolution=256, mapping_kwargs=dict(num_layers=2))
    D = Discriminator(256, channel_base=16384)
    G_cond = Generator(z_dim=64, img_resolution=256, mapping_kwargs=dict(num_layers=2), encoder_kwargs={})
    mapping = (64 * 512 + 512) + (512 * 512 + 512)  # fc0 (z_dim 64 -> 512) + fc1 (512 -> 512), weights + biases
    assert count_params(G.mapping) == mapping
    assert count_params(G.synthesis) == 22_666_210  # stylegan2.md 1.4, cbase 16384
    assert count_params(D) == 24_001_089  # stylegan2.md 2.1, cbase 16384
    assert count_params(G_cond.mapping) == mapping
    # The seam adds only conv weight columns for the aux channels (no affine rows): 3*3*out*F per conv layer.
    syn = G_cond.synthesis
    layers = zip(syn.layer_resolutions, syn.feat_layer_channels)
    extra = sum(9 * getattr(syn, f"b{r}").conv1.out_channels * c for r, c in layers)
    assert count_params(G_cond.synthesis) == 22_666_210 + extra


def test_state_dict_names_follow_stylegan2() -> None:
    G, D = tiny_generator(16), Discriminator(16, **TINY_SYN)
    g_keys, d_keys = set(G.state_dict()), set(D.state_dict())
    for key in ["mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.b4.const",
                "synthesis.b4.conv1.affine.weight", "synthesis.b8.conv0.affine.bias", "synthesis.b8.conv0.noise_const",
                "synthesis.b8.conv1.noise_strength", "synthesis.b16.torgb.weight",
                "synthesis.b16.resample_filter"]:  # fmt: skip
        assert key in g_keys, key
    for key in ["b16.fromrgb.weight", "b16.conv0.bias", "b16.conv1.weight", "b8.skip.weight", "b4.conv.weight",
                "b4.fc.weight", "b4.out.bias"]:  # fmt: skip
        assert key in d_keys, key
    assert "b8.fromrgb.weight" not in d_keys and "b8.skip.bias" not in d_keys
    # No aux channels into ToRGB; aux channels widen the conv weights only.
    b8 = G.synthesis.b8
    assert b8.torgb.weight.shape[1] == b8.conv1.out_channels
    assert b8.conv1.weight.shape[1] == b8.conv1.in_channels + 3 and b8.conv1.affine.out_features == b8.conv1.in_channels


def test_constructor_args_survive_json() -> None:
    kwargs = dict(z_dim=8, w_dim=16, img_resolution=16, synthesis_kwargs=TINY_SYN,
                  encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels={4: 1, 8: 2, 16: 3}))  # fmt: skip
    G = Generator(**json.loads(json.dumps(kwargs)))  # dict keys come back as strings
    assert G.synthesis.feat_layer_channels == [1, 2, 2, 3, 3]


def test_fp16_blocks_are_the_top_resolutions() -> None:
    syn = SynthesisNetwork(8, 256, channel_base=512, channel_max=2, num_fp16_res=4)
    D = Discriminator(256, channel_base=512, channel_max=2, num_fp16_res=4)
    assert [r for r in syn.block_resolutions if getattr(syn, f"b{r}").use_fp16] == [32, 64, 128, 256]
    assert [r for r in D.block_resolutions if getattr(D, f"b{r}").use_fp16] == [256, 128, 64, 32]


# ---------------------------------------------------------------------------------------------------------------
# Mapping, truncation, noise.


def test_truncation_and_w_avg_update() -> None:
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, w_dim=16, num_ws=6, num_layers=2, w_avg_beta=0.9)
    z = torch.randn(5, 8)
    mapping.w_avg.copy_(torch.randn(16))
    ws = mapping(z)
    assert ws.shape == (5, 6, 16) and torch.equal(ws[:, 0], ws[:, 5])
    assert torch.allclose(mapping(z, truncation_psi=0), mapping.w_avg.expand(5, 6, 16))
    cut = mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], mapping.w_avg + 0.5 * (ws[:, :2] - mapping.w_avg), atol=1e-6)
    assert torch.equal(cut[:, 2:], ws[:, 2:])
    # z is normalised by its 2nd moment: scale-invariant.
    assert torch.allclose(mapping(3 * z), ws, atol=1e-5)
    old = mapping.w_avg.clone()
    mapping(z)  # no update without update_emas
    assert torch.equal(mapping.w_avg, old)
    mapping(z, update_emas=True)
    assert torch.allclose(mapping.w_avg, 0.9 * old + 0.1 * ws[:, 0].mean(0), atol=1e-6)


def test_noise_modes() -> None:
    G = tiny_generator(16).eval()
    for p in G.synthesis.parameters():
        if p.ndim == 0:  # noise_strength: make noise visible
            p.data.fill_(0.5)
    z, rep = torch.randn(2, 8), rep_cond(torch.rand(2, 9, 16, 16) * 2 - 1)
    with torch.no_grad():
        a, b = G(z, rep, noise_mode="const"), G(z, rep, noise_mode="const")
        c, d = G(z, rep, noise_mode="random"), G(z, rep, noise_mode="none")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)


# ---------------------------------------------------------------------------------------------------------------
# Discriminator.


def test_r1_double_backward_matches_finite_differences() -> None:
    torch.manual_seed(0)
    D = Discriminator(16, **TINY_SYN, mbstd_group_size=2).double()
    img = torch.randn(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)

    def r1_penalty() -> torch.Tensor:
        (grad,) = torch.autograd.grad(D(img).sum(), img, create_graph=True)
        return grad.square().sum([1, 2, 3]).mean()

    r1_penalty().backward()
    for name, p in D.named_parameters():
        if name != "b4.out.bias":  # the last bias cannot change grad_img D, so it gets no R1 gradient
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    weight, direction, eps = D.b16.conv0.weight, torch.randn_like(D.b16.conv0.weight), 1e-6
    analytic = (weight.grad * direction).sum()
    with torch.no_grad():
        weight += eps * direction
    plus = r1_penalty().detach()
    with torch.no_grad():
        weight -= 2 * eps * direction
    minus = r1_penalty().detach()
    assert analytic.abs() > 0
    assert torch.allclose(analytic, (plus - minus) / (2 * eps), rtol=1e-6)


def test_minibatch_std_matches_naive_strided_groups() -> None:
    torch.manual_seed(0)
    n, c, h, w, group, f = 8, 6, 3, 3, 4, 2
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    out = MinibatchStdLayer(group, f)(x)
    assert out.shape == (n, c + f, h, w) and torch.equal(out[:, :c], x)
    num_groups = n // group
    for i in range(n):
        members = [j for j in range(n) if j % num_groups == i % num_groups]  # strided grouping
        assert len(members) == group
        for k in range(f):
            sl = x[members][:, k * (c // f) : (k + 1) * (c // f)]
            std = (sl.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(out[i, c + k], std.expand(h, w))
    with pytest.raises(UserError):
        MinibatchStdLayer(4)(torch.randn(6, 2, 2, 2))


# ---------------------------------------------------------------------------------------------------------------
# The 3DMM seam (eq. 7 / eq. 8).


def seam_layer(**kwargs) -> SynthesisLayer:
    torch.manual_seed(1)
    layer = SynthesisLayer(3, 4, w_dim=8, resolution=5, feat_channels=2, use_noise=False, **kwargs)
    layer.affine.weight.data.normal_()
    layer.affine.bias.data.uniform_(0.2, 2.0)  # make styles clearly different from 1 per channel
    layer.weight.data[:, 3:].normal_()  # trained injected-feature columns (they start at zero)
    return layer


def test_injected_channels_have_style_one_naive_reference() -> None:
    # Independent plain-PyTorch eq. 7 with demodulation over the whole weight: cat[s*x, 1*c], per sample.
    layer = seam_layer(conv_clamp=0.7)
    layer.bias.data.normal_()
    x, c, w = torch.randn(2, 3, 5, 5), torch.randn(2, 2, 5, 5), torch.randn(2, 8)
    out = layer(x, w, c, noise_mode="none", fused_modconv=False)
    for fused in (True, False):
        assert torch.allclose(layer(x, w, c, noise_mode="none", fused_modconv=fused), out, atol=1e-5)
    s = w @ (layer.affine.weight * layer.affine.weight_gain).t() + layer.affine.bias
    for n in range(2):
        style = torch.cat([s[n], torch.ones(2)])
        wt = layer.weight * style[None, :, None, None]
        wt = wt * (wt.square().sum([1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        y = F.conv2d(torch.cat([x[n], c[n]])[None], wt, padding=1) + layer.bias[None, :, None, None]
        y = (F.leaky_relu(y, 0.2) * np.sqrt(2)).clamp(-0.7, 0.7)
        assert torch.allclose(out[n], y[0], atol=1e-5)


def test_eq8_mixed_derivative_is_zero() -> None:
    # Paper eq. 8 omits demodulation. The same setting inside the real layer: with the w-driven weight columns
    # zeroed, demodulation no longer depends on z, and d^2 l / dz dc must vanish exactly. Modulating c by a
    # style derived from w (the wrong seam) makes it non-zero.
    layer = seam_layer(activation="linear")
    layer.weight.data[:, :3] = 0
    mapping = MappingNetwork(z_dim=6, w_dim=8, num_ws=1)
    z = torch.randn(1, 6, requires_grad=True)
    c = torch.randn(1, 2, 5, 5, requires_grad=True)
    x = torch.randn(1, 3, 5, 5)
    out = layer(x, mapping(z)[:, 0], c, noise_mode="none")
    u = torch.randn_like(out)
    (grad_c,) = torch.autograd.grad((u * out).sum(), c, create_graph=True)
    assert grad_c.abs().sum() > 0
    (mixed,) = torch.autograd.grad((torch.randn_like(grad_c) * grad_c).sum(), z, allow_unused=True)
    assert mixed is None or torch.equal(mixed, torch.zeros_like(mixed))


def test_dependence_on_c_is_independent_of_w_and_affine() -> None:
    # Full layer with demodulation: dl/dc may change with w only by one positive scale per output channel (the
    # demodulation coefficient), however w or the affine for w changes; a style on c would change its direction.
    layer = seam_layer(activation="linear")
    x, c = torch.randn(1, 3, 5, 5), torch.zeros(1, 2, 5, 5, requires_grad=True)

    def grad_c_per_out_channel(w: torch.Tensor) -> torch.Tensor:
        out = layer(x, w, c, noise_mode="none")
        rows = [torch.autograd.grad(out[:, o].sum(), c, retain_graph=True)[0].flatten() for o in range(4)]
        return torch.stack(rows)  # [out_channels, 2 * 5 * 5]

    g1 = grad_c_per_out_channel(torch.randn(1, 8))
    g2 = grad_c_per_out_channel(3 * torch.randn(1, 8))
    layer.affine.weight.data.normal_()
    layer.affine.bias.data.uniform_(0.2, 2.0)
    g3 = grad_c_per_out_channel(torch.randn(1, 8))
    for g in (g2, g3):
        assert not torch.allclose(g, g1)  # demodulation does depend on w ...
        scale = (g * g1).sum(1) / g1.square().sum(1)  # ... but only through a per-output-channel scale
        assert (scale > 0).all()
        assert torch.allclose(g, scale[:, None] * g1, rtol=1e-4, atol=1e-6)


def test_features_change_the_image_and_train() -> None:
    G = tiny_generator(16)
    z = torch.randn(2, 8)
    rep1, rep2 = rep_cond(torch.rand(2, 9, 16, 16) * 2 - 1), rep_cond(torch.rand(2, 9, 16, 16) * 2 - 1)
    img1 = G(z, rep1, noise_mode="const")
    with torch.no_grad():
        assert not torch.allclose(img1, G(z, rep2, noise_mode="const"))
    img1.square().sum().backward()
    assert G.synthesis.encoder.b16.transition.weight.grad.abs().sum() > 0
    assert G.synthesis.encoder.b4.res1.conv2.weight.grad.abs().sum() > 0  # zero-init convs still receive gradient


# ---------------------------------------------------------------------------------------------------------------
# Encoder.


def test_bottleneck_blocks_are_identity_at_init() -> None:
    torch.manual_seed(0)
    block = BottleneckBlock(8, 2)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)
    enc = RenderEncoder(16, **TINY_ENC)
    rep = torch.rand(2, 9, 16, 16) * 2 - 1
    stage = enc.b16
    e = stage.transition(rep)
    assert torch.equal(stage.res1(stage.res0(e)), e)
    # The highest stage keeps the resolution; its conv0 head downsamples to the synthesis conv0 input size.
    _, (f0, f1) = stage(rep)
    assert e.shape[-1] == 16 and f0.shape[-1] == 8 and f1.shape[-1] == 16
    assert not hasattr(enc.b4, "tofeat0") and enc.b4.tofeat1.activation == "linear"
    assert enc.b8.tofeat0.activation == enc.b8.tofeat1.activation == "lrelu"


def test_encoder_rejects_bad_rep() -> None:
    enc = RenderEncoder(16, **TINY_ENC)
    with pytest.raises(UserError):
        enc(torch.zeros(1, 3, 16, 16))
    with pytest.raises(UserError):
        RenderEncoder(16, feat_channels={4: 1, 8: 1})
