"""The fp16 blocks of G and D (num_fp16_res) agree with the float32 path, forward and backward, without a GPU.

On the CPU the blocks compute in float16 only inside `fp16_blocks_on_cpu()` (test-only switch), so every cast that a
GPU run makes is exercised here: E's float32 features entering fp16 synthesis layers, conv_clamp, the float32 RGB
skip sum after fp16 ToRGB layers, D's fp16 blocks into its float32 epilogue, the R1 double backward through fp16
convs, and the consistency loss reading the image G made in fp16. With CUDA the same tests run on the GPU too (there
the fp16 blocks are always on and the float32 reference is `force_fp32=True`), through the fused plugins.

Tolerance (TOLERANCE below): float16 keeps 11 significant bits (unit roundoff 2^-11 ~ 4.9e-4). Outputs (image,
logits, d, R1 penalty) must agree elementwise: max |fp16 - fp32| <= 1e-2 x max |fp32|. Gradients are compared as
a whole, ||fp16 - fp32||_2 <= 1e-1 x ||fp32||_2: a pre-activation within rounding of 0 takes the other slope of the
leaky ReLU (1 vs 0.2) in one precision, so single gradient entries may differ by their own size while the
gradient as a whole does not (measured on the CPU: at most 3-5 %; the max abs differences are printed).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet
from deep3drecon.reconstructor import FaceReconstructor
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model
from tests.conditional_fixtures import bank
from tests.conftest import rep_cond
from torch_utils.misc import fp16_blocks_on_cpu
from torch_utils.ops import conv2d_gradfix
from training.consistency import ConsistencyLoss
from training.discriminator import Discriminator
from training.networks import Generator
from training.rep import make_rep

R = 32
FP16_RES = [8, 16, 32]  # num_fp16_res=3 at 32 px: every block above 4x4 runs in float16
G_KWARGS = dict(z_dim=8, w_dim=16, img_resolution=R, mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=3, conv_clamp=256),
                encoder_kwargs=dict(channel_base=128, channel_max=8, feat_channels=2))  # fmt: skip
D_KWARGS = dict(img_resolution=R, channel_base=256, channel_max=16, num_fp16_res=3, conv_clamp=256, mbstd_group_size=2)
LAMBDA_CONS, R1_GAMMA, ALPHA = 20.0, 1.0, 0.7
# outputs: max |fp16 - fp32| <= TOLERANCE * max |fp32|; gradients: ||fp16 - fp32||_2 <= TOLERANCE * ||fp32||_2
TOLERANCE = {"output": 1e-2, "grad": 1e-1}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def generate(G: torch.nn.Module, z: torch.Tensor, rep: torch.Tensor, **kwargs) -> torch.Tensor:
    """The one place this file calls G: G(z, cond) with the condition of rep [N, 9, R, R] in [-1, 1]."""
    return G(z, rep_cond(rep), noise_mode="const", **kwargs)


def consistency(loss: ConsistencyLoss, img: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """The one place this file calls the consistency loss (eq. 6): d [N]."""
    return loss.distance(img, rep, ALPHA)


class Precision:
    """fp16 blocks on or off with the same weights: on the CPU through the test-only switch (off = the plain
    fp16_blocks_active False path); on CUDA, where they are always on, off is force_fp32=True."""

    def __init__(self, device: str, fp16: bool) -> None:
        self.device, self.fp16 = device, fp16
        self.kwargs = dict(force_fp32=True) if device == "cuda" and not fp16 else {}

    def context(self) -> contextlib.AbstractContextManager:
        return fp16_blocks_on_cpu() if self.fp16 and self.device == "cpu" else contextlib.nullcontext()


def _networks(device: str) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    G = Generator(**G_KWARGS).train().to(device)
    D = Discriminator(**D_KWARGS).train().to(device)
    with torch.no_grad():
        for module in G.modules():
            if getattr(module, "feat_channels", 0) and hasattr(module, "weight"):
                module.weight[:, module.in_channels :].normal_()  # injected columns start at 0: make E matter
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.1)  # the noise add runs in the block's dtype too
    return G, D


def _world(device: str) -> dict:
    renderer = Renderer(FaceModel(make_synthetic_model(seed=0)), backend="torch").to(device)
    torch.manual_seed(1)
    net = ReconNet("resnet18", input_size=R)
    for head in net.final_layers:
        torch.nn.init.normal_(head.weight, std=0.05)  # non-zero heads: d coeffs / d image is not zero
    fr = FaceReconstructor(net).to(device)
    rep = make_rep(renderer, bank(2).to(device), R)  # [2, 9, R, R] in [-1, 1]
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, G_KWARGS["z_dim"], generator=g).to(device)
    real = (torch.rand(2, 3, R, R, generator=g) * 2 - 1).to(device)
    return dict(cons=ConsistencyLoss(renderer, fr), rep=rep, z=z, real=real)


def _grads(module: torch.nn.Module, prefix: str = "") -> torch.Tensor:
    params = [p for n, p in module.named_parameters() if n.startswith(prefix)]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def _record_dtypes(G: Generator, D: Discriminator, seen: dict) -> list:
    """Hooks that note the dtypes at each boundary of the fp16 blocks (names: 'G b16 conv1 x', ...)."""
    handles = []

    def pre(name):
        def hook(module, args):
            seen[f"{name} x"], seen[f"{name} feat"] = args[0].dtype, args[2].dtype  # layer(x, w, feat, ...)

        return hook

    def post(name):
        def hook(module, args, out):
            outs = out if isinstance(out, tuple) else (out,)
            for i, t in enumerate(outs):
                seen[f"{name} out{i}"] = t.dtype

        return hook

    syn = G.synthesis
    for res in syn.block_resolutions:
        block = getattr(syn, f"b{res}")
        for layer in ("conv0", "conv1"):
            if hasattr(block, layer):
                handles.append(getattr(block, layer).register_forward_pre_hook(pre(f"G b{res} {layer}")))
        handles.append(block.torgb.register_forward_hook(post(f"G b{res} torgb")))
        handles.append(block.register_forward_hook(post(f"G b{res}")))  # (x, img)
    for res in D.block_resolutions:
        handles.append(getattr(D, f"b{res}").register_forward_hook(post(f"D b{res}")))
    handles.append(D.b4.register_forward_pre_hook(lambda m, args: seen.__setitem__("D epilogue in", args[0].dtype)))
    handles.append(D.b4.register_forward_hook(post("D epilogue")))
    return handles


def _run(G: Generator, D: Discriminator, world: dict, mode: Precision) -> dict[str, torch.Tensor]:
    """The three training phases at one precision: outputs and gradients, all float32 copies."""
    z, rep, real, cons = world["z"], world["rep"], world["real"], world["cons"]
    out = {}
    with mode.context():
        # Gmain (eq. 13): adversarial + lambda * consistency on the image G makes (fp16 blocks inside G).
        G.zero_grad(set_to_none=True)
        img = generate(G, z, rep, **mode.kwargs)
        dist = consistency(cons, img, rep)
        (F.softplus(-D(img, **mode.kwargs)).mean() + LAMBDA_CONS * dist.mean()).backward()
        out["G image"], out["consistency d"] = img.detach().float(), dist.detach().float()
        out["G grads: synthesis"], out["G grads: encoder E"] = _grads(G, "synthesis.b"), _grads(G, "synthesis.encoder")
        out["G grads: mapping"] = _grads(G, "mapping")
        # Dmain (eq. 12): D forward and backward on the fake and the real image.
        D.zero_grad(set_to_none=True)
        logits_fake, logits_real = D(img.detach(), **mode.kwargs), D(real, **mode.kwargs)
        (F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()).backward()
        out["D logits"] = torch.cat([logits_fake, logits_real]).detach().float()
        out["D grads"] = _grads(D)
        # Dreg: R1, the double backward through D (as training/loss.py: no weight grads in the inner pass).
        D.zero_grad(set_to_none=True)
        x = real.detach().requires_grad_(True)
        logits = D(x, **mode.kwargs)
        with conv2d_gradfix.no_weight_gradients():
            (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True, only_inputs=True)
        penalty = grad.square().sum(dim=[1, 2, 3])
        (penalty * (R1_GAMMA / 2) + logits.flatten() * 0).mean().backward()
        out["R1 grad_x D"], out["R1 penalty"], out["D grads (R1)"] = grad.detach().float(), penalty.detach(), _grads(D)
    return out


def _restore_tf32(cudnn: bool, matmul: bool) -> None:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@pytest.fixture(scope="module", params=DEVICES)
def runs(request) -> dict:
    """Both precisions on one device, same weights and inputs; plus the dtypes seen in the fp16 run."""
    device = request.param
    if device == "cuda":  # a true float32 reference: no TF32 (10-bit mantissa) convolutions or matmuls on the GPU
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        request.addfinalizer(lambda: _restore_tf32(*tf32))
    G, D = _networks(device)
    world = _world(device)
    fp32 = _run(G, D, world, Precision(device, fp16=False))
    seen: dict = {}
    handles = _record_dtypes(G, D, seen)
    try:
        fp16 = _run(G, D, world, Precision(device, fp16=True))
    finally:
        for h in handles:
            h.remove()
    return dict(device=device, fp32=fp32, fp16=fp16, seen=seen, G=G, D=D, world=world)


def _kind(name: str) -> str:
    return "grad" if "grads" in name or "grad_x" in name else "output"


def differences(runs: dict) -> dict[str, dict[str, float]]:
    """name -> max abs difference, its ratio to max |fp32|, and the relative L2 error ||fp16 - fp32|| / ||fp32||."""
    out = {}
    for name, ref in runs["fp32"].items():
        diff = runs["fp16"][name] - ref
        out[name] = dict(
            max_abs=diff.abs().max().item(),
            max_ref=ref.abs().max().item(),
            rel_max=(diff.abs().max() / ref.abs().max()).item(),
            rel_l2=(diff.norm() / ref.norm()).item(),
        )
    return out


def test_fp16_blocks_really_run_in_float16_and_cross_every_boundary(runs):
    seen = runs["seen"]
    for res in FP16_RES:
        for layer in ("conv0", "conv1"):
            assert seen[f"G b{res} {layer} x"] == torch.float16, (res, layer)
            assert seen[f"G b{res} {layer} feat"] == torch.float32  # E's float32 features enter the fp16 layer
        assert seen[f"G b{res} torgb out0"] == torch.float16
        assert seen[f"G b{res} out0"] == torch.float16 and seen[f"G b{res} out1"] == torch.float32  # x, RGB skip
        assert seen[f"D b{res} out0"] == torch.float16
    assert seen["G b4 conv1 x"] == torch.float32 and seen["G b4 out1"] == torch.float32  # below num_fp16_res
    assert seen["D epilogue in"] == torch.float16 and seen["D epilogue out0"] == torch.float32
    for name, value in runs["fp16"].items():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert runs["fp16"]["G grads: encoder E"].abs().max() > 0  # gradients come back through the fp16 casts


@pytest.mark.parametrize("name", ["G image", "consistency d", "G grads: synthesis", "G grads: encoder E",
                                  "G grads: mapping", "D logits", "D grads", "R1 grad_x D", "R1 penalty",
                                  "D grads (R1)"])  # fmt: skip
def test_fp16_matches_fp32_within_tolerance(runs, name):
    d = differences(runs)[name]
    assert d["max_ref"] > 0, f"{name}: the float32 reference is all zero, the comparison would be empty"
    kind = _kind(name)
    error = d["rel_max"] if kind == "output" else d["rel_l2"]
    assert error <= TOLERANCE[kind], f"{name} on {runs['device']}: {d}"
    assert d["max_abs"] > 0  # float16 really ran


def test_report_max_differences(runs, record_property):
    """One line per quantity for the log (pytest -rP): max |fp16 - fp32|, relative to max |fp32|, relative L2."""
    lines = [f"{name}: max abs diff {d['max_abs']:.2e} (x{d['rel_max']:.1e} of max |fp32|), relative L2 "
             f"{d['rel_l2']:.1e}" for name, d in differences(runs).items()]  # fmt: skip
    record_property("fp16_vs_fp32", "; ".join(lines))
    print(f"fp16 vs fp32 on {runs['device']}:\n  " + "\n  ".join(lines))


def test_conv_clamp_saturates_alike_in_fp16(runs):
    """A huge input to the first fp16 block: its pre-activations are clamped at +-conv_clamp (256, exact in fp16)
    in both precisions, the image stays finite and agrees."""
    G, world, device = runs["G"], runs["world"], runs["device"]
    clamped = []  # b8.conv0's output: fp32 run, then fp16 run

    def hook(module, args, out):
        clamped.append(out.detach().float())

    G.eval()
    with torch.no_grad():
        const = G.synthesis.b4.const.clone()
        G.synthesis.b4.const.mul_(1e4)  # b4 (float32) saturates: b8 receives +-256-sized inputs
        handle = G.synthesis.b8.conv0.register_forward_hook(hook)
        try:
            images = {}
            for fp16 in (False, True):
                mode = Precision(device, fp16)
                with mode.context():
                    images[fp16] = generate(G, world["z"], world["rep"], **mode.kwargs).float()
        finally:
            handle.remove()
            G.synthesis.b4.const.copy_(const)
            G.train()
    assert len(clamped) == 2
    for out in clamped:
        assert out.abs().max() == 256 and (out.abs() == 256).float().mean() > 0.05, out.abs().max()
    assert torch.isfinite(images[True]).all()
    saturated = [out.abs() == 256 for out in clamped]
    assert (saturated[0] == saturated[1]).float().mean() > 0.99  # the same entries clip (up to rounding at 256)
    scale = images[False].abs().max()
    assert (images[True] - images[False]).abs().max() <= TOLERANCE["output"] * scale
