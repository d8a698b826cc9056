"""Tests for torch_utils.ops against independent references (numpy loops, scipy, closed forms, finite differences)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.errors import UserError
from torch_utils.ops import bias_act, conv2d_gradfix, fma, upfirdn2d
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.modulated_conv import modulated_conv2d

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _t(a: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


# ------------------------------------------------------------------------------------------------ naive references


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


# --------------------------------------------------------------------------------------------------------- filters


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


# -------------------------------------------------------------------------------------------------------- bias_act

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


@pytest.mark.parametrize("act", sorted(_CLOSED_FORMS))
def test_bias_act_matches_closed_form(act):
    rng = _rng(6)
    x, b = rng.standard_normal((3, 4, 5)) * 2, rng.standard_normal(4)
    spec = bias_act.activation_funcs[act]
    assert spec.def_gain == pytest.approx(_DEFAULT_GAINS.get(act, 1.0))
    z = x + b[None, :, None]
    y = bias_act.bias_act(_t(x), _t(b), act=act)
    np.testing.assert_allclose(y.numpy(), _CLOSED_FORMS[act](z, spec.def_alpha) * spec.def_gain, rtol=1e-12, atol=1e-12)
    # explicit alpha, gain and clamp; bias along the last dim
    xb = rng.standard_normal((3, 4, 5)) * 2
    bb = rng.standard_normal(5)
    y = bias_act.bias_act(_t(xb), _t(bb), dim=-1, act=act, alpha=0.3, gain=1.7, clamp=0.8)
    ref = np.clip(_CLOSED_FORMS[act](xb + bb, 0.3) * 1.7, -0.8, 0.8)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_bias_act_rejects_bad_inputs():
    with pytest.raises(UserError):
        bias_act.bias_act(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(UserError):
        bias_act.bias_act(torch.zeros(2, 3), act="gelu-ish")


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "elu"])
def test_bias_act_ref_double_backward(act):
    rng = _rng(7)
    x, b = _t(rng.standard_normal((2, 3, 4)), True), _t(rng.standard_normal(3), True)
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=0.9, impl="ref")
    assert torch.autograd.gradcheck(fn, (x, b)) and torch.autograd.gradgradcheck(fn, (x, b))


# ----------------------------------------------------------------------------------------------- conv2d_gradfix & fma


@pytest.mark.parametrize(
    "transpose,kwargs",
    [(False, dict(stride=2, padding=1, groups=2)), (True, dict(stride=2, padding=1, output_padding=1, groups=2))],
)
def test_conv2d_gradfix_matches_functional_and_double_backward(transpose, kwargs):
    rng = _rng(8)
    x = _t(rng.standard_normal((1, 4, 4, 5) if transpose else (2, 4, 5, 6)), True)
    w = _t(rng.standard_normal((4, 3, 3, 3) if transpose else (6, 2, 3, 3)), True)  # 6 output channels either way
    b = _t(rng.standard_normal(6), True)
    ours = conv2d_gradfix.conv_transpose2d if transpose else conv2d_gradfix.conv2d
    native = F.conv_transpose2d if transpose else F.conv2d
    torch.testing.assert_close(ours(x, w, b, **kwargs), native(x, w, b, **kwargs))
    fn = lambda x, w, b: ours(x, w, b, **kwargs)
    assert torch.autograd.gradcheck(fn, (x, w, b)) and torch.autograd.gradgradcheck(fn, (x, w, b))


def _r1_setup():
    rng = _rng(9)
    x = _t(rng.standard_normal((2, 3, 6, 6)), True)
    w1, w2 = _t(rng.standard_normal((4, 3, 3, 3)), True), _t(rng.standard_normal((1, 4, 3, 3)), True)
    return x, w1, w2


def _tiny_d(x, w1, w2, conv):
    return conv(torch.tanh(conv(x, w1, padding=1)), w2, stride=2).sum()


def test_no_weight_gradients_skips_inner_weight_grads_but_r1_is_exact(monkeypatch):
    calls = []
    original = conv2d_gradfix._weight_grad
    monkeypatch.setattr(conv2d_gradfix, "_weight_grad", lambda *a: calls.append(1) or original(*a))
    x, w1, w2 = _r1_setup()
    with conv2d_gradfix.no_weight_gradients():
        (g,) = torch.autograd.grad(_tiny_d(x, w1, w2, conv2d_gradfix.conv2d), x, create_graph=True)
        assert not calls, "weight gradients were computed inside no_weight_gradients()"
        gx, gw = torch.autograd.grad(_tiny_d(x, w1, w2, conv2d_gradfix.conv2d), [x, w1], allow_unused=True)
        assert gw is None and gx is not None
    r1 = g.square().sum()
    r1_w1, r1_w2 = torch.autograd.grad(r1, [w1, w2])
    assert calls  # the outer pass does need them
    (g_ref,) = torch.autograd.grad(_tiny_d(x, w1, w2, F.conv2d), x, create_graph=True)
    ref_w1, ref_w2 = torch.autograd.grad(g_ref.square().sum(), [w1, w2])
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(r1_w1, ref_w1)
    torch.testing.assert_close(r1_w2, ref_w2)
    calls.clear()
    torch.autograd.grad(_tiny_d(x, w1, w2, conv2d_gradfix.conv2d), w1)  # outside the block: computed again
    assert calls


def test_fma_broadcasting_and_double_backward():
    rng = _rng(10)
    a = _t(rng.standard_normal((2, 3, 4, 4)), True)
    b = _t(rng.standard_normal((2, 3, 1, 1)), True)
    c = _t(rng.standard_normal((2, 1, 4, 4)), True)
    torch.testing.assert_close(fma.fma(a, b, c), a * b + c)
    assert torch.autograd.gradcheck(fma.fma, (a, b, c)) and torch.autograd.gradgradcheck(fma.fma, (a, b, c))


# ------------------------------------------------------------------------------------------------- conv2d_resample


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


# ------------------------------------------------------------------------------------------------ modulated_conv2d


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


# ------------------------------------------------------------------------------------------------------ custom_ops


def test_failed_plugin_build_warns_once_and_is_not_retried(monkeypatch, capsys):
    attempts = []

    def failing_load(*args):
        attempts.append(1)
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(custom_ops, "_load", failing_load)
    monkeypatch.setattr(custom_ops, "_plugins", {})
    assert custom_ops.get_plugin("dummy_plugin", ["a.cu"]) is None
    assert custom_ops.get_plugin("dummy_plugin", ["a.cu"]) is None
    assert len(attempts) == 1 and custom_ops.plugin_status("dummy_plugin") == "failed"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dummy_plugin" in err[0] and "nvcc exploded" in err[0] and "reference" in err[0]


# ---------------------------------------------------------------------------------------------- CUDA vs reference


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


@cuda_only
@pytest.mark.parametrize("act", sorted(_CLOSED_FORMS))
def test_bias_act_cuda_matches_ref(act):
    assert bias_act._plugin() is not None, "bias_act CUDA plugin failed to build"
    x, b = _cuda_pair((3, 5, 4, 6), 0), _cuda_pair((5,), 1)
    for clamp in (None, 0.7):
        fn = lambda impl, clamp=clamp: lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl=impl)
        _compare_grads(fn("cuda"), fn("ref"), (x, b))
    xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)  # layout preserved, same values
    y = bias_act.bias_act(xcl, b, act=act, impl="cuda")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, bias_act.bias_act(x, b, act=act, impl="ref"))
    y16 = bias_act.bias_act(x.half(), b.half(), act=act, impl="cuda")
    torch.testing.assert_close(y16, bias_act.bias_act(x, b, act=act, impl="ref").half(), atol=2e-2, rtol=1e-2)


@cuda_only
@pytest.mark.parametrize(
    "up,down,pad,fshape",
    [
        (1, 1, (1, 1, 1, 1), (3, 3)),
        (2, 1, (2, 1, 2, 1), (4, 4)),
        (1, 2, (1, 1, 1, 1), (4, 4)),
        ((3, 2), (2, 1), (1, -2, 3, 0), (3, 2)),
        (1, 1, (3, 4, 3, 4), (8,)),
    ],
)
def test_upfirdn2d_cuda_matches_ref(up, down, pad, fshape):
    assert upfirdn2d._plugin() is not None, "upfirdn2d CUDA plugin failed to build"
    x, f = _cuda_pair((2, 3, 9, 8), 2), _cuda_pair(fshape, 3).detach()
    fn = lambda impl: lambda x: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.7, impl=impl)
    _compare_grads(fn("cuda"), fn("ref"), (x,))
    y16 = upfirdn2d.upfirdn2d(x.half(), f, up=up, down=down, padding=pad, impl="cuda")
    torch.testing.assert_close(y16.double(), fn("ref")(x), atol=5e-2, rtol=1e-2)


# ------------------------------------------------------------------------- CUDA kernel maths, emulated on the CPU
# The kernels use grid-stride loops, so compiling the .cu files as plain C++ with one "thread" (blockIdx = 0,
# blockDim = gridDim = 1) runs every element sequentially. This checks the kernels' index and derivative maths
# against the reference path on machines without a GPU (a C++ compiler is enough; no torch build machinery).

_SHIM = r"""
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
struct ShimDim3 { unsigned int x; };
static const ShimDim3 blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
#include "KERNEL.cu"
extern "C" void run_bias_act(const double* x, const double* b, const double* xref, double* y,
                             long long numel, long long step_b, long long size_b, int act, int grad,
                             float alpha, float gain, float clamp) {
    BiasActParams p{x, b, xref, y, numel, step_b, size_b, act, grad, alpha, gain, clamp};
    bias_act_kernel<double>(p);
}
extern "C" void run_upfirdn2d(const double* x, const float* f, double* y, long long planes,
                              int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                              int upx, int upy, int downx, int downy, int px0, int py0) {
    Upfirdn2dParams p{x, f, y, planes, in_h, in_w, out_h, out_w, kh, kw, upx, upy, downx, downy, px0, py0};
    upfirdn2d_kernel<double>(p);
}
"""


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    """ctypes handles to the bias_act / upfirdn2d kernels compiled as C++ (skips if no C++ compiler)."""
    import ctypes
    import os
    import shutil
    import subprocess

    import torch.utils.cpp_extension as cpp_ext

    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    ops_dir = os.path.dirname(bias_act.__file__)
    libs = {}
    for kernel, other in (("bias_act", "upfirdn2d"), ("upfirdn2d", "bias_act")):
        src = _SHIM.replace("KERNEL", kernel)
        # keep only the wrapper for this kernel (the other one's types are not declared in this translation unit)
        start = src.index(f'extern "C" void run_{other}')
        end = src.index("}\n", start) + 2
        src = src[:start] + src[end:]
        out = tmp_path_factory.mktemp(kernel)
        (out / "shim.cpp").write_text(src)
        includes = [f"-I{ops_dir}", *[f"-I{p}" for p in cpp_ext.include_paths()]]
        cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-x", "c++", *includes, str(out / "shim.cpp")]
        res = subprocess.run([*cmd, "-o", str(out / "shim.so")], capture_output=True, text=True)
        assert res.returncode == 0, f"kernel source does not compile as C++:\n{res.stderr[-3000:]}"
        libs[kernel] = ctypes.CDLL(str(out / "shim.so"))
    return libs


def _ptr(t: torch.Tensor):
    import ctypes

    return ctypes.c_void_p(t.data_ptr()) if t.numel() else None


def _bias_act_kernel_cpu(lib, x, b, xref, grad, dim, act, alpha, gain, clamp):
    import ctypes

    y = torch.empty_like(x)
    lib.run_bias_act(
        _ptr(x), _ptr(b), _ptr(xref), _ptr(y), ctypes.c_longlong(x.numel()), ctypes.c_longlong(x.stride(dim)),
        ctypes.c_longlong(x.shape[dim]), act, grad, ctypes.c_float(alpha), ctypes.c_float(gain), ctypes.c_float(clamp),
    )  # fmt: skip
    return y


@pytest.mark.parametrize("act", sorted(_CLOSED_FORMS))
def test_bias_act_kernel_maths_on_cpu(cpu_kernels, act):
    """Kernel forward, f' and f'' terms vs autograd of the reference path (float64, alpha/gain/clamp given)."""
    lib, spec = cpu_kernels["bias_act"], bias_act.activation_funcs[act]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # NHWC
    b = torch.randn(3, dtype=torch.float64)
    alpha, gain, clamp = 0.25, 1.5, 1.1
    xr = x.clone().requires_grad_(True)
    y_ref = bias_act.bias_act(xr, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")
    y = _bias_act_kernel_cpu(lib, x, b, x.new_empty(0), 0, 1, spec.cuda_idx, alpha, gain, clamp)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-6, atol=1e-6)
    dy = torch.randn_like(x)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy, create_graph=True)
    dx = _bias_act_kernel_cpu(lib, dy, b, x, 1, 1, spec.cuda_idx, alpha, gain, clamp)
    torch.testing.assert_close(dx, dx_ref.detach(), rtol=1e-6, atol=1e-6)
    if spec.has_2nd_grad:  # d(dx)/dx = dy * f''(z) * gain * mask
        g = torch.randn_like(x)
        (ddx_ref,) = torch.autograd.grad(dx_ref, xr, g)
        ddx = _bias_act_kernel_cpu(lib, g * dy, b, x, 2, 1, spec.cuda_idx, alpha, gain, clamp)
        torch.testing.assert_close(ddx, ddx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "up,down,pad,fshape",
    [((1, 1), (1, 1), (1, 1, 1, 1), (3, 3)), ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),
     ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)), ((3, 2), (2, 1), (1, -2, 3, 0), (3, 2)),
     ((2, 1), (1, 3), (-1, -1, 2, -3), (2, 5))],
)  # fmt: skip
def test_upfirdn2d_kernel_maths_on_cpu(cpu_kernels, up, down, pad, fshape):
    """Kernel (forward, and backward via grad_params) vs the reference path and its autograd gradient."""
    import ctypes

    lib = cpu_kernels["upfirdn2d"]

    def run(x, f, params):  # what _Upfirdn2dCuda.forward does, with the emulated kernel
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = params
        fc = (f.float() * gain).flip([0, 1]) if not flip_filter else f.float() * gain
        fc = fc.contiguous()
        n, c, h, w = x.shape
        oh, ow = (
            (h * upy + py0 + py1 - f.shape[0] + downy) // downy,
            (w * upx + px0 + px1 - f.shape[1] + downx) // downx,
        )
        y = x.new_empty(n, c, oh, ow)
        lib.run_upfirdn2d(
            _ptr(x),
            _ptr(fc),
            _ptr(y),
            ctypes.c_longlong(n * c),
            h,
            w,
            oh,
            ow,
            *f.shape,
            upx,
            upy,
            downx,
            downy,
            px0,
            py0,
        )
        return y

    x, f = torch.randn(2, 3, 7, 6, dtype=torch.float64), torch.randn(fshape, dtype=torch.float64)
    params = (*up, *down, *pad, False, 1.5)
    xr = x.clone().requires_grad_(True)
    y_ref = upfirdn2d._upfirdn2d_ref(xr, f.float().double(), params)
    y = run(x, f, params)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-6, atol=1e-6)
    dy = torch.randn_like(y)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy)
    gp = upfirdn2d.grad_params(params, tuple(x.shape[2:]), tuple(y.shape[2:]), tuple(f.shape))
    torch.testing.assert_close(run(dy, f, gp), dx_ref, rtol=1e-6, atol=1e-6)
