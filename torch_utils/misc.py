"""Small helpers shared by the training loop, metrics and tools."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from torch_utils.errors import UserError


def format_time(seconds: float) -> str:
    """Human-readable duration: 12s, 3m 04s, 1h 02m 03s, 2d 03h 04m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device choice of every entry point: 'auto' | 'cpu' | 'cuda' | 'cuda:K' -> a torch.device.

    'auto' takes cuda:<local_rank> when CUDA is available, else the CPU; 'cuda' takes cuda:<local_rank> (one
    process per GPU) and is a UserError without CUDA or when local_rank has no device.
    """
    requested = requested or "auto"
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not requested.startswith("cuda") and requested != "auto":
        raise UserError(f"--device must be auto, cpu, cuda or cuda:K, not '{requested}'")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA device is available (use --device cpu)")
    index = int(requested.split(":", 1)[1]) if ":" in requested else local_rank
    if index >= torch.cuda.device_count():
        raise UserError(f"CUDA device {index} was requested but only {torch.cuda.device_count()} are visible")
    return torch.device("cuda", index)


_FP16_ON_CPU = [False]  # test-only switch (fp16_blocks_on_cpu); never set by a user flag


def fp16_blocks_active(device: torch.device) -> bool:
    """Whether the fp16 blocks of G and D (num_fp16_res) compute in float16 on `device`: CUDA only, like StyleGAN2,
    because half-precision convolutions on a CPU are slow; tests widen it to the CPU with `fp16_blocks_on_cpu`."""
    return device.type == "cuda" or _FP16_ON_CPU[0]


@contextlib.contextmanager
def fp16_blocks_on_cpu() -> Iterator[None]:
    """Test-only: run the fp16 blocks in float16 on CPU tensors too, so their casts are exercised without a GPU."""
    previous, _FP16_ON_CPU[0] = _FP16_ON_CPU[0], True
    try:
        yield
    finally:
        _FP16_ON_CPU[0] = previous


def quantize_uint8(images: torch.Tensor | np.ndarray, drange: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """The one float -> uint8 quantiser of every PNG the project writes (training grids, generate.py, tools).

        u = clip(floor(x * s + (1/2 - lo * s)), 0, 255),   s = 255 / (hi - lo)      (round half up; lo -> 0, hi -> 255)

    in float32, so that for drange (-1, 1) it is bit for bit StyleGAN2's `(x * 127.5 + 128).clamp(0, 255).to(uint8)`.
    Any layout; returns a numpy uint8 array of the same shape.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    lo, hi = drange
    scale = 255 / (hi - lo)
    scaled = np.asarray(images, dtype=np.float32) * np.float32(scale) + np.float32(0.5 - lo * scale)
    return np.floor(scaled).clip(0, 255).astype(np.uint8)


def summarise_names(names: list[str], limit: int = 6) -> str:
    """Comma-separated names, truncated to `limit` with a count of the rest (keeps an error to one line)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def describe_state_dict_mismatch(expected: dict, state: dict) -> str:
    """Why `state` does not fit a module whose state dict is `expected`, in one line; "" when every name and shape
    matches. Names missing keys, unexpected keys and tensors of another shape (a non-tensor value counts as one):
    the one message of every strict loader (snapshots, FR checkpoints)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shape = lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__  # noqa: E731
    wrong = [f"{k} {shape(state[k])} != {shape(expected[k])}" for k in expected
             if k in state and shape(state[k]) != shape(expected[k])]  # fmt: skip
    kinds = (("missing keys", missing, 6), ("unexpected keys", unexpected, 6),
             ("shape mismatch (file != network)", wrong, 3))
    problems = [f"{what}: {summarise_names(names, limit)}" for what, names, limit in kinds if names]
    return "; ".join(problems)
