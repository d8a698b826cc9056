"""upfirdn2d and its filter helpers against a naive loop, scipy, autograd and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from tests.torch_utils.ops.references import _rng, _t, naive_upfirdn2d
from torch_utils.ops import upfirdn2d


def test_setup_filter_expands_short_and_keeps_long_separable():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64, rtol=1e-6)
    g = upfirdn2d.setup_filter(np.ones(8), gain=4)
    assert g.shape == (8,) and math.isclose(g.sum().item(), 2.0, rel_tol=1e-6)  # sqrt(gain) per 1-D pass
    assert upfirdn2d.setup_filter([1, 2], flip_filter=True)[0, 0].item() == pytest.approx(4 / 9)


@pytest.mark.parametrize(
    "up,down,pad,shape",
    [
        ((1, 1), (1, 1), (0, 0, 0, 0), (3, 3)),
        ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),
        ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),
        ((3, 2), (2, 1), (1, -2, 3, 0), (3, 2)),
        ((2, 1), (1, 3), (-1, -1, 2, -3), (2, 5)),
    ],
)
def test_upfirdn2d_matches_naive_loop(up, down, pad, shape):
    rng = _rng(1)
    x, f = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal(shape)
    y = upfirdn2d.upfirdn2d(_t(x), _t(f), up=up, down=down, padding=pad, impl="ref")
    np.testing.assert_allclose(y.numpy(), naive_upfirdn2d(x, f, up, down, pad), atol=1e-12)
    # flip_filter=True correlates, i.e. equals convolving with the reversed kernel.
    y_flip = upfirdn2d.upfirdn2d(_t(x), _t(f[::-1, ::-1].copy()), up=up, down=down, padding=pad, flip_filter=True)
    np.testing.assert_allclose(y_flip.numpy(), y.numpy(), atol=1e-12)


@pytest.mark.parametrize("up,down,taps", [(1, 1, 3), (2, 1, 4), (1, 2, 5), (3, 2, 8)])
def test_upfirdn2d_separable_matches_scipy(up, down, taps):
    rng = _rng(2)
    x, h = rng.standard_normal((1, 2, 9, 7)), rng.standard_normal(taps)
    # scipy.signal.upfirdn keeps the full convolution: pad (taps - 1) before and (taps - up) after.
    pad = (taps - 1, taps - up, taps - 1, taps - up)
    y = upfirdn2d.upfirdn2d(_t(x), _t(h), up=up, down=down, padding=pad, gain=2.0)
    ref = 2.0 * scipy.signal.upfirdn(h, scipy.signal.upfirdn(h, x, up, down, axis=3), up, down, axis=2)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-11)
    y2d = upfirdn2d.upfirdn2d(_t(x), _t(np.outer(h, h)), up=up, down=down, padding=pad, gain=2.0)
    np.testing.assert_allclose(y2d.numpy(), ref, atol=1e-11)


def test_resampling_helpers_sizes_and_dc_level():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down, filt = upfirdn2d.upsample2d(x, f), upfirdn2d.downsample2d(x, f), upfirdn2d.filter2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4) and filt.shape == x.shape
    for y in (up, down, filt):  # unit DC gain away from the zero-padded border
        torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full_like(y[:, :, 2:-2, 2:-2], 3.0))
    # upsample2d = zero insertion, pad (2, 1), 4x4 filter with gain 4 (the documented StyleGAN2 recipe).
    xr = _rng(3).standard_normal((1, 1, 5, 4))
    ref = naive_upfirdn2d(xr, 4 * f.double().numpy(), (2, 2), (1, 1), (2, 1, 2, 1))
    np.testing.assert_allclose(upfirdn2d.upsample2d(_t(xr), f).numpy(), ref, atol=1e-12)
    ref = naive_upfirdn2d(xr, f.double().numpy(), (1, 1), (2, 2), (1, 1, 1, 1))
    np.testing.assert_allclose(upfirdn2d.downsample2d(_t(xr), f).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("up,down,pad", [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 2), (2, 3), (1, -1, 0, 2))])
def test_upfirdn2d_adjoint_params_match_autograd(up, down, pad):
    """grad_params (used by the CUDA backward) must reproduce the reference path's autograd gradient."""
    rng = _rng(4)
    x, f = _t(rng.standard_normal((1, 2, 6, 5)), True), _t(rng.standard_normal((3, 4)))
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.5)
    dy = _t(rng.standard_normal(y.shape))
    (dx,) = torch.autograd.grad(y, x, dy)
    params = (*up, *down, *pad, False, 1.5)
    gp = upfirdn2d.grad_params(params, tuple(x.shape[2:]), tuple(y.shape[2:]), tuple(f.shape))
    dx2 = upfirdn2d._upfirdn2d_ref(dy, f, gp)
    torch.testing.assert_close(dx2, dx)


def test_upfirdn2d_ref_double_backward():
    rng = _rng(5)
    x, f = _t(rng.standard_normal((1, 2, 4, 5)), True), _t(rng.standard_normal((3, 2)))
    fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=2, down=(1, 2), padding=(1, -1, 2, 0), impl="ref")
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
