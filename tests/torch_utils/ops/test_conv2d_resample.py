"""conv2d_resample against the naive composition pad -> upfirdn2d -> conv -> upfirdn2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.torch_utils.ops.references import _rng, _t, naive_conv, naive_upfirdn2d
from torch_utils.ops import upfirdn2d
from torch_utils.ops.conv2d_resample import conv2d_resample


def _same_pads(fw: int, up: int, down: int, pad: int) -> tuple[int, int]:
    """StyleGAN2's "same" paddings from the spec: up (fw+up-1)//2, (fw-up)//2; down (fw-down+1)//2, (fw-down)//2."""
    p0 = p1 = pad
    if up > 1:
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
    if down > 1:
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    return p0, p1


def naive_conv2d_resample(x, w, f, up, down, pad, flip_weight):
    p0, p1 = _same_pads(f.shape[0], up, down, pad)
    if up > 1:  # explicit zero insertion + filter with gain up^2
        x = naive_upfirdn2d(x, f * up**2, (up, up), (1, 1), (p0, p1, p0, p1))
    else:
        x = naive_upfirdn2d(x, np.ones((1, 1)), (1, 1), (1, 1), (p0, p1, p0, p1))
    x = naive_conv(x, w, flip_weight)
    if down > 1:
        x = naive_upfirdn2d(x, f, (1, 1), (down, down), (0, 0, 0, 0))
    return x


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_matches_naive_composition(k, up, down, flip_weight):
    rng = _rng(11)
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, k, k))
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    pad = k // 2
    y = conv2d_resample(_t(x), _t(w), f=f.double(), up=up, down=down, padding=pad, flip_weight=flip_weight)
    assert y.shape[2:] == (8 * up // down, 8 * up // down)  # "same" resampling: exactly up/down times the size
    ref = naive_conv2d_resample(x, w, f.double().numpy(), up, down, pad, flip_weight)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-10)


def test_conv2d_resample_grouped_and_asymmetric_padding():
    rng = _rng(12)
    x, w = rng.standard_normal((1, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    for up, pad in [(2, 1), (1, [0, 2, 1, 1])]:
        y = conv2d_resample(_t(x), _t(w), f=f, up=up, padding=pad, groups=2)
        halves = [
            conv2d_resample(_t(x[:, 2 * g : 2 * g + 2]), _t(w[3 * g : 3 * g + 3]), f=f, up=up, padding=pad)
            for g in range(2)
        ]
        torch.testing.assert_close(y, torch.cat(halves, dim=1))
    y = conv2d_resample(_t(x), _t(w), padding=[0, 2, 1, 1], groups=2)[:, :3]  # x0=0, x1=2, y0=y1=1
    ref = naive_conv(np.pad(x[:, :2], ((0, 0), (0, 0), (1, 1), (0, 2))), w[:3])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-10)
