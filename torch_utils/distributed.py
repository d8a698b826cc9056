"""Process-group helpers: one code path for 1 process, `train.py --gpus N` (spawned) and `torchrun` (multi-node).

Collectives here are symmetric: every rank must call them in the same order (never inside a rank-0-only branch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """True when a torch.distributed process group is active."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or another env:// launcher) set RANK/WORLD_SIZE for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init_process_group(rank: int, world_size: int, device: torch.device, init_method: str) -> None:
    """Join a process group of `world_size` spawned processes: NCCL on CUDA, gloo on CPU (no-op for one process)."""
    if world_size <= 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size)


def init_torchrun() -> None:
    """Join the torchrun job early (before any device is chosen): gloo for CPU tensors, NCCL for CUDA ones."""
    if not is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)


def broadcast_objects(objects: list, src: int = 0) -> None:
    """Replace `objects` (a list of picklable Python values) on every rank by rank `src`'s, in place."""
    if is_initialized() and get_world_size() > 1:
        dist.broadcast_object_list(objects, src=src)


def shutdown() -> None:
    """Leave the process group if one is active."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank so all replicas start identical."""
    if not is_initialized():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Average .grad over ranks exactly (one flat all-reduce); returns how many gradient values are NaN.

    Every rank reduces the same flat buffer, whatever it computed. A small first all-reduce counts per parameter the
    ranks that have a gradient; the buffer then holds every parameter that has one on any rank, with zeros where
    this rank has none (a branch of the design unused in this step), and each gets sum / world_size. A parameter
    without a gradient anywhere keeps .grad None, so the optimizer skips it exactly as in a single process.
    (Filtering None per rank instead would reduce buffers of different lengths: a hang, or the wrong slices
    averaged.) When every rank has every gradient the buffer is the one StyleGAN2 reduces, bit for bit.

    The count is a 0-d int64 tensor on the gradients' device (no host sync; equal on every rank, since NaN survives
    the all-reduce), for the caller to stop the run on (training.run.nonfinite). NaN is left in place, never turned
    into zeros that would hide a diverged run. An infinite value is clipped to +-1e5 as in StyleGAN2 (an fp16
    overflow must not poison Adam's moments); finite values are untouched.
    """
    params = list(params)
    if not params:
        return torch.zeros([], dtype=torch.int64)
    device = next((p.grad.device for p in params if p.grad is not None), params[0].device)
    distributed = is_initialized() and get_world_size() > 1
    if distributed:  # ranks that computed each gradient (collective-safe: the same length on every rank)
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(present)
        params = [p for p, n in zip(params, present.tolist()) if n > 0]
    else:  # one process: no device tensor, no host sync
        params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros([], dtype=torch.int64, device=device)
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=device)
                      for p in params])  # fmt: skip
    if distributed:
        dist.all_reduce(flat)
        flat /= get_world_size()
    num_nan = torch.isnan(flat).sum()
    torch.nan_to_num(flat, nan=float("nan"), posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:  # another rank computed it: this rank takes the same average
            p.grad = torch.empty_like(p)
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
    return num_nan


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place and return it (identity without a process group)."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def max_param_divergence(module: torch.nn.Module, ignore_suffixes: tuple[str, ...] = ("w_avg",)) -> float:
    """Largest |param_rank - param_rank0| over all ranks (0.0 means replicas are identical)."""
    if not is_initialized() or get_world_size() == 1:
        return 0.0
    worst = torch.zeros([], dtype=torch.float64)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith(ignore_suffixes) or not tensor.is_floating_point():
            continue
        ref = tensor.detach().clone()
        if is_initialized():
            dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (tensor.detach() - ref).abs().max().double().cpu())
    if is_initialized():
        worst = worst.to(next(module.parameters()).device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
