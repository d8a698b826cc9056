"""StyleGAN2 generator with the per-layer 3DMM feature seam of the paper (eq. 7); D is in discriminator.py.

Layout, initialisation and state-dict key names follow StyleGAN2 (ADA-PyTorch `paper256`), so that readers and
weight converters recognise them: `mapping.fc0.weight`, `synthesis.b4.const`, `synthesis.b8.conv0.affine.weight`,
`b256.fromrgb.weight`, `b4.fc.weight`, ... Images are float32 NCHW in [-1, 1] (nominal; no final tanh/clamp).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deep3drecon.coeffs import NUM_COEFFS
from torch_utils.errors import UserError
from torch_utils.misc import fp16_blocks_active
from torch_utils.ops import bias_act, modulated_conv, upfirdn2d
from training.condition import Condition
from training.conditioning import CoModEncoder
from training.designs import COND_KINDS
from training.encoder import RenderEncoder
from training.layers import FullyConnectedLayer, block_resolutions, channels_at, fir_filter


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each sample of x [N, C] to unit mean square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------------------------
# Generator.


class MappingNetwork(nn.Module):
    """z [N, z_dim] (any scale; normalised by its 2nd moment), cond -> ws [N, num_ws, w_dim], all rows equal.

    The method's mapping network ignores the condition (p enters through the synthesis network, eq. 7); it takes
    one so that every design is called the same way, G.mapping(z, cond). mapping_input (training.designs.CondKind)
    says what else its first layer sees: "z" nothing; "embed" StyleGAN2-ADA's label path, normalise(embed(p)) with
    embed a linear c_dim -> w_dim layer (lr multiplier 1), concatenated after normalise(z); "raw" DiscoFaceGAN's,
    [z, p] without any normalisation (raw coefficient scales enter the first layer).
    """

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
        c_dim: int = 0,                 # length of p when the mapping sees it (257), else 0
        mapping_input: str = "z",       # "z" | "embed" | "raw" (class docstring)
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta, self.c_dim, self.mapping_input = w_avg_beta, c_dim, mapping_input
        if (mapping_input == "z") != (c_dim == 0) or mapping_input not in ("z", "embed", "raw"):
            raise UserError(f"mapping_input '{mapping_input}' with c_dim {c_dim}: z needs 0, embed/raw need p's length")
        first_in = {"z": z_dim, "embed": z_dim + w_dim, "raw": z_dim + c_dim}[mapping_input]
        if mapping_input == "embed":  # created first, as StyleGAN2-ADA's `mapping.embed`
            self.embed = FullyConnectedLayer(c_dim, w_dim)
        for i in range(num_layers):
            in_features = first_in if i == 0 else w_dim
            layer = FullyConnectedLayer(in_features, w_dim, activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        cond: Condition | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        dtype = self.w_avg.dtype  # float32 unless the module was cast
        if self.mapping_input == "z":  # the method: p does not enter here
            x = normalize_2nd_moment(z.to(dtype))
        elif cond is None:
            raise UserError("this mapping network takes p: pass a Condition")
        elif self.mapping_input == "embed":  # StyleGAN2-ADA: both halves normalised by their 2nd moment
            x = torch.cat([normalize_2nd_moment(z.to(dtype)), normalize_2nd_moment(self.embed(cond.p.to(dtype)))], 1)
        else:  # "raw", DiscoFaceGAN: coefficient values and noise side by side, no normalisation
            x = torch.cat([z.to(dtype), cond.p.to(dtype)], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas:  # only the caller decides when w_avg moves (SG3 convention: the D-on-fakes pass)
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def extra_repr(self) -> str:
        extra = f", c_dim={self.c_dim}, mapping_input={self.mapping_input}" if self.c_dim else ""
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, num_layers={self.num_layers}{extra}"


class SynthesisLayer(nn.Module):
    """Modulated conv + noise + lrelu: x [N, in, q, q], w [N, w_dim], feat [N, F, q, q] -> [N, out, r, r], q = r/up.

    The 3DMM seam (paper eq. 7): feat (F = feat_channels auxiliary maps) is concatenated to the input before the
    modulated conv and its channels get style exactly 1, independent of w; demodulation runs over the whole weight.
    feat_style "affine" is the method-modulated ablation: the feat channels get styles s(w) from an affine of their
    own (`feat_affine`, bias 1 like every style), so d^2 l / dz dc is no longer zero (eq. 8 broken).
    """

    def __init__(
        self,
        in_channels: int,                # channels of x coming from the previous layer (each gets a style from w)
        out_channels: int,               # channels produced
        w_dim: int,                      # width of the w that drives this layer's styles
        resolution: int,                 # output size r (and of the noise map)
        kernel_size: int = 3,            # conv kernel; padding keeps the size (before upsampling)
        up: int = 1,                     # 2 for the first conv of a block: FIR-upsample q -> r inside the conv
        use_noise: bool = True,          # per-pixel noise, one map shared by all channels, learned strength
        activation: str = "lrelu",       # bias_act activation after the conv
        conv_clamp: float | None = None,  # clamp pre-activations to +-conv_clamp (fp16 safety, StyleGAN2 paper256)
        feat_channels: int = 0,          # F injected 3DMM feature channels (eq. 7), style fixed to 1; 0 = baseline
        feat_style: str = "one",         # "one" (eq. 7) | "affine" (ablation: the feat channels' style is s(w))
        feat_init: str = "zero",         # injected-feature weight columns: "zero" | "paper" (N(0, 1) like the rest)
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.feat_channels = in_channels, out_channels, feat_channels
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain
        # Styles only for the w-driven channels: the injected channels have no affine at all (eq. 7, s_c = 1).
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        weight = torch.randn([out_channels, in_channels + feat_channels, kernel_size, kernel_size])
        # "zero": the injected-feature columns start at zero, so at step 0 the layer equals the plain StyleGAN2 layer
        # (demodulation included). "paper": N(0, 1) like every other column (the paper's init; TrainConfig's
        # default for runs from scratch). Either way the same random numbers are drawn. --init-from sets the
        # columns it cannot copy to zero itself (training.interop.init_from).
        if feat_init not in ("zero", "paper"):
            raise UserError(f"feat_init must be 'zero' or 'paper', not '{feat_init}'")
        if feat_init == "zero":
            weight[:, in_channels:] = 0
        self.weight = nn.Parameter(weight)
        if feat_style not in ("one", "affine"):
            raise UserError(f"feat_style must be 'one' or 'affine', not '{feat_style}'")
        self.feat_style = feat_style
        if feat_channels and feat_style == "affine":  # drawn after `weight`: the method's draws stay where they were
            self.feat_affine = FullyConnectedLayer(w_dim, feat_channels, bias_init=1)
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        feat: torch.Tensor | None = None,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1.0,
    ) -> torch.Tensor:
        styles = self.affine(w)  # [N, in]
        if self.feat_channels:
            if feat is None or feat.shape[1] != self.feat_channels:
                raise UserError(
                    f"this layer needs feat with {self.feat_channels} channels (the injected 3DMM features)"
                )
            # eq. 7: the injected features c enter here, concatenated to x, with style exactly 1.
            x = torch.cat([x, feat.to(x.dtype)], dim=1)  # [N, in + F, q, q]
            if self.feat_style == "affine":  # method-modulated: s(w) on the injected channels too
                feat_styles = self.feat_affine(w)
            else:
                feat_styles = styles.new_ones([styles.shape[0], self.feat_channels])
            styles = torch.cat([styles, feat_styles], dim=1)  # [N, in + F]
        noise = None
        if self.use_noise and noise_mode == "random":  # one map shared by all channels, fresh per sample
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv.modulated_conv2d(
            x, self.weight, styles, noise=noise, up=self.up, padding=self.padding, resample_filter=self.resample_filter,
            flip_weight=(self.up == 1), fused_modconv=fused_modconv,
        )  # fmt: skip  # [N, out, r, r]
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, feat_channels={self.feat_channels}, out_channels={self.out_channels}, "
            f"resolution={self.resolution}, up={self.up}"
        )


class ToRGBLayer(nn.Module):
    """1x1 modulated conv, no demodulation, no aux input: x [N, in, r, r], w [N, w_dim] -> [N, img_channels, r, r]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)  # equalized lr moved onto the style (no demodulation here)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv.modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """Skip-generator block: x [N, in, r/2, r/2] (or const), img [N, 3, r/2, r/2] -> x [N, out, r, r], img (at r)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        use_fp16: bool = False,
        conv_clamp: float | None = None,
        feat_channels: int = 0,
        feat_style: str = "one",
        const_input: bool = True,        # False (3dfm): the first block's input comes from the caller, no const
        feat_init: str = "zero",
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer("resample_filter", fir_filter())
        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, feat_channels=feat_channels,
                            feat_style=feat_style, feat_init=feat_init)
        if in_channels == 0 and const_input:  # first block: learned constant input, a single conv
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        feats: list[torch.Tensor | None],
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # fp16 only on CUDA (CPU half convs are slow); parameters stay fp32 and are cast per call.
        use_fp16 = self.use_fp16 and not force_fp32 and fp16_blocks_active(ws.device)
        param_dtype = self.conv1.weight.dtype  # float32 unless the whole module was cast (e.g. .double() in tests)
        dtype = torch.float16 if use_fp16 else param_dtype
        if fused_modconv is None:
            fused_modconv = not self.training  # plain convs train faster; grouped conv is faster at inference
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0 and x is not None:  # 3dfm: the encoder's 4x4 tensor instead of the constant
            x = x.to(dtype)
        elif self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x.to(dtype), next(w_iter), feats[0], noise_mode=noise_mode, fused_modconv=fused_modconv)
        x = self.conv1(x, next(w_iter), feats[-1], noise_mode=noise_mode, fused_modconv=fused_modconv)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(param_dtype)  # RGB sum stays full precision
        img = y if img is None else upfirdn2d.upsample2d(img, self.resample_filter) + y  # skip architecture
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim], cond -> img [N, img_channels, R, R] float32, ~[-1, 1].

    With encoder_kwargs (the method) it owns the render encoder E (`encoder`, training/encoder.py) and injects
    E(cond.rep), one feature map per conv layer, as in eq. 7; without, it is StyleGAN2's synthesis network.
    feat_channels[r] = number of 3DMM feature channels injected into EACH of the conv layers of block r (eq. 7).
    Per conv layer, in synthesis order [b4.conv1, b8.conv0, b8.conv1, ..., bR.conv1]: `layer_resolutions` (block
    resolution), `feat_resolutions` (spatial size of the injected map = the layer's input size, r/2 for conv0),
    `feat_layer_channels` (its channel count).
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        encoder_kwargs: dict | None = None,
        feat_style: str = "one",          # style of the injected channels: "one" (eq. 7) | "affine" (ablation)
        comod: bool = False,              # 3dfm: CoModEncoder(rep) gives b4's input and multiplies every w
        feat_init: str = "zero",          # injected-feature weight columns at init: "zero" | "paper" (SynthesisLayer)
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = block_resolutions(img_resolution)
        # E first: its weights draw from the RNG before the blocks', and its parameters come first (optimizer order).
        self.encoder = RenderEncoder(img_resolution=img_resolution, **encoder_kwargs) if encoder_kwargs else None
        feat_channels = self.encoder.feat_channels if self.encoder is not None else {}
        self.comod = None
        if comod:  # 3D-FM GAN (training.conditioning)
            self.comod = CoModEncoder(img_resolution, w_dim, channels_at(4, channel_base, channel_max), channel_base,
                                      channel_max)  # fmt: skip
        fp16_resolution = max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)
        self.layer_resolutions, self.feat_resolutions, self.feat_layer_channels = [], [], []
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            out_channels = channels_at(res, channel_base, channel_max)
            block = SynthesisBlock(
                in_channels, out_channels, w_dim=w_dim, resolution=res, img_channels=img_channels,
                use_fp16=(res >= fp16_resolution), conv_clamp=conv_clamp, feat_channels=feat_channels.get(res, 0),
                feat_style=feat_style, const_input=not (comod and res == 4), feat_init=feat_init,
            )  # fmt: skip
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
            self.layer_resolutions += [res] * block.num_conv
            self.feat_resolutions += [res // 2, res][2 - block.num_conv :]
            self.feat_layer_channels += [feat_channels.get(res, 0)] * block.num_conv
        self.num_ws += 1  # the last ToRGB; every other ToRGB shares its w with the next block's conv0
        self.num_conv_layers = len(self.layer_resolutions)

    def check_feats(self, feats: list[torch.Tensor] | None, batch_size: int) -> None:
        """Raise UserError unless feats matches feat_layer_channels / feat_resolutions (or is None when unused)."""
        if feats is None:
            if any(self.feat_layer_channels):
                raise UserError("this synthesis network injects 3DMM features: pass feats (one per conv layer)")
            return
        if len(feats) != self.num_conv_layers:
            raise UserError(f"expected {self.num_conv_layers} feature maps (one per conv layer), got {len(feats)}")
        for i, (f, c, r) in enumerate(zip(feats, self.feat_layer_channels, self.feat_resolutions)):
            if c and tuple(f.shape) != (batch_size, c, r, r):
                raise UserError(f"feats[{i}] has shape {tuple(f.shape)}, expected {(batch_size, c, r, r)}")

    def injected_features(self, cond: Condition | None) -> list[torch.Tensor] | None:
        """E(cond.rep): one [N, F_l, r_l, r_l] map per conv layer (eq. 14), or None for a network without E."""
        if self.encoder is None:
            return None
        if cond is None:
            raise UserError("this generator is 3DMM-conditional: pass a Condition (p and rep(p))")
        return self.encoder(cond.rep)

    def forward(
        self,
        ws: torch.Tensor,
        cond: Condition | None = None,
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise UserError(f"ws has shape {tuple(ws.shape)}, expected [N, {self.num_ws}, {self.w_dim}]")
        if noise_mode not in ("random", "const", "none"):
            raise UserError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        feats = self.injected_features(cond)  # E(rep(p)), or None (eq. 7's c, one map per conv layer)
        self.check_feats(feats, ws.shape[0])  # feats[i]: [N, feat_layer_channels[i], feat_resolutions[i] ** 2]
        x = img = None  # x: [N, C_r, r, r] features, img: [N, 3, r, r] running RGB (skip architecture)
        if self.comod is not None:  # 3dfm: x4 replaces the constant input; ws_i <- scale * ws_i (co-modulation)
            if cond is None:
                raise UserError("this generator is 3DMM-conditional: pass a Condition (p and rep(p))")
            x, scale = self.comod(cond.rep)
            ws = ws * scale.unsqueeze(1).to(ws.dtype)
        w_idx = feat_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)  # [N, num_conv + 1, w_dim]
            block_feats = [None] * block.num_conv if feats is None else feats[feat_idx : feat_idx + block.num_conv]
            x, img = block(x, img, block_ws, block_feats, noise_mode, force_fp32, fused_modconv)  # [N, C, res, res]
            w_idx += block.num_conv  # the block's ToRGB w is shared with the next block's conv0
            feat_idx += block.num_conv
        return img  # [N, img_channels, R, R]


class Generator(nn.Module):
    """G(z [N, z_dim], cond) -> img [N, img_channels, R, R] float32, ~[-1, 1]; the one place that composes
    mapping -> (condition) -> synthesis: G(z, cond) = G.synthesis(G.mapping(z, cond), cond).

    cond: a training.condition.Condition (p [N, 257] and rep(p) [N, 9, R, R] in [-1, 1]) or None for an
    unconditional G. cond_kind (a key of training.designs.COND_KIND_NEEDS) says how the condition enters; None
    derives it as in snapshots written before it existed: "inject" with encoder_kwargs, else "none". `needs` lists
    the Condition fields this G reads (() for StyleGAN2, ("rep",) for the method).
    """

    def __init__(
        self,
        z_dim: int = 64,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        mapping_kwargs: dict | None = None,
        synthesis_kwargs: dict | None = None,
        encoder_kwargs: dict | None = None,
        cond_kind: str | None = None,
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, img_resolution, img_channels
        self.cond_kind = cond_kind or ("inject" if encoder_kwargs is not None else "none")
        if self.cond_kind not in COND_KINDS:
            raise UserError(f"unknown cond_kind '{self.cond_kind}'; choose one of: {', '.join(COND_KINDS)}")
        kind = COND_KINDS[self.cond_kind]  # the one table of how p enters (training.designs)
        if kind.encoder != (encoder_kwargs is not None):
            raise UserError(f"cond_kind '{self.cond_kind}' and encoder_kwargs disagree: only injection uses E")
        self.needs = kind.needs
        synthesis_kwargs = dict(synthesis_kwargs or {})
        if "encoder_kwargs" in synthesis_kwargs:
            raise UserError("pass encoder_kwargs to the Generator, not inside synthesis_kwargs")
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, encoder_kwargs=encoder_kwargs,
                                          feat_style=kind.feat_style, comod=kind.comod, **synthesis_kwargs)  # fmt: skip
        self.num_ws = self.synthesis.num_ws
        c_dim = NUM_COEFFS if kind.mapping_input != "z" else 0
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, c_dim=c_dim, mapping_input=kind.mapping_input,
                                      **(mapping_kwargs or {}))  # fmt: skip

    def forward(
        self,
        z: torch.Tensor,
        cond: Condition | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        noise_mode: str = "random",
        force_fp32: bool = False,
    ) -> torch.Tensor:
        if bool(self.needs) != (cond is not None):
            raise UserError("this generator is 3DMM-conditional: pass a Condition (p and rep(p))" if self.needs else
                            "this generator is unconditional (StyleGAN2): pass cond=None")
        ws = self.mapping(z, cond, truncation_psi, truncation_cutoff, update_emas=update_emas)  # [N, num_ws, w_dim]
        # The method's condition enters each conv layer in SynthesisLayer.forward (above), with style 1 (eq. 7);
        # a mapping design's entered above, in the mapping network's input.
        return self.synthesis(ws, cond, noise_mode=noise_mode, force_fp32=force_fp32)  # [N, 3, R, R]

    @staticmethod
    def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict written before E moved into the synthesis network (`encoder.*`) with today's names
        (`synthesis.encoder.*`); the parameter order, and so an optimizer's state, is the same in both."""
        return {("synthesis." + k if k.startswith("encoder.") else k): v for k, v in state.items()}
