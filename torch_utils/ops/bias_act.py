"""Fused bias + activation + gain + clamp: y = clamp(act(x + b) * gain, -clamp, +clamp).

Two implementations behind one function: 'ref' (plain PyTorch, any device, any order of derivatives) and
'cuda' (one elementwise kernel from bias_act.cu, first and second derivatives). `impl='auto'` picks 'cuda' for
CUDA tensors when the plugin builds, else 'ref'.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.errors import UserError


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: reference function f(x, alpha), default alpha and gain, and its index in the CUDA kernel."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int
    has_2nd_grad: bool  # False when f'' == 0 almost everywhere (the kernel then skips that term)


# Gains keep the activations' output variance ~1 for unit-variance inputs (StyleGAN2 equalised-lr convention).
activation_funcs: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, a: x, 0.0, 1.0, 0, False),
    "relu": ActivationSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 1, False),
    "lrelu": ActivationSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 2, False),
    "tanh": ActivationSpec(lambda x, a: torch.tanh(x), 0.0, 1.0, 3, True),
    "sigmoid": ActivationSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 4, True),
    "elu": ActivationSpec(lambda x, a: F.elu(x, a), 1.0, 1.0, 5, True),
    "selu": ActivationSpec(lambda x, a: F.selu(x), 0.0, 1.0, 6, True),  # alpha/scale fixed by definition
    "softplus": ActivationSpec(lambda x, a: F.softplus(x), 0.0, 1.0, 7, True),
    "swish": ActivationSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 8, True),
}


def _resolve(
    act: str, alpha: float | None, gain: float | None, clamp: float | None
) -> tuple[ActivationSpec, float, float, float]:
    if act not in activation_funcs:
        raise UserError(f"unknown activation {act!r}; choose one of {sorted(activation_funcs)}")
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)  # negative = no clamping
    return spec, alpha, gain, clamp


def _check_bias(x: torch.Tensor, b: torch.Tensor | None, dim: int) -> None:
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise UserError(f"bias_act: bias shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}")


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """clamp(act(x + b) * gain) for x of any shape, b [x.shape[dim]]; same shape/dtype/layout as x."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    dim = dim % max(x.ndim, 1)
    _check_bias(x, b, dim)
    if _use_cuda(x, impl):
        return _BiasActCuda.apply(x, b, (dim, spec.cuda_idx, alpha, gain, clamp, spec.has_2nd_grad))
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, spec: ActivationSpec, alpha: float, gain: float, clamp: float
) -> torch.Tensor:
    """Plain-PyTorch path, op for op in the documented order: bias, activation, gain, clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------------------------
# CUDA path.

_SRC_DIR = os.path.dirname(os.path.abspath(__file__))
# The installed package's own sources (setup.py package_data ships the .cpp/.cu/.h next to this module).
PLUGIN = custom_ops.PluginSpec(
    "bias_act_plugin",
    sources=(os.path.join(_SRC_DIR, "bias_act.cpp"), os.path.join(_SRC_DIR, "bias_act.cu")),
    headers=(os.path.join(_SRC_DIR, "bias_act.h"),),
)


def _plugin():
    """The fused kernels for this process's GPU (built once), or None: then the reference path runs."""
    return custom_ops.get_plugin(PLUGIN)


def _use_cuda(x: torch.Tensor, impl: str) -> bool:
    if impl not in ("auto", "ref", "cuda"):
        raise UserError(f"impl must be 'auto', 'ref' or 'cuda', got {impl!r}")
    if impl == "cuda" and not x.is_cuda:
        raise UserError("bias_act(impl='cuda') needs a CUDA tensor")
    return impl != "ref" and x.is_cuda and _plugin() is not None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if it is a dense (possibly permuted, e.g. channels_last) layout the kernel can index, else a copy."""
    return x if x.is_non_overlapping_and_dense() else x.contiguous()


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with exactly ref's strides (the kernel walks all its operands with one linear index)."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def _run_kernel(x: torch.Tensor, b: torch.Tensor, xref: torch.Tensor, grad: int, params: tuple) -> torch.Tensor:
    dim, act_idx, alpha, gain, clamp, _ = params
    return _plugin().bias_act(x, b, xref, grad, dim, act_idx, alpha, gain, clamp)


class _BiasActCuda(torch.autograd.Function):
    """Forward kernel; backward = _BiasActCudaGrad, itself differentiable once more (2nd order for R1)."""

    @staticmethod
    def forward(ctx, x, b, params):  # type: ignore[override]
        x = _dense(x)
        b = b.to(x.dtype).contiguous() if b is not None else x.new_empty([0])
        ctx.params = params
        ctx.save_for_backward(x, b)
        return _run_kernel(x, b, x.new_empty([0]), 0, params)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, b = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActCudaGrad.apply(dy, x, b, ctx.params)
        if ctx.needs_input_grad[1]:
            dim = ctx.params[0]
            db = dx.sum([i for i in range(dx.ndim) if i != dim])
        return dx, db, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dx = dy * f'(x + b) * gain * [|f(x + b) * gain| <= clamp]; bilinear-ish in dy, so its own grads are kernels."""

    @staticmethod
    def forward(ctx, dy, x, b, params):  # type: ignore[override]
        dy = _like(dy, x)
        ctx.params = params
        ctx.save_for_backward(dy, x, b)
        return _run_kernel(dy, b, x, 1, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        dy, x, b = ctx.saved_tensors
        params = ctx.params
        g = _like(g, x)
        g_dy = _run_kernel(g, b, x, 1, params) if ctx.needs_input_grad[0] else None
        g_x = g_b = None
        if params[5] and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):  # f'' != 0: d(dx)/dx term
            g_x = _run_kernel(_like(g * dy, x), b, x, 2, params)
            if ctx.needs_input_grad[2] and b.numel() > 0:
                g_b = g_x.sum([i for i in range(g_x.ndim) if i != params[0]])
        return g_dy, g_x, g_b, None
