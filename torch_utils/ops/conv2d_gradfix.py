"""conv2d / conv_transpose2d with arbitrarily-high-order gradients and optional weight-gradient skipping.

R1 (and path-length) regularisation differentiate D's output w.r.t. its input with `create_graph=True` and then
backpropagate again. Only the input gradient is needed in that inner pass, so `no_weight_gradients()` lets it
skip dL/dW for every convolution. To keep the outer pass exact, the input gradient is itself expressed through
the same custom autograd Functions (the adjoint convolution), and the weight gradient
(`aten.convolution_backward`) is wrapped in a Function whose backward is again a pair of convolutions.
Works on any device; it is the same maths as torch.nn.functional, only the autograd graph differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_weight_gradients_disabled = 0  # nesting depth of no_weight_gradients(); read by _ConvFn.backward


@contextlib.contextmanager
def no_weight_gradients(disable: bool = False) -> Iterator[None]:
    """Inside this block, backward passes through conv2d/conv_transpose2d return no weight gradient (None).

    Use it around the inner `autograd.grad(..., create_graph=True)` of R1; `disable=True` makes it a no-op.
    """
    global _weight_gradients_disabled
    if disable:
        yield
        return
    _weight_gradients_disabled += 1
    try:
        yield
    finally:
        _weight_gradients_disabled -= 1


def weight_gradients_disabled() -> bool:
    """True inside an active `no_weight_gradients()` block."""
    return _weight_gradients_disabled > 0


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


@dataclass(frozen=True)
class _ConvSpec:
    """Hyper-parameters of one convolution; `transpose` selects conv_transpose2d."""

    transpose: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def run(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.transpose:
            return F.conv_transpose2d(
                x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, x_shape: torch.Size, w_shape: torch.Size, y_shape: torch.Size) -> _ConvSpec:
        """Spec of the convolution that maps dL/dy back to dL/dx (same weight tensor, opposite direction)."""
        if self.transpose:  # the adjoint of a transposed conv is the plain conv; sizes match automatically
            return _ConvSpec(False, self.stride, self.padding, (0, 0), self.dilation, self.groups)
        # conv2d drops the last (x + 2p - d(k-1) - 1) % s input rows; output_padding restores them.
        op = tuple(
            x_shape[i + 2]
            - (
                (y_shape[i + 2] - 1) * self.stride[i]
                - 2 * self.padding[i]
                + self.dilation[i] * (w_shape[i + 2] - 1)
                + 1
            )
            for i in range(2)
        )
        return _ConvSpec(True, self.stride, self.padding, op, self.dilation, self.groups)  # type: ignore[arg-type]


class _ConvFn(torch.autograd.Function):
    """y = conv(x, w) + b whose backward uses _ConvFn (input grad) and _WeightGradFn (weight grad)."""

    @staticmethod
    def forward(ctx, x, w, b, spec: _ConvSpec):  # type: ignore[override]
        ctx.spec = spec
        ctx.save_for_backward(x, w)
        return spec.run(x, w, b)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, w = ctx.saved_tensors
        spec: _ConvSpec = ctx.spec
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _ConvFn.apply(dy, w, None, spec.adjoint(x.shape, w.shape, dy.shape))
        if ctx.needs_input_grad[1] and not weight_gradients_disabled():
            dw = _WeightGradFn.apply(dy, x, w, spec)
        if ctx.needs_input_grad[2]:
            db = dy.sum(dim=[0, 2, 3])
        return dx, dw, db, None


def _weight_grad(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: _ConvSpec) -> torch.Tensor:
    """dL/dw of conv(x, w) given dL/dy (no autograd); `w` only supplies shape, dtype and layout."""
    return torch.ops.aten.convolution_backward(
        dy, x, w, None, list(spec.stride), list(spec.padding), list(spec.dilation), spec.transpose,
        list(spec.output_padding), spec.groups, [False, True, False],
    )[1]  # fmt: skip


class _WeightGradFn(torch.autograd.Function):
    """dw = weight gradient of conv(x, .) at dy; bilinear in (dy, x), so its backward is two convolutions."""

    @staticmethod
    def forward(ctx, dy, x, w, spec: _ConvSpec):  # type: ignore[override]
        ctx.spec = spec
        ctx.save_for_backward(dy, x)
        return _weight_grad(dy, x, w, spec)

    @staticmethod
    def backward(ctx, ddw):  # type: ignore[override]
        dy, x = ctx.saved_tensors
        spec: _ConvSpec = ctx.spec
        g_dy = g_x = None
        # <dw, ddw> = <dy, conv(x, ddw)> = <conv_adjoint(dy, ddw), x>
        if ctx.needs_input_grad[0]:
            g_dy = _ConvFn.apply(x, ddw, None, spec)
        if ctx.needs_input_grad[1]:
            g_x = _ConvFn.apply(dy, ddw, None, spec.adjoint(x.shape, ddw.shape, dy.shape))
        return g_dy, g_x, None, None


def _needs_custom(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # Inference (nothing requires grad) takes the plain functional path: same result, no Python overhead.
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in for F.conv2d: input [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw] -> [N, Cout, H', W']."""
    if isinstance(padding, str) or not _needs_custom(input, weight, bias):  # string paddings: plain F.conv2d
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    spec = _ConvSpec(False, _pair(stride), _pair(padding), (0, 0), _pair(dilation), groups)
    return _ConvFn.apply(input, weight, bias, spec)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Drop-in for F.conv_transpose2d: input [N, Cin, H, W], weight [Cin, Cout/groups, kh, kw] -> [N, Cout, H', W']."""
    if not _needs_custom(input, weight, bias):
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    spec = _ConvSpec(True, _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation), groups)
    return _ConvFn.apply(input, weight, bias, spec)
