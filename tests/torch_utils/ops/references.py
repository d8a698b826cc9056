"""Independent references shared by the op tests: naive numpy loops, closed forms, and gradient checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _t(a: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


def naive_upfirdn2d(x: np.ndarray, f: np.ndarray, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0)) -> np.ndarray:
    """Zero insertion, explicit index-based pad/crop, shift-and-add true convolution, decimation."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = x
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    p = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < h * upy and 0 <= sj < w * upx:
                p[:, :, i, j] = u[:, :, si, sj]
    fh, fw = f.shape
    ho, wo = hp - fh + 1, wp - fw + 1
    fc = f[::-1, ::-1]  # convolution = correlation with the reversed kernel
    out = np.zeros((n, c, ho, wo))
    for a in range(fh):
        for b in range(fw):
            out += fc[a, b] * p[:, :, a : a + ho, b : b + wo]
    return out[:, :, ::downy, ::downx]


def naive_conv(x: np.ndarray, w: np.ndarray, flip_weight: bool = True) -> np.ndarray:
    """Valid 2-D cross-correlation (true convolution if not flip_weight) summed over input channels, via scipy."""
    op = scipy.signal.correlate2d if flip_weight else scipy.signal.convolve2d
    out = [
        [sum(op(x[n, i], w[o, i], mode="valid") for i in range(x.shape[1])) for o in range(w.shape[0])]
        for n in range(x.shape[0])
    ]
    return np.array(out)


_SELU = (1.0507009873554805, 1.6732632423543772)


_CLOSED_FORMS = {
    "linear": lambda z, a: z,
    "relu": lambda z, a: np.maximum(z, 0),
    "lrelu": lambda z, a: np.where(z > 0, z, a * z),
    "tanh": lambda z, a: np.tanh(z),
    "sigmoid": lambda z, a: 1 / (1 + np.exp(-z)),
    "elu": lambda z, a: np.where(z > 0, z, a * (np.exp(z) - 1)),
    "selu": lambda z, a: _SELU[0] * np.where(z > 0, z, _SELU[1] * (np.exp(z) - 1)),
    "softplus": lambda z, a: np.log1p(np.exp(z)),
    "swish": lambda z, a: z / (1 + np.exp(-z)),
}


_DEFAULT_GAINS = {"relu": math.sqrt(2), "lrelu": math.sqrt(2), "swish": math.sqrt(2)}


def _cuda_pair(shape, seed, dtype=torch.float64):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).cuda().requires_grad_(True)


def _compare_grads(fn_cuda, fn_ref, inputs, atol=1e-6):
    """Outputs, first and second derivatives of fn_cuda and fn_ref must agree."""
    y1, y2 = fn_cuda(*inputs), fn_ref(*inputs)
    torch.testing.assert_close(y1, y2, atol=atol, rtol=1e-5)
    dy = torch.randn_like(y1)
    g1 = torch.autograd.grad(y1, inputs, dy, create_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(y2, inputs, dy, create_graph=True, allow_unused=True)
    s1 = sum(g.square().sum() for g in g1 if g is not None)
    s2 = sum(g.square().sum() for g in g2 if g is not None)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
    for a, b in zip(
        torch.autograd.grad(s1, inputs, allow_unused=True), torch.autograd.grad(s2, inputs, allow_unused=True)
    ):
        if a is not None or b is not None:
            torch.testing.assert_close(
                a if a is not None else torch.zeros_like(b),
                b if b is not None else torch.zeros_like(a),
                atol=atol * 10,
                rtol=1e-4,
            )
