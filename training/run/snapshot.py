"""Snapshots that loading can never turn into code execution, and that are checked before anything trusts them.

Two kinds of file, both plain `torch.save` dicts of tensors, numbers, strings and lists, read back with
`torch.load(..., weights_only=True)`:
  network-snapshot-<tag>.pt   inference: G_ema weights + the kwargs that rebuild it + the run config
  training-state-<tag>.pt     resume: G, D, G_ema, both optimizers, image/tick counters, RNG states, config
<tag> is `<kimg:06d>.<images:03d>` (exact image count, e.g. 000012.288), unique per snapshot and ordered by name;
older `<kimg:06d>` names still load and sort by the images they stand for.

Guarantees: a write goes to a temp file in the same folder, is fsynced and renamed over the target (a crash or
a full disk never leaves a damaged newest file; the previous snapshots are untouched), with mode 0666 & ~umask
like every other output. Every file stores a SHA-256 of its contents, verified on load, so a flipped byte is
reported instead of loading silently. Loading checks the keys, the counters (non-negative integers) and that no
tensor holds NaN/inf; every problem is one UserError line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from torch_utils.errors import UserError, first_line
from torch_utils.misc import describe_state_dict_mismatch
from torch_utils.outputs import publish

NETWORK_FORMAT = "taxfree3dmm-network-v1"
STATE_FORMAT = "taxfree3dmm-training-state-v1"
TEMP_PREFIX = ".tmp-"
_REQUIRED = {
    NETWORK_FORMAT: {"G_kwargs": dict, "G_ema": dict, "config": dict, "cur_nimg": int},
    STATE_FORMAT: {"G_kwargs": dict, "D_kwargs": dict, "config": dict, "G": dict, "D": dict, "G_ema": dict,
                   "opt_G": dict, "opt_D": dict, "cur_nimg": int, "cur_tick": int, "batch_idx": int, "rng": dict},
}  # fmt: skip
_COUNTERS = ("cur_nimg", "cur_tick", "batch_idx")


# ----------------------------------------------------------------------------------------------------------------
# Names.


def snapshot_tag(cur_nimg: int) -> str:
    """File-name tag of a snapshot taken after cur_nimg images: '<kimg:06d>.<images:03d>' (12288 -> 000012.288)."""
    return f"{cur_nimg // 1000:06d}.{cur_nimg % 1000:03d}"


def snapshot_nimg(path: str) -> int:
    """Images a snapshot file name stands for (new '<kimg>.<img>' and old '<kimg>' names), -1 if none."""
    m = re.search(r"-(\d+)(?:\.(\d{3}))?\.pt$", os.path.basename(path))
    if m is None:
        return -1
    return int(m.group(1)) * 1000 + (int(m.group(2)) if m.group(2) else 0)


def latest_training_state(run_dir: str) -> str | None:
    """Path of the newest training-state-*.pt in a run directory (by image count, then time), or None."""
    states = glob.glob(os.path.join(run_dir, "training-state-*.pt"))
    return max(states, key=lambda p: (snapshot_nimg(p), os.path.getmtime(p))) if states else None


def resolve_resume(resume: str, outdir: str, log: Callable[[str], None] | None = None) -> str:
    """--resume PATH.pt | RUN_DIR | latest (newest run in outdir with a training state) -> a state file.

    `latest` says (through log) when it passes over newer runs that have no training state yet.
    """
    if resume == "latest":
        runs = [d for d in glob.glob(os.path.join(outdir, "*")) if re.match(r"^\d+-", os.path.basename(d))]
        runs.sort(key=lambda d: int(os.path.basename(d).split("-", 1)[0]), reverse=True)
        for i, run in enumerate(runs):
            state = latest_training_state(run)
            if state is not None:
                if i > 0 and log is not None:
                    newer = ", ".join(os.path.basename(r) for r in runs[:i])
                    log(f"--resume latest: {newer} has no training state yet; resuming the older run "
                        f"{os.path.basename(run)}")  # fmt: skip
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


# ----------------------------------------------------------------------------------------------------------------
# Contents: checksum and finiteness.


def content_digest(obj: Any) -> str:
    """SHA-256 over a snapshot's contents (keys, types, tensor dtypes, shapes and bytes), the 'sha256' key excluded.

    Computed on the objects rather than the file bytes, so the digest can be stored inside the file it covers.
    """
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                if key == "sha256" and value is obj:
                    continue
                digest.update(repr(key).encode() + b":")
                visit(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):  # torch.load may turn one into the other
            digest.update(b"[")
            for item in value:
                visit(item)
            digest.update(b"]")
        else:
            digest.update(f"{type(value).__name__}:{value!r};".encode())

    visit(obj)
    return digest.hexdigest()


def find_non_finite(obj: Any, prefix: str = "") -> str | None:
    """Key path of the first floating tensor (or float) holding NaN/inf in a nested snapshot dict, else None."""
    if isinstance(obj, torch.Tensor):
        return prefix if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, float):
        return prefix if obj != obj or obj in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = find_non_finite(value, f"{prefix}[{key!r}]" if prefix else str(key))
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def _umask() -> int:
    # Read without changing it (os.umask would briefly change it for every thread).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: dict[str, Any], path: str, overwrite: bool = True) -> None:
    """torch.save `obj` plus its 'sha256' to a temp file in the same folder, fsync, rename over `path`.

    A full disk or an unwritable folder is one UserError line; the temp file is removed and `path` (and every
    older snapshot) is left as it was. overwrite=False never replaces an existing `path` (torch_utils.outputs).
    """
    obj = dict(obj, sha256=content_digest(obj))
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pt", dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; snapshots are shared like the other outputs
        with os.fdopen(fd, "wb", buffering=0) as f:  # unbuffered: a write error surfaces as OSError, not in torch
            torch.save(obj, f)
            os.fsync(f.fileno())
        publish(tmp, path, overwrite)
        tmp = None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or first_line(e)}; the earlier snapshots are "
                        "untouched (free space or fix permissions, then resume)") from None  # fmt: skip
    except RuntimeError as e:  # torch's zip writer reports some I/O failures itself
        raise UserError(f"cannot write {path}: {first_line(e)}; the earlier snapshots are untouched") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _refuse_non_finite(obj: dict[str, Any], path: str) -> None:
    bad = find_non_finite(obj)
    if bad is not None:
        raise UserError(f"refusing to write {os.path.basename(path)}: {bad} holds NaN/inf (training diverged); "
                        "the earlier snapshots are the last good ones")  # fmt: skip


def save_network_snapshot(path: str, G_ema: torch.nn.Module, G_kwargs: dict, config: dict, cur_nimg: int) -> None:
    """Write the inference snapshot: G_ema + everything needed to rebuild and condition it."""
    obj = {"format": NETWORK_FORMAT, "G_kwargs": G_kwargs, "G_ema": _cpu_state(G_ema), "config": config,
           "cur_nimg": int(cur_nimg)}  # fmt: skip
    _refuse_non_finite(obj, path)
    atomic_save(obj, path)


def save_training_state(path: str, *, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
                        opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, G_kwargs: dict, D_kwargs: dict,
                        config: dict, cur_nimg: int, cur_tick: int, batch_idx: int,
                        rng_states: dict[str, torch.Tensor]) -> None:
    """Write the full resumable state (rank 0 only; all ranks hold identical copies)."""
    obj = {
        "format": STATE_FORMAT, "G_kwargs": G_kwargs, "D_kwargs": D_kwargs, "config": config,
        "G": _cpu_state(G), "D": _cpu_state(D), "G_ema": _cpu_state(G_ema),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
        "cur_nimg": int(cur_nimg), "cur_tick": int(cur_tick), "batch_idx": int(batch_idx),
        "rng": {k: v.cpu() for k, v in rng_states.items()},
    }
    _refuse_non_finite(obj, path)
    atomic_save(obj, path)


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def safe_load(path: str) -> dict[str, Any]:
    """Load and check a snapshot (weights_only=True); every problem is a one-line UserError.

    Checked: readable, a taxfree3dmm format, its SHA-256 (files written before checksums load unverified), the
    keys of its format and their types, non-negative integer counters, and no NaN/inf in any tensor.
    """
    if not os.path.isfile(path):
        raise UserError(f"snapshot not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"snapshot {path} is empty (0 bytes): the write that made it did not finish")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read snapshot {path} (corrupt, truncated or not a taxfree3dmm file): "
                        f"{first_line(e)}") from None  # fmt: skip
    if not isinstance(data, dict) or data.get("format") not in _REQUIRED:
        raise UserError(f"{path} is not a taxfree3dmm snapshot (expected format {NETWORK_FORMAT} or {STATE_FORMAT})")
    stored = data.get("sha256")
    if stored is not None and stored != content_digest(data):
        raise UserError(f"snapshot {path} fails its SHA-256 check: the file was changed or damaged after it was "
                        "written; use another snapshot")  # fmt: skip
    for key, kind in _REQUIRED[data["format"]].items():
        if key not in data:
            raise UserError(f"snapshot {path} has no '{key}' entry: it is incomplete or from another version")
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise UserError(f"snapshot {path}: '{key}' is a {type(data[key]).__name__}, expected {kind.__name__}")
    for key in _COUNTERS:
        if key in data and data[key] < 0:
            raise UserError(f"snapshot {path}: counter {key} = {data[key]} is negative")
    bad = find_non_finite({k: v for k, v in data.items() if k != "rng"})
    if bad is not None:
        raise UserError(f"snapshot {path}: {bad} holds NaN/inf; the run diverged before this snapshot was written; "
                        "use an earlier one")  # fmt: skip
    return data


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: str) -> None:
    """module.load_state_dict(state) after checking names and shapes; a mismatch is one line naming a tensor.

    A module that renamed its tensors since older files were written says how (`upgrade_state_dict`, e.g. the
    Generator since E moved into its synthesis network); such files load as they did.
    """
    if hasattr(module, "upgrade_state_dict"):
        state = module.upgrade_state_dict(state)
    problems = describe_state_dict_mismatch(module.state_dict(), state)
    if problems:
        raise UserError(f"snapshot {path}: the {what} weights do not fit the network its config builds: {problems}")
    try:
        module.load_state_dict(state)
    except Exception as e:  # dtype or other torch-side refusals
        raise UserError(f"snapshot {path}: cannot load the {what} weights: {first_line(e)}") from None


def load_optimizer_into(opt: torch.optim.Optimizer, state: dict, what: str, path: str) -> None:
    """opt.load_state_dict(state) after checking that each moment has its parameter's shape; one line if not."""
    params = [p for group in opt.param_groups for p in group["params"]]
    try:
        for index, moments in state.get("state", {}).items():
            for name, value in moments.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[index].shape:
                    raise ValueError(f"{name} of parameter {index} is {list(value.shape)}, the parameter is "
                                     f"{list(params[index].shape)}")  # fmt: skip
        opt.load_state_dict(state)
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as e:
        raise UserError(f"snapshot {path}: the {what} optimizer state does not fit: {first_line(e)}") from None


def load_network(path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild G_ema from a network snapshot, a training state or an NVIDIA StyleGAN2 .pkl: eval mode,
    requires_grad off, on `device`."""
    from training.networks import Generator

    if path.lower().endswith(".pkl"):  # NVIDIA pickle: read as data by a restricted unpickler, never executed
        from training.interop.nvidia_pickle import read_nvidia_generator

        data = dict(zip(("G_kwargs", "G_ema"), read_nvidia_generator(path)))
    else:
        data = safe_load(path)
    try:
        G = Generator(**data["G_kwargs"])
    except Exception as e:  # wrong or unknown constructor arguments
        raise UserError(f"snapshot {path}: its G_kwargs do not build a Generator: {first_line(e)}") from None
    load_state_into(G, data["G_ema"], "G_ema", path)
    G.eval().requires_grad_(False)
    G.snapshot_config = data.get("config", {})  # how it was trained: face model, FR, dataset
    return G.to(device)
