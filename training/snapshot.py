"""Snapshots that loading can never turn into code execution.

Two kinds of file, both plain `torch.save` dicts of tensors, numbers, strings and lists, read back with
`torch.load(..., weights_only=True)` and written atomically (temp file + rename, so a crash mid-write never
leaves a corrupt newest file):
  network-snapshot-<kimg>.pt   inference: G_ema weights + the kwargs that rebuild it + the run config
  training-state-<kimg>.pt     resume: G, D, G_ema, both optimizers, image/tick counters, RNG states, config
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Any

import torch

from torch_utils.errors import UserError

NETWORK_FORMAT = "taxfree3dmm-network-v1"
STATE_FORMAT = "taxfree3dmm-training-state-v1"


def atomic_save(obj: dict[str, Any], path: str) -> None:
    """torch.save to a temp file in the same folder, then rename over `path` (atomic on POSIX)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def safe_load(path: str) -> dict[str, Any]:
    """Load a snapshot with weights_only=True; a corrupt or foreign file is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read snapshot {path} (corrupt, truncated or not a taxfree3dmm file): "
                        f"{str(e).splitlines()[0][:200]}") from e
    if not isinstance(data, dict) or data.get("format") not in (NETWORK_FORMAT, STATE_FORMAT):
        raise UserError(f"{path} is not a taxfree3dmm snapshot (expected format {NETWORK_FORMAT} or {STATE_FORMAT})")
    return data


def save_network_snapshot(path: str, G_ema: torch.nn.Module, G_kwargs: dict, config: dict, cur_nimg: int) -> None:
    """Write the inference snapshot: G_ema + everything needed to rebuild and condition it."""
    atomic_save({"format": NETWORK_FORMAT, "G_kwargs": G_kwargs, "G_ema": _cpu_state(G_ema),
                 "config": config, "cur_nimg": int(cur_nimg)}, path)


def save_training_state(path: str, *, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
                        opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, G_kwargs: dict, D_kwargs: dict,
                        config: dict, cur_nimg: int, cur_tick: int, batch_idx: int,
                        rng_states: dict[str, torch.Tensor]) -> None:
    """Write the full resumable state (rank 0 only; all ranks hold identical copies)."""
    atomic_save({
        "format": STATE_FORMAT, "G_kwargs": G_kwargs, "D_kwargs": D_kwargs, "config": config,
        "G": _cpu_state(G), "D": _cpu_state(D), "G_ema": _cpu_state(G_ema),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
        "cur_nimg": int(cur_nimg), "cur_tick": int(cur_tick), "batch_idx": int(batch_idx),
        "rng": {k: v.cpu() for k, v in rng_states.items()},
    }, path)


def load_network(path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild G_ema from a network snapshot, a training state or an NVIDIA StyleGAN2 .pkl: eval mode,
    requires_grad off, on `device`."""
    from training.networks import Generator

    if path.lower().endswith(".pkl"):  # NVIDIA pickle: read as data by a restricted unpickler, never executed
        from training.nvidia_pickle import read_nvidia_generator

        data = dict(zip(("G_kwargs", "G_ema"), read_nvidia_generator(path)))
    else:
        data = safe_load(path)
    G = Generator(**data["G_kwargs"])
    G.load_state_dict(data["G_ema"])
    G.eval().requires_grad_(False)
    G.snapshot_config = data.get("config", {})  # how it was trained: face model, FR, dataset
    return G.to(device)


def snapshot_kimg(path: str) -> int:
    """The kimg number in a snapshot file name (-1 if none)."""
    m = re.search(r"(\d+)\.pt$", os.path.basename(path))
    return int(m.group(1)) if m else -1


def latest_training_state(run_dir: str) -> str | None:
    """Path of the newest training-state-*.pt in a run directory, or None."""
    states = glob.glob(os.path.join(run_dir, "training-state-*.pt"))
    return max(states, key=snapshot_kimg) if states else None


def resolve_resume(resume: str, outdir: str) -> str:
    """--resume PATH.pt | RUN_DIR | latest (newest run in outdir with a training state) -> a state file."""
    if resume == "latest":
        runs = sorted(glob.glob(os.path.join(outdir, "[0-9][0-9][0-9][0-9][0-9]-*")), reverse=True)
        for run in runs:
            state = latest_training_state(run)
            if state is not None:
                return state
        raise UserError(f"--resume latest: no run in {outdir} has a training-state-*.pt yet")
    if os.path.isdir(resume):
        state = latest_training_state(resume)
        if state is None:
            raise UserError(f"--resume: {resume} contains no training-state-*.pt")
        return state
    if not os.path.isfile(resume):
        raise UserError(f"--resume: no such file or run directory: {resume}")
    return resume
