"""`train.py --init-from PATH`: start a NEW run's G, D and G_ema from pretrained weights (not a resume).

PATH is an NVIDIA StyleGAN2 .pkl (read by training/nvidia_pickle.py, never executed), a network snapshot or a
training state of this project. Every tensor of the freshly built networks whose name and shape match a source
tensor is copied; the rest keep their fresh initialisation (the render encoder, a mapping of another z_dim, ...).
One case is copied in part: a synthesis conv of a 3DMM-conditional G whose weight only lacks the injected-feature
input columns (eq. 7: [C_out, C_in + F, k, k] vs the source's [C_out, C_in, k, k]) takes the source's C_in columns
and zeros for the F injected ones, so at step 0 the conditional G draws exactly the source's image for any rep.
Counters, optimizer state and the blending schedule (eq. 6) start from zero: that is what makes it a new run.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import torch

from torch_utils.errors import UserError
from training.networks import SynthesisLayer
from training.run import snapshot

NETWORKS = ("G", "D", "G_ema")


@dataclasses.dataclass
class InitSource:
    """Source weights: per network a state dict (None if the file has none) and where it came from."""

    path: str
    kind: str
    states: dict[str, dict[str, torch.Tensor] | None]
    origin: dict[str, str]  # network -> the source entry it was read from (G may come from G_ema and vice versa)


def read_init_source(path: str) -> InitSource:
    """Read G / D / G_ema weights from a .pkl, a network snapshot or a training state; UserError if it has no G."""
    if path.lower().endswith(".pkl"):
        from training.interop.nvidia_pickle import read_nvidia_networks

        nets = read_nvidia_networks(path)
        kind = "NVIDIA StyleGAN2 pickle" + (f"; its D is not used: {nets.D_refused}" if nets.D_refused else "")
        states = {k: None if getattr(nets, k) is None else getattr(nets, k).state for k in NETWORKS}
    else:
        data = snapshot.safe_load(path)
        kind = "training state" if data["format"] == snapshot.STATE_FORMAT else "network snapshot"
        states = {k: data.get(k) for k in NETWORKS}  # converted NVIDIA snapshots also carry G and D
    origin = {k: k for k in NETWORKS if states[k] is not None}
    for missing, fallback in (("G", "G_ema"), ("G_ema", "G")):
        if states[missing] is None and states[fallback] is not None:
            states[missing], origin[missing] = states[fallback], fallback
    if states["G"] is None:
        raise UserError(f"--init-from {path}: the file holds no generator weights")
    return InitSource(path, kind, states, origin)


@dataclasses.dataclass
class TensorRow:
    """One tensor of a fresh network: copied | partial | skipped (shape differs) | new; or unused (source only)."""

    network: str
    name: str
    status: str
    shape: tuple
    source_shape: tuple | None


def _injected_columns(module: torch.nn.Module, name: str, target: torch.Tensor, source: torch.Tensor) -> int:
    """F if `name` is a synthesis conv weight that differs from `source` only by F injected-feature columns."""
    layer_name, _, leaf = name.rpartition(".")
    if leaf != "weight" or target.ndim != 4 or source.ndim != 4:
        return 0
    layer = module.get_submodule(layer_name)
    extra = target.shape[1] - source.shape[1]
    if not isinstance(layer, SynthesisLayer) or extra != layer.feat_channels or extra <= 0:
        return 0
    return extra if (target.shape[0], *target.shape[2:]) == (source.shape[0], *source.shape[2:]) else 0


@torch.no_grad()
def copy_matching(module: torch.nn.Module, source: dict[str, torch.Tensor] | None, network: str) -> list[TensorRow]:
    """Copy into `module` (in place, parameters keep their identity) every source tensor matching name and shape."""
    source = source or {}
    if hasattr(module, "upgrade_state_dict"):  # a snapshot written before E moved into the synthesis network
        source = module.upgrade_state_dict(source)
    rows = []
    for name, tensor in module.state_dict().items():  # detached views sharing storage with the module
        src = source.get(name)
        if src is None:
            rows.append(TensorRow(network, name, "new", tuple(tensor.shape), None))
        elif src.shape == tensor.shape:
            tensor.copy_(src)
            rows.append(TensorRow(network, name, "copied", tuple(tensor.shape), tuple(src.shape)))
        elif _injected_columns(module, name, tensor, src):
            tensor[:, : src.shape[1]].copy_(src)
            tensor[:, src.shape[1] :].zero_()  # eq. 7 seam off at step 0: the unconditional image for any rep
            rows.append(TensorRow(network, name, "partial", tuple(tensor.shape), tuple(src.shape)))
        else:
            rows.append(TensorRow(network, name, "skipped", tuple(tensor.shape), tuple(src.shape)))
    targets = module.state_dict()
    rows += [TensorRow(network, name, "unused", (), tuple(src.shape)) for name, src in source.items()
             if name not in targets]  # fmt: skip
    return rows


def _grouped(names: list[str], universe: list[str]) -> list[str]:
    """Names collapsed to 'prefix.* (n)' where every tensor under the prefix is in `names`."""
    chosen, universe_set = set(names), set(universe)
    if chosen >= universe_set:
        return [f"all ({len(names)})"]
    counts: collections.Counter = collections.Counter()
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k]) + "."
            if all(m in chosen for m in universe_set if m.startswith(prefix)):
                counts[prefix + "*"] += 1
                break
        else:
            counts[name] += 1
    return [key if n == 1 and not key.endswith("*") else f"{key} ({n})" for key, n in counts.items()]


def format_report(source: InitSource, rows: list[TensorRow]) -> str:
    """The copied / partial / skipped / new / unused table, then the names of everything not copied in full."""
    statuses = ("copied", "partial", "skipped", "new", "unused")
    present = [f"{k}<-{v}" if k != v else k for k, v in source.origin.items()]
    lines = [f"Initialising from {source.path} ({source.kind}: {', '.join(present)}); counters and optimizer "
             "state start at zero.",
             f"{'network':<8}" + "".join(f"{s:>9}" for s in statuses) + "   (tensors)"]  # fmt: skip
    for network in NETWORKS:
        counts = collections.Counter(r.status for r in rows if r.network == network)
        lines.append(f"{network:<8}" + "".join(f"{counts[s]:>9}" for s in statuses))
    for r in (r for r in rows if r.status == "skipped"):
        lines.append(f"  skipped: {r.network}.{r.name} {list(r.shape)} <- source {list(r.source_shape)} (shape "
                     "differs; fresh initialisation kept)")
    for network in NETWORKS:
        all_rows = [r for r in rows if r.network == network]
        partial = [r.name for r in all_rows if r.status == "partial"]
        if partial:
            lines.append(f"  partial in {network} (source columns copied, injected-feature columns set to 0): "
                         f"{', '.join(partial)}")
        targets = [r.name for r in all_rows if r.status != "unused"]
        new = [r.name for r in all_rows if r.status == "new"]
        unused = [r.name for r in all_rows if r.status == "unused"]
        if new:
            reason = "the source has none" if source.states[network] is None else "not in the source"
            lines.append(f"  new in {network} ({reason}; fresh initialisation): {', '.join(_grouped(new, targets))}")
        if unused:
            sources = [r.name for r in all_rows if r.status != "new"]
            lines.append(f"  unused from the source's {network}: {', '.join(_grouped(unused, sources))}")
    return "\n".join(lines)


def init_networks(path: str, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
                  log: Callable[[str], None] | None = print) -> list[TensorRow]:
    """Copy matching tensors of `path` into fresh G, D, G_ema (in place); print the table; return its rows."""
    source = read_init_source(path)
    rows = []
    for network, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        rows += copy_matching(module, source.states[network], network)
    weights = {name for name, p in G.named_parameters() if p.ndim >= 2}  # filters and noise maps match too easily
    if not any(r.status in ("copied", "partial") and r.name in weights for r in rows if r.network == "G"):
        raise UserError(f"--init-from {path}: no weight of the generator matches this run's G (name and shape); "
                        "is it a network of another size or kind?")
    if log is not None:
        log(format_report(source, rows))
    return rows
