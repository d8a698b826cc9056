"""Opt-in speed paths of the training step, each one TrainConfig value with the plain path as its default.

    allow_tf32     TF32 matmuls/convs on Ampere+ GPUs (default off, as StyleGAN2-ADA / StyleGAN3: the numbers
                   users compare against were trained without it); a no-op on CPU.
    channels_last  NHWC memory format for the fp16 blocks of G and D (tensor-core friendly on CUDA); same values.
    adam_impl      auto (torch's default: foreach on CUDA, for-loop on CPU) | forloop | foreach | fused.
    fr_autocast    off | bf16 | fp16: FR (a frozen ResNet-50) of the consistency loss under autocast; gradients
                   still reach the image, the renderer and the loss stay float32.
    compile_fr     torch.compile the FR forward+backward (first-order only: R1's double backward through D is
                   never compiled).
And the two StyleGAN2-ADA differences (see the README's fidelity notes): `g_reg_interval` (G's Adam lr x I/(I+1),
betas ** (I/(I+1)) as if G had a lazy regulariser every I iterations; None = no scaling) and `w_avg_in_g_pass`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

ADAM_IMPLS = ("auto", "forloop", "foreach", "fused")
AUTOCAST_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_tf32(allow: bool) -> None:
    """Allow or forbid TF32 in cuBLAS matmuls and cuDNN convolutions (process-wide torch.backends flags)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allow)
    torch.backends.cudnn.allow_tf32 = bool(allow)


def apply_channels_last(*modules: torch.nn.Module) -> int:
    """Convert the 4-D parameters/buffers of every fp16 block (attribute use_fp16) of the modules to channels_last.

    Convolutions then run NHWC (their output follows the weight's format); values are unchanged up to the
    summation order of the conv kernels. Returns the number of converted blocks.
    """
    count = 0
    for module in modules:
        for block in module.modules():
            if getattr(block, "use_fp16", False):
                block.to(memory_format=torch.channels_last)
                count += 1
    return count


def lazy_reg_scaling(lr: float, betas: tuple[float, float], reg_interval: int | None) -> tuple[float, tuple]:
    """StyleGAN2's lazy-regularisation correction: lr x c, betas ** c with c = I / (I + 1); identity for None."""
    if reg_interval is None:
        return lr, betas
    ratio = reg_interval / (reg_interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], impl: str = "auto",
              reg_interval: int | None = None) -> torch.optim.Adam:  # fmt: skip
    """Adam with eps 1e-8 (StyleGAN2), lr/betas corrected for a lazy regulariser every reg_interval iterations.

    impl: auto = torch's own choice (the plain path), forloop / foreach / fused force that implementation.
    """
    if impl not in ADAM_IMPLS:
        raise ValueError(f"adam_impl must be one of {', '.join(ADAM_IMPLS)}, not {impl!r}")
    lr, betas = lazy_reg_scaling(lr, betas, reg_interval)
    kwargs = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}.get(impl, {})
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8, **kwargs)


def fr_autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """Autocast context for the FR forward: mode off | bf16 | fp16 (off gives a no-op context)."""
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"fr_autocast must be one of {', '.join(AUTOCAST_MODES)}, not {mode!r}")
    dtype = AUTOCAST_MODES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_module(module: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """torch.compile for a first-order-only module (the FR); dynamic=False: the training batch shape is fixed."""
    return torch.compile(module, backend=backend, dynamic=False)


def describe(config: object) -> str:
    """One log line naming each fast path's setting (from a TrainConfig)."""
    on_off = lambda flag: "on" if flag else "off"
    return (f"Fast paths: tf32 {on_off(config.allow_tf32)}, channels_last {on_off(config.channels_last)}, "
            f"adam {config.adam_impl}, FR autocast {config.fr_autocast}, compiled FR {on_off(config.compile_fr)}; "
            f"G Adam reg interval {config.g_reg_interval}, w_avg in G pass {on_off(config.w_avg_in_g_pass)}")
