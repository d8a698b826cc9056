"""upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample, per channel (2-D scipy.signal.upfirdn).

For each channel: insert (up - 1) zeros after every pixel, pad by (x0, x1, y0, y1) pixels (negative = crop),
convolve with the 2-D filter f (valid), keep every down-th pixel starting at 0. Output size per axis:
(in * up + pad0 + pad1 - taps + down) // down. A 1-D filter is applied separably (x pass, then y pass).
Default (`flip_filter=False`) is true convolution like scipy; `flip_filter=True` correlates instead.

'ref' = zero insertion by reshape + pad, a depthwise conv through conv2d_gradfix, strided slicing.
'cuda' = one direct kernel; its gradient is another upfirdn2d (up/down swapped, filter flipped), so any order works.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.errors import UserError
from torch_utils.ops import conv2d_gradfix

PadSpec = int | tuple[int, int] | tuple[int, int, int, int] | list[int]


def _parse_scaling(s: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    sx, sy = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
    if sx < 1 or sy < 1:
        raise UserError(f"up/down factors must be >= 1, got {s}")
    return sx, sy


def _parse_padding(p: PadSpec) -> tuple[int, int, int, int]:
    """int -> all sides; (px, py) -> symmetric per axis; (x0, x1, y0, y1) as is."""
    if isinstance(p, int):
        return (p, p, p, p)
    p = [int(v) for v in p]
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    if len(p) == 4:
        return (p[0], p[1], p[2], p[3])
    raise UserError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {p}")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(fw, fh) of a 2-D [fh, fw] or separable 1-D [taps] filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def setup_filter(
    f: list[float] | torch.Tensor | float | None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """1-D taps or 2-D kernel -> float32 filter [fh, fw] (or [taps] if separable); short 1-D filters become 2-D."""
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.ndim > 2 or f.numel() == 0:
        raise UserError(f"filter must be a non-empty scalar, 1-D or 2-D array, got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f[None]
    if separable is None:  # short filters are cheaper as one 2-D pass than as two 1-D passes
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise UserError("a 2-D filter cannot be separable")
    if normalize:
        f = f / f.sum()  # unit DC gain
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))  # per-pass share of the gain for separable filters
    return f.to(device)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | tuple[int, int] = 1,
    down: int | tuple[int, int] = 1,
    padding: PadSpec = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """x [N, C, H, W], f [fh, fw] / [taps] / None -> [N, C, (H*up + py0 + py1 - fh + down) // down, (same in x)]."""
    if x.ndim != 4:
        raise UserError(f"upfirdn2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.ndim not in (1, 2):
        raise UserError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    if f.ndim == 1:  # separable: an x-only pass then a y-only pass (the whole gain goes on the first)
        x = upfirdn2d(x, f[None, :], (upx, 1), (downx, 1), (px0, px1, 0, 0), flip_filter, gain, impl)
        return upfirdn2d(x, f[:, None], (1, upy), (1, downy), (0, 0, py0, py1), flip_filter, 1, impl)
    params = (upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    if _use_cuda(x, impl):
        return _Upfirdn2dCuda.apply(x, f, params)
    return _upfirdn2d_ref(x, f, params)


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, params: tuple) -> torch.Tensor:
    """Plain-PyTorch path for a 2-D filter; differentiable to any order through conv2d_gradfix."""
    upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = params
    n, c, h, w = x.shape
    if upx > 1 or upy > 1:  # zero insertion: each pixel followed by (up - 1) zeros along each axis
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = f.to(x.dtype) * gain
    if not flip_filter:  # conv2d correlates; flipping makes it a true convolution (scipy.signal.upfirdn)
        f = f.flip([0, 1])
    x = conv2d_gradfix.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    return x[:, :, ::downy, ::downx]


def grad_params(params: tuple, in_hw: tuple[int, int], out_hw: tuple[int, int], f_hw: tuple[int, int]) -> tuple:
    """Params of the upfirdn2d that computes dL/dx from dL/dy (adjoint: up<->down, flipped filter, new padding)."""
    upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = params
    (ih, iw), (oh, ow), (fh, fw) = in_hw, out_hw, f_hw
    # Adjoint chain: zero-insert by `down`, full correlation with the reversed filter, crop the forward padding,
    # keep every up-th sample; the end padding is trimmed so no sample past the last kept one is computed.
    gx0 = fw - px0 - 1
    gy0 = fh - py0 - 1
    gx1 = iw * upx - ow * downx + px0 - upx + 1
    gy1 = ih * upy - oh * downy + py0 - upy + 1
    return (downx, downy, upx, upy, gx0, gx1, gy0, gy1, not flip_filter, gain)


# ---------------------------------------------------------------------------------------------------------------
# CUDA path.

_SRC_DIR = os.path.dirname(os.path.abspath(__file__))
# The installed package's own sources (setup.py package_data ships the .cpp/.cu/.h next to this module).
PLUGIN = custom_ops.PluginSpec(
    "upfirdn2d_plugin",
    sources=(os.path.join(_SRC_DIR, "upfirdn2d.cpp"), os.path.join(_SRC_DIR, "upfirdn2d.cu")),
    headers=(os.path.join(_SRC_DIR, "upfirdn2d.h"),),
)


def _plugin():
    """The fused kernels for this process's GPU (built once), or None: then the reference path runs."""
    return custom_ops.get_plugin(PLUGIN)


def _use_cuda(x: torch.Tensor, impl: str) -> bool:
    if impl not in ("auto", "ref", "cuda"):
        raise UserError(f"impl must be 'auto', 'ref' or 'cuda', got {impl!r}")
    if impl == "cuda" and not x.is_cuda:
        raise UserError("upfirdn2d(impl='cuda') needs a CUDA tensor")
    return impl != "ref" and x.is_cuda and _plugin() is not None


class _Upfirdn2dCuda(torch.autograd.Function):
    """Kernel forward; backward is this same Function with adjoint params, hence differentiable to any order."""

    @staticmethod
    def forward(ctx, x, f, params):  # type: ignore[override]
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = params
        fc = f.to(device=x.device, dtype=torch.float32) * gain
        if not flip_filter:  # the kernel correlates; flip for true convolution
            fc = fc.flip([0, 1])
        y = _plugin().upfirdn2d(x.contiguous(), fc.contiguous(), upx, upy, downx, downy, px0, px1, py0, py1)
        ctx.save_for_backward(f)
        ctx.params = params
        ctx.in_hw = tuple(x.shape[2:])
        ctx.out_hw = tuple(y.shape[2:])
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            gp = grad_params(ctx.params, ctx.in_hw, ctx.out_hw, tuple(f.shape))
            dx = _Upfirdn2dCuda.apply(dy, f, gp)
        return dx, None, None


# ---------------------------------------------------------------------------------------------------------------
# Same-size helpers.


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: PadSpec = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Filter x [N, C, H, W] with f, padded so the output is [N, C, H, W] (plus any extra `padding`)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | tuple[int, int] = 2,
    padding: PadSpec = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """x [N, C, H, W] -> [N, C, H*up, W*up]: zero insertion + filter with gain up^2 (keeps the DC level)."""
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: int | tuple[int, int] = 2,
    padding: PadSpec = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """x [N, C, H, W] -> [N, C, H/down, W/down]: anti-alias filter, then keep every down-th pixel."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
