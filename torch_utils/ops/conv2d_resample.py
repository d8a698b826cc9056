"""2-D convolution with integer up/down-sampling by an FIR filter, via the cheapest exact sequence of ops.

Meaning (every path computes exactly this): with the automatic "same" paddings added to `padding`,
    up > 1:  y = downsample( conv_w( upfirdn2d(x, f, up, pad, gain=up^2) ), f, down )
    up == 1: y = downsample( conv_w( pad(x) ), f, down )
where conv_w is a valid 2-D conv (cross-correlation if flip_weight, true convolution otherwise) and
downsample(., f, down) filters with f (no padding) and keeps every down-th pixel. Because the FIR filter and the
conv are both linear shift-invariant they commute, which is what lets the fast paths reorder them.
"""

from __future__ import annotations

import torch

from torch_utils.errors import UserError
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops.upfirdn2d import _filter_size, _parse_padding, upfirdn2d


def _conv2d_wrapper(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | list[int] = 0,
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    """conv2d / conv_transpose2d; flip_weight=False flips the kernel first (F.conv2d itself correlates)."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):  # a 1x1 kernel is its own flip
        w = w.flip([2, 3])
    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int | list[int] | tuple[int, ...] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], f from setup_filter -> [N, Cout, ~H*up/down, ~W*up/down]."""
    if x.ndim != 4 or w.ndim != 4:
        raise UserError(f"conv2d_resample expects 4-D x and w, got {tuple(x.shape)} and {tuple(w.shape)}")
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise UserError(f"up and down must be integers >= 1, got up={up}, down={down}")
    if (up > 1 or down > 1) and f is None:
        raise UserError("conv2d_resample needs a resampling filter f when up > 1 or down > 1")
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # "Same" paddings of upsample2d / downsample2d, folded into the single padding step.
    if up > 1:
        px0, px1, py0, py1 = (
            px0 + (fw + up - 1) // 2,
            px1 + (fw - up) // 2,
            py0 + (fh + up - 1) // 2,
            py1 + (fh - up) // 2,
        )
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    # 1x1 kernel commutes with everything: downsample first / upsample last so the conv runs at low resolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2, flip_filter=flip_filter)

    # Downsampling only: filter (with all the padding), then a strided conv = conv followed by decimation.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: a stride-`up` transposed conv does the zero insertion and a FULL convolution with w in one op.
    if up > 1:
        # conv_transpose2d wants [Cin, Cout/groups, kh, kw]: swap the in/out axes inside each group.
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # Full conv == valid conv of the signal padded by (k - 1) on both sides; the zero-inserted signal also
        # has (up - 1) trailing zeros. What remains of the requested padding is applied after the conv.
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)  # symmetric crop the conv can do itself
        # conv_transpose2d convolves, so correlation (flip_weight=True) needs the flipped kernel and vice versa.
        x = _conv2d_wrapper(
            x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight
        )
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: a plain conv when the padding is symmetric and non-negative.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Generic fallback (asymmetric or negative padding).
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
