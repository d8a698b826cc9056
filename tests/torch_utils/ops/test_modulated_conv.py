"""modulated_conv2d: fused equals non-fused equals a per-sample loop; demodulation; double backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.torch_utils.ops.references import _rng, _t
from torch_utils.ops import upfirdn2d
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.modulated_conv import modulated_conv2d


def naive_modconv(x, weight, styles, demodulate, up, f, padding, noise, flip_weight):
    out = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        if up == 1:
            out.append(F.conv2d(x[n : n + 1], w if flip_weight else w.flip([2, 3]), padding=padding))
        else:
            out.append(conv2d_resample(x[n : n + 1], w, f=f, up=up, padding=padding, flip_weight=flip_weight))
    y = torch.cat(out)
    return y + noise if noise is not None else y


@pytest.mark.parametrize("up,demodulate,flip_weight", [(1, True, True), (1, False, False), (2, True, False)])
def test_modulated_conv2d_fused_equals_nonfused_equals_loop(up, demodulate, flip_weight):
    rng = _rng(13)
    x, weight = _t(rng.standard_normal((3, 5, 6, 6))), _t(rng.standard_normal((4, 5, 3, 3)))
    styles = _t(rng.standard_normal((3, 5)))
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    noise = _t(rng.standard_normal((3, 1, 6 * up, 6 * up)))
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=flip_weight)
    fused = modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    nonfused = modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    ref = naive_modconv(x, weight, styles, demodulate, up, f, 1, noise, flip_weight)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(nonfused, ref)


def test_demodulation_invariant_to_weight_scale_and_fp16_guard():
    rng = _rng(14)
    x, weight = torch.randn(2, 6, 5, 5, dtype=torch.float64), _t(rng.standard_normal((3, 6, 3, 3)))
    styles = _t(rng.standard_normal((2, 6)))
    y = modulated_conv2d(x, weight, styles, padding=1)
    torch.testing.assert_close(modulated_conv2d(x, weight * 37.0, styles, padding=1), y)
    torch.testing.assert_close(modulated_conv2d(x, weight, styles * 5.0, padding=1), y)
    # Demodulation normalises each output channel over ALL input channels: per-channel output energy ~ unit.
    assert not torch.allclose(modulated_conv2d(x, weight * 37.0, styles, padding=1, demodulate=False), y)
    try:  # fp16 guard: pre-scaling must not change the result (beyond fp16 rounding)
        y16 = modulated_conv2d(x.half(), (weight * 1e3).float(), styles.float() * 1e3, padding=1, fused_modconv=False)
    except RuntimeError as err:  # some CPU builds lack fp16 convolutions
        pytest.skip(f"fp16 conv unavailable on this device: {err}")
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16.double(), y, atol=2e-2, rtol=2e-2)


def test_modulated_conv2d_double_backward():
    rng = _rng(15)
    x, weight = _t(rng.standard_normal((2, 2, 4, 4)), True), _t(rng.standard_normal((2, 2, 3, 3)), True)
    styles = _t(rng.standard_normal((2, 2)), True)
    for fused in (True, False):
        fn = lambda x, w, s, fused=fused: modulated_conv2d(x, w, s, padding=1, fused_modconv=fused)
        assert torch.autograd.gradcheck(fn, (x, weight, styles))
        assert torch.autograd.gradgradcheck(fn, (x, weight, styles))
