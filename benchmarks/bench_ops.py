"""Time torch_utils.ops: reference path on the current device, and fused CUDA kernels vs reference when available.

Usage: python benchmarks/bench_ops.py [--device cuda|cpu] [--iters 20] [--batch 4]
Prints one row per (op, shape, impl, device) with ms/call for the forward pass and for forward + backward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere in the repo

from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d  # noqa: E402
from torch_utils.ops.modulated_conv import modulated_conv2d  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], torch.Tensor], device: torch.device, iters: int, backward: bool) -> float:
    """Mean wall time of fn() (plus .backward() of its sum) in milliseconds, after two warm-up calls."""

    def step() -> None:
        y = fn()
        if backward:
            y.float().sum().backward()

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e3


_NO_KERNEL_OPS = ("conv2d_resample", "modulated_conv2d")  # no kernel of their own: 'auto' rows only


def cases(
    device: torch.device, batch: int, dtype: torch.dtype, scale: int
) -> list[tuple[str, str, Callable[[str], torch.Tensor]]]:
    """(op name, shape string, fn(impl) -> output) for StyleGAN2-256-like sizes, channels divided by `scale`."""
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    out = []
    for c, r in ((512 // scale, 16), (256 // scale, 64), (128 // scale, 256)):
        x, b = rand(batch, c, r, r), rand(c)
        shape = f"{batch}x{c}x{r}x{r}"
        out.append(
            ("bias_act lrelu+clamp", shape, lambda i, x=x, b=b: bias_act.bias_act(x, b, act="lrelu", clamp=256, impl=i))
        )
        out.append(("upsample2d [1,3,3,1]", shape, lambda i, x=x: upfirdn2d.upsample2d(x, f, impl=i)))
        out.append(("downsample2d [1,3,3,1]", shape, lambda i, x=x: upfirdn2d.downsample2d(x, f, impl=i)))
    for c, r in ((256 // scale, 32), (128 // scale, 64)):
        x, w = rand(batch, c, r, r), rand(c, c, 3, 3)
        s = torch.randn(batch, c, device=device, requires_grad=True)
        shape = f"{batch}x{c}x{r}x{r} k3"
        out.append(
            (
                "conv2d_resample up2",
                shape,
                lambda i, x=x, w=w: conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False),
            )
        )
        out.append(
            (
                "conv2d_resample down2",
                shape,
                lambda i, x=x, w=w: conv2d_resample.conv2d_resample(x, w, f=f, down=2, padding=1),
            )
        )
        for fused in (False, True):
            modconv = lambda i, x=x, w=w, s=s, fused=fused: modulated_conv2d(x, w, s, padding=1, fused_modconv=fused)
            out.append((f"modulated_conv2d fused={fused}", shape, modconv))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per row (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4 on CUDA, 1 on CPU)")
    parser.add_argument("--scale", type=int, default=None, help="divide channel counts by this (default 1 / 8 on CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    iters = args.iters or (20 if on_cuda else 3)
    batch = args.batch or (4 if on_cuda else 1)
    scale = args.scale or (1 if on_cuda else 8)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if on_cuda else 'cpu'}, {args.dtype}")
    print(f"{'op':<30} {'shape':<18} {'impl':<5} {'device':<7} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    for op, shape, fn in cases(device, batch, getattr(torch, args.dtype), scale):
        impls = ["auto"] if op.startswith(_NO_KERNEL_OPS) else (["ref", "cuda"] if on_cuda else ["ref"])
        for impl in impls:
            try:
                fwd = time_ms(lambda impl=impl, fn=fn: fn(impl), device, iters, backward=False)
                both = time_ms(lambda impl=impl, fn=fn: fn(impl), device, iters, backward=True)
                print(f"{op:<30} {shape:<18} {impl:<5} {device.type:<7} {fwd:9.3f} {both:11.3f}", flush=True)
            except RuntimeError as err:  # e.g. fp16 on a CPU build without half kernels
                print(f"{op:<30} {shape:<18} {impl:<5} {device.type:<7} {'n/a':>9} {'n/a':>11}  {str(err)[:60]!r}")


if __name__ == "__main__":
    main()
