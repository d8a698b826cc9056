"""Inverting a real photo into the generator: find (p, w, noise) with G(rep(p), w) ~ the aligned photo.

    photo --detect/align at R--> target x [3, R, R] --FR--> p0 [257]
    minimise  L(G.synthesis(w, cond(p), noise), x) + noise_reg * R(noise)  over w (W or W+), the noise maps,
              and optionally p (starting at p0, kept near it by a quadratic prior)
The 3DMM coefficients are not optimised by default: p from FR is what makes the result editable by group (the
paper's claim is that G follows rep(p) exactly, so the image's pose, expression and light live in p, not in w).

Losses (`PhotoLoss`): without extra weights, a multi-scale pixel distance (mean squared error at R, R/2, ... 8)
plus a distance between FR's own ResNet features of the two images (the FR is loaded anyway); with
`vgg_path`, the pixel term plus an LPIPS-style distance of torchvision VGG-16 features read from that file
(channel-normalised features, squared differences averaged over space, summed over five stages).
Noise maps are regularised as in StyleGAN2's projector (squared spatial autocorrelation at every octave, maps
renormalised to zero mean / unit variance after each step), so that they do not absorb the image.

Public API: `prepare_photo` (detect + align at R), `invert_image(G, fr, renderer, target, ...) -> InversionResult`,
`save_latent` / `load_latent` (the .npz next to the PNGs), `synthesize` (G with explicit noise maps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch.func import functional_call

from deep3drecon.coeffs import NUM_COEFFS
from generation.controlled import to_uint8
from torch_utils.errors import UserError
from torch_utils.outputs import output_file
from torch_utils.progress import trange
from training.condition import Condition
from training.rep import make_rep

LATENT_FORMAT = 1


@dataclass
class InversionOptions:
    """Optimisation settings: steps, W or W+, what is optimised, learning rates and loss weights."""

    steps: int = 500
    w_plus: bool = False  # one w for every layer (W) or one per layer (W+: closer fits, less editable)
    optimize_noise: bool = True
    refine_p: bool = False  # also optimise p jointly, starting at FR's estimate
    lr: float = 0.1  # peak Adam learning rate of w and noise (5% ramp-up, cosine ramp-down over the last 25%)
    p_lr: float = 0.005
    p_prior: float = 1.0  # weight of ||p - p0||^2 / 257 when refine_p
    pixel_weight: float = 1.0
    feature_weight: float = 0.05  # FR-feature or VGG term
    noise_reg: float = 1.0  # weight of the autocorrelation penalty (low resolutions dominate it)
    init_noise: float = 0.05  # w noise at the start, in units of the w spread, ramped to 0 over 75% of the steps
    seed: int = 0

    def check(self) -> None:
        """UserError (one line) on settings that cannot run."""
        if self.steps <= 0:
            raise UserError(f"--steps must be a positive number of optimisation steps, got {self.steps}")
        if self.lr <= 0 or self.p_lr <= 0:
            raise UserError("learning rates must be positive")


@dataclass
class InversionResult:
    """One inverted photo. Images [3, R, R] float32 in [-1, 1] on the CPU; p and p_fr [257]; ws [num_ws, w_dim];
    noise {buffer name: [r, r]}; psnr in dB of the uint8 PNGs; losses per step."""

    target: torch.Tensor
    projected: torch.Tensor
    p: torch.Tensor
    p_fr: torch.Tensor
    ws: torch.Tensor
    noise: dict[str, torch.Tensor]
    psnr: float
    w_plus: bool
    losses: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Photos in, PSNR out.


@dataclass
class PreparedPhoto:
    """An aligned photo: target [3, R, R] in [-1, 1], landmarks [5 | 68, 2] used (source pixels), faces found."""

    target: torch.Tensor
    landmarks: np.ndarray
    num_faces: int | None  # None when the landmarks were given, not detected


def image_to_target(image: PIL.Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [-1, 1] (row 0 = top)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)


def prepare_photo(image: PIL.Image.Image, resolution: int, landmarks: np.ndarray | None = None, detector=None,
                  name: str = "image") -> PreparedPhoto:  # fmt: skip
    """Align a photo to the generator's framing at R (deep3drecon.align), detecting landmarks when none are given."""
    from deep3drecon.align import align_face

    num_faces = None
    if landmarks is None:
        from deep3drecon.landmarks import detect_landmarks, load_face_detector

        landmarks, num_faces = detect_landmarks(image, detector or load_face_detector(), name)
    aligned = align_face(image.convert("RGB"), landmarks, size=resolution)
    return PreparedPhoto(image_to_target(aligned.image), np.asarray(landmarks), num_faces)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images [3, H, W] in [-1, 1], measured on their uint8 PNG quantisation."""
    mse = np.mean((to_uint8(a.cpu()).astype(np.float64) - to_uint8(b.cpu()).astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# ----------------------------------------------------------------------------------------------------------------
# G with explicit noise maps.


def noise_buffers(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The synthesis layers' constant noise maps {name in G.synthesis: [r, r]} (those with noise_strength != 0)."""
    strengths = dict(G.synthesis.named_parameters())
    return {name: buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")
            and float(strengths[name.replace("noise_const", "noise_strength")].detach()) != 0}  # fmt: skip


def synthesize(G: torch.nn.Module, ws: torch.Tensor, cond: Condition | None,
               noise: dict[str, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """G.synthesis(ws [N, num_ws, w_dim], cond) with the const noise maps replaced by `noise` -> [N, 3, R, R]."""
    if not noise:
        return G.synthesis(ws, cond, noise_mode="const")
    # functional_call swaps the buffers for this call only: G's own noise maps are never modified.
    return functional_call(G.synthesis, noise, (ws, cond), {"noise_mode": "const"}, strict=False)


def photo_condition(p: torch.Tensor, renderer: torch.nn.Module, size: int) -> Condition:
    """The Condition of p [N, 257] for G, rep(p) rendered at size on first use (differentiable when p is)."""
    return Condition(p, render=lambda coeffs: make_rep(renderer, coeffs, size))


def _w_statistics(G: torch.nn.Module, cond: Condition, samples: int = 2000) -> tuple[torch.Tensor, float]:
    """Mean w [w_dim] of `samples` fixed z given cond (one row), and the RMS distance of w from it (StyleGAN2
    projector's start)."""
    device = cond.p.device
    z = torch.from_numpy(np.random.RandomState(123).randn(samples, G.z_dim).astype(np.float32)).to(device)
    w = G.mapping(z, Condition(cond.p.expand(samples, -1)))[:, 0]
    mean = w.mean(dim=0)
    return mean, float(((w - mean) ** 2).sum(dim=1).mean().sqrt())


def _noise_penalty(noise: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and octaves of squared 1-pixel autocorrelations (0 for white noise)."""
    total = noise[0].new_zeros([])
    for n in noise:
        x = n[None, None]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean() ** 2 + (x * x.roll(1, dims=2)).mean() ** 2
            if x.shape[-1] <= 8:
                break
            x = F.avg_pool2d(x, 2) * 2  # keeps unit variance for white noise
    return total


# ----------------------------------------------------------------------------------------------------------------
# Losses.


class PhotoLoss(torch.nn.Module):
    """Distance between generated and target images [N, 3, R, R] in [-1, 1] -> scalar (see the module docstring)."""

    def __init__(self, fr: torch.nn.Module | None, vgg_path: str | None = None, pixel_weight: float = 1.0,
                 feature_weight: float = 0.05) -> None:  # fmt: skip
        super().__init__()
        if fr is None and vgg_path is None and feature_weight > 0:
            raise UserError("the built-in loss compares FR features: pass an FR, a VGG-16 path or feature_weight=0")
        self.pixel_weight, self.feature_weight = pixel_weight, feature_weight
        self.vgg = _load_vgg(vgg_path) if vgg_path is not None else None
        self.fr = fr
        self.kind = "pixels + VGG-16 features" if self.vgg is not None else "pixels + FR features"

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of img [N, 3, H, W] in [-1, 1]: VGG-16 (relu1_2 .. relu5_3), or FR's trunk stages."""
        x = (img + 1) / 2
        if self.vgg is not None:
            mean = x.new_tensor([0.485, 0.456, 0.406])[:, None, None]
            std = x.new_tensor([0.229, 0.224, 0.225])[:, None, None]
            x, feats = (F.interpolate(x, size=224, mode="bilinear", antialias=True) - mean) / std, []
            for k, layer in enumerate(self.vgg):
                x = layer(x)
                if k in (3, 8, 15, 22, 29):
                    feats.append(x)
            return feats
        from deep3drecon.reconstructor import resize_to_fr

        trunk = self.fr.net.backbone  # frozen: requires_grad is off, gradients reach only the image
        x = resize_to_fr(x, self.fr.input_size)
        if hasattr(trunk, "stages"):  # the small synthetic-FR trunk: its first four conv stages
            stages = list(trunk.stages)[:4]
        else:  # a ResNet (the release's FR): stem, then layer1-3
            x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
            stages = [trunk.layer1, trunk.layer2, trunk.layer3]
        feats = []
        for stage in stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, img: torch.Tensor, target: torch.Tensor, target_feats: list[torch.Tensor]) -> torch.Tensor:
        pixel, a, b = img.new_zeros([]), img, target
        while True:  # multi-scale: R, R/2, ..., 8
            pixel = pixel + F.mse_loss(a, b)
            if a.shape[-1] <= 8:
                break
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        feature = img.new_zeros([])
        if self.feature_weight > 0:
            for fa, fb in zip(self.features(img), target_feats):
                fa, fb = F.normalize(fa, dim=1), F.normalize(fb, dim=1)  # LPIPS-style unit channel vectors
                feature = feature + ((fa - fb) ** 2).sum(dim=1).mean()
        return self.pixel_weight * pixel + self.feature_weight * feature


def _load_vgg(path: str) -> torch.nn.Module:
    """torchvision VGG-16 `features` from a state dict file (full model or features.* keys), frozen, eval mode."""
    import torchvision

    if not os.path.isfile(path):
        raise UserError(f"--vgg: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable / unsafe file is a user error here
        raise UserError(f"--vgg {path}: not a readable weights-only state dict ({type(exc).__name__})") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    vgg = torchvision.models.vgg16(weights=None).features
    try:
        vgg.load_state_dict(features)
    except RuntimeError as exc:
        raise UserError(f"--vgg {path}: not a torchvision VGG-16 state dict ({str(exc).splitlines()[0]})") from exc
    return vgg.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------
# The optimisation.


def _learning_rate(step: int, steps: int, peak: float) -> float:
    """Peak lr after a 5% linear ramp-up, cosine ramp-down over the last 25% (StyleGAN2 projector schedule)."""
    t = step / steps
    return peak * min(1.0, t / 0.05) * (0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / 0.25)))


def invert_image(G: torch.nn.Module, fr: torch.nn.Module | None, renderer: torch.nn.Module, target: torch.Tensor,
                 options: InversionOptions | None = None, loss: PhotoLoss | None = None,
                 p_init: torch.Tensor | None = None, progress: bool = True,
                 desc: str = "inverting") -> InversionResult:  # fmt: skip
    """Invert one aligned photo target [3, R, R] in [-1, 1] into (p, w, noise) of the 3DMM-conditional G.

    p starts at p_init [257] when given, else FR(target) (fr may be None only with p_init and a VGG loss or
    feature_weight 0). Returns the result after the last step.
    """
    options = options or InversionOptions()
    options.check()
    if not G.needs:
        raise UserError("inversion edits 3DMM coefficients p, but this snapshot is unconditional (--design uncond)")
    res = G.img_resolution
    if tuple(target.shape) != (3, res, res):
        raise UserError(f"the target must be an aligned [3, {res}, {res}] image, got {list(target.shape)}")
    if fr is None and p_init is None:
        raise UserError("inversion needs an FR to estimate p, or p_init")
    device = G.mapping.w_avg.device
    loss = loss or PhotoLoss(fr, pixel_weight=options.pixel_weight, feature_weight=options.feature_weight)
    x = target[None].to(device).float()
    with torch.no_grad():
        p_fr = (fr(x).float()[0] if fr is not None else p_init.to(device).float())
        p0 = p_init.to(device).float() if p_init is not None else p_fr
        target_feats = [f.detach() for f in loss.features(x)] if loss.feature_weight > 0 else []
        cond = photo_condition(p0[None], renderer, res)
        w_mean, w_spread = _w_statistics(G, cond)
        cond.rep  # noqa: B018 - rendered once here, without gradient, and reused by every step below
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    w = w_mean[None, None].repeat(1, G.num_ws if options.w_plus else 1, 1).clone().requires_grad_(True)
    p = p0[None].clone().requires_grad_(options.refine_p)
    noise = {k: torch.randn(v.shape, generator=gen).to(device).requires_grad_(options.optimize_noise)
             for k, v in noise_buffers(G).items()}  # fmt: skip
    groups = [{"params": [w], "lr": options.lr}]
    if options.optimize_noise and noise:
        groups.append({"params": list(noise.values()), "lr": options.lr})
    if options.refine_p:
        groups.append({"params": [p], "lr": options.p_lr})
    peaks = [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.999))
    losses: list[float] = []
    bar = trange(options.steps, desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        for group, peak in zip(opt.param_groups, peaks):
            group["lr"] = _learning_rate(step, options.steps, peak)
        jitter = w_spread * options.init_noise * max(0.0, 1 - step / (0.75 * options.steps)) ** 2
        ws = (w + torch.randn(w.shape, generator=gen).to(device) * jitter).expand(1, G.num_ws, -1)
        if options.refine_p:
            cond = photo_condition(p, renderer, res)  # rep(p) differentiable w.r.t. p
        img = synthesize(G, ws, cond, noise).float()
        total = loss(img, x, target_feats)
        if options.optimize_noise and noise:
            total = total + options.noise_reg * _noise_penalty(list(noise.values()))
        if options.refine_p:
            total = total + options.p_prior * ((p - p0[None]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():
            for n in noise.values():  # keep the maps white-noise-like (zero mean, unit variance)
                n.sub_(n.mean()).div_(n.square().mean().sqrt().clamp(min=1e-8))
        losses.append(float(total.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    with torch.no_grad():  # the final, noise-free w (the jitter has decayed to 0 by now)
        ws = w.detach().expand(1, G.num_ws, -1)
        p_out = p.detach()
        noise_out = {k: v.detach() for k, v in noise.items()}
        projected = synthesize(G, ws, photo_condition(p_out, renderer, res), noise_out).float()[0].cpu()
    return InversionResult(target=target.cpu().float(), projected=projected, p=p_out[0].cpu(), p_fr=p_fr.cpu(),
                           ws=ws[0].cpu(), noise={k: v.cpu() for k, v in noise_out.items()},
                           psnr=psnr(target, projected), w_plus=options.w_plus, losses=losses)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The latent file.


def save_latent(path: str, result: InversionResult, network_path: str, network_sha256: str,
                overwrite: bool = False) -> None:  # fmt: skip
    """<stem>-latent.npz: p [257], p_fr [257], ws [num_ws, w_dim], w_plus, noise maps, the aligned target
    (uint8 [R, R, 3]), network path and sha256. An existing file is refused unless overwrite."""
    arrays = {f"noise/{k}": v.numpy() for k, v in result.noise.items()}
    with output_file(path, overwrite) as f:
        np.savez(f, format=np.int64(LATENT_FORMAT), p=result.p.numpy(), p_fr=result.p_fr.numpy(),
                 target=to_uint8(result.target),
                 ws=result.ws.numpy(), w_plus=np.bool_(result.w_plus), psnr=np.float64(result.psnr),
                 network=np.str_(os.path.abspath(network_path)), network_sha256=np.str_(network_sha256),
                 **arrays)  # fmt: skip


@dataclass
class Latent:
    """A loaded latent: p [257], ws [num_ws, w_dim], noise {name: [r, r]} (float32), target [3, R, R] in [-1, 1]
    (None if absent), provenance."""

    p: torch.Tensor
    ws: torch.Tensor
    noise: dict[str, torch.Tensor]
    target: torch.Tensor | None
    network: str
    network_sha256: str
    psnr: float


def load_latent(path: str, G: torch.nn.Module, network_sha256: str) -> Latent:
    """Read a latent .npz and check it belongs to G (hash and shapes); UserError (one line) otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"--latent: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zip / format errors of a damaged or foreign file
        raise UserError(f"--latent {path}: not a latent .npz written by 'generate.py invert'") from exc
    if not {"p", "ws", "network_sha256"} <= arrays.keys():
        raise UserError(f"--latent {path}: not a latent .npz written by 'generate.py invert' (missing p / ws)")
    recorded = str(arrays["network_sha256"])
    if recorded != network_sha256:
        raise UserError(f"--latent {path} was inverted with another network ({arrays.get('network', '?')}, sha256 "
                        f"{recorded[:12]}...); this network has {network_sha256[:12]}...")  # fmt: skip
    expect_ws = (G.num_ws, G.w_dim)
    noise_shapes = {k: tuple(v.shape) for k, v in noise_buffers(G).items()}
    noise = {k.removeprefix("noise/"): torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()
             if k.startswith("noise/")}  # fmt: skip
    if arrays["p"].shape != (NUM_COEFFS,) or arrays["ws"].shape != expect_ws or any(
        noise_shapes.get(k) != tuple(v.shape) for k, v in noise.items()
    ):
        raise UserError(f"--latent {path}: shapes do not fit this network (p {arrays['p'].shape}, ws "
                        f"{arrays['ws'].shape}, expected ({NUM_COEFFS},) and {expect_ws})")  # fmt: skip
    target = arrays.get("target")
    if target is not None:
        target = torch.from_numpy(target.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return Latent(torch.from_numpy(arrays["p"].astype(np.float32)), torch.from_numpy(arrays["ws"].astype(np.float32)),
                  noise, target, str(arrays.get("network", "")), recorded,
                  float(arrays.get("psnr", float("nan"))))  # fmt: skip
