"""StyleGAN2 custom ops: plain-PyTorch reference implementations plus optional fused CUDA kernels.

Public functions: bias_act, upfirdn2d (+ setup_filter, filter2d, upsample2d, downsample2d), conv2d_gradfix
(conv2d, conv_transpose2d, no_weight_gradients), conv2d_resample, fma, modulated_conv2d; `active_impl()` says
which implementation each op uses, for logs.
"""

from __future__ import annotations

import torch

# Modules keep their names (`bias_act.bias_act(...)`, `upfirdn2d.setup_filter(...)`); functions whose names do not
# clash with a module are re-exported as well.
from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, modulated_conv, upfirdn2d
from torch_utils.ops.conv2d_gradfix import no_weight_gradients
from torch_utils.ops.modulated_conv import modulated_conv2d
from torch_utils.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upsample2d

__all__ = [
    "active_impl",
    "bias_act",
    "conv2d_gradfix",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "fma",
    "modulated_conv",
    "modulated_conv2d",
    "no_weight_gradients",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]


def active_impl(device: torch.device | str | None = None) -> dict[str, str]:
    """{op: 'cuda' | 'ref' | 'autograd.Function'} for tensors on `device` (default: cuda if available, else cpu).

    Asking about a CUDA device builds the plugins now (once per process) so the answer is what training will use.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    impl = {
        "bias_act": "cuda" if on_cuda and bias_act._plugin() is not None else "ref",
        "upfirdn2d": "cuda" if on_cuda and upfirdn2d._plugin() is not None else "ref",
    }
    impl["conv2d_gradfix"] = "autograd.Function"  # same on every device: exact double backward, skippable dW
    for derived in ("conv2d_resample", "modulated_conv2d"):
        impl[derived] = f"upfirdn2d={impl['upfirdn2d']}"
    return impl
