"""bias_act against closed forms: every activation, gains, clamps, bad inputs, double backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.torch_utils.ops.references import _CLOSED_FORMS, _DEFAULT_GAINS, _rng, _t
from torch_utils.errors import UserError
from torch_utils.ops import bias_act


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
