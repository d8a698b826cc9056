"""Fused multiply-add `a * b + c` with a memory-light, broadcasting-aware backward."""

from __future__ import annotations

import torch


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `grad` (the broadcast result's shape) back down to `shape`."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(dim=list(range(extra)))
    dims = [i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


class _FmaFn(torch.autograd.Function):
    """out = addcmul(c, a, b); one output buffer instead of the a*b temporary plus the sum."""

    @staticmethod
    def forward(ctx, a, b, c):  # type: ignore[override]
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        a, b = ctx.saved_tensors
        da = _unbroadcast(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = _unbroadcast(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        dc = _unbroadcast(dout, ctx.c_shape) if ctx.needs_input_grad[2] else None
        return da, db, dc


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c for mutually broadcastable tensors (e.g. x [N,C,H,W], dcoefs [N,C,1,1], noise [N,1,H,W])."""
    return _FmaFn.apply(a, b, c)
