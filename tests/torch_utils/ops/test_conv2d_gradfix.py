"""conv2d_gradfix and fma: equal to torch.nn.functional, exact double backward, no_weight_gradients for R1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.torch_utils.ops.references import _rng, _t
from torch_utils.ops import conv2d_gradfix, fma


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
