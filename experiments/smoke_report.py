"""The end of a run on the built-in world: evidence that G follows every attribute group of p.

After training, `write_run_report` (called by train.py on the main process) writes into the run directory
  metric-cons1k.jsonl        cons1k (metrics/consistency.py: per-group MSE between p and FR(G(rep(p), z))) of the
                             first and the last network snapshot (lines already there, e.g. from --metrics, are reused)
  vary-<attr>.png            for attr in id, exp, illum, angle, from the last snapshot: row pair r = one base face (p
                             and z of seed r), column 0 = the base, columns 1-7 = the base with only that attribute
                             group taken from another face of the dataset (generation.controlled.vary_grid, fig. 3); the
                             same 7 donors in every row, sorted by the group's first varied coefficient (face width,
                             mouth open, the light's first varied SH coefficient (band 1), yaw: `sweep_indices`), so
                             each row sweeps from one end of the dataset's range to the other; above each row of G's
                             images, the shaded render r(p) of the same cells: what G is asked to follow
and prints per group the consistency at the start vs the end and the paths of the grids to look at, next to two
reference levels that say how far "end" is from guessing and from the best G could reach:
  guess   the same MSE for a constant guess, the bank's mean p (per-coefficient variance of the labels); the first
          snapshot's G makes noise on which FR's estimates are off by more than that, so "start" is above it
  reals   FR on the dataset's own images vs their labels: FR's own error, the floor for a G that copies the world
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch

from deep3drecon.coeffs import COEFF_SLICES
from generation.controlled import Sampler, vary_grid
from metrics.consistency import CONSISTENCY_GROUPS, group_squared_errors
from metrics.context import build_context
from metrics.registry import calc_metric, recorded_metrics, report_metric
from training.condition import ConditionBank
from training.config import TrainConfig
from training.dataset import ImageLabelDataset
from training.resolve import build_reconstructor, build_renderer, resolve_assets
from training.run.grids import save_image_grid
from training.run.snapshot import load_network, snapshot_nimg

VARY_ATTRS: tuple[str, ...] = ("id", "exp", "illum", "angle")
VARY_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # rows of each vary grid
VARY_DONORS = 7  # columns after the base
CONS_METRIC = "cons1k"
CONS_GROUPS: tuple[str, ...] = CONSISTENCY_GROUPS


def applies(config: TrainConfig) -> bool:
    """True for conditional runs on the built-in synthetic world (the README's main job)."""
    return bool(config.design_spec.conditional and config.data is None and config.builtin_data is not None)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or the launching process otherwise (process groups are gone after training)."""
    return int(os.environ.get("RANK", "0")) == 0


def network_snapshots(run_dir: str) -> list[str]:
    """network-snapshot-*.pt in run_dir, oldest (fewest images) first."""
    return sorted(glob.glob(os.path.join(run_dir, "network-snapshot-*.pt")), key=snapshot_nimg)


def _recorded(run_dir: str, snapshot_name: str) -> dict | None:
    """The cons1k results of snapshot_name in metric-cons1k.jsonl (the last line written after the snapshot file)."""
    return recorded_metrics(run_dir, CONS_METRIC).get(snapshot_name)


def write_run_report(config: TrainConfig, run_dir: str, device: torch.device, progress: bool = True) -> dict:
    """cons1k of the first and last snapshot, vary grids of the last, a printed summary -> {"cons", "grids"}.

    cons: {snapshot file name: {cons_<group>: float}}; grids: {attr: png path}.
    """
    snapshots = network_snapshots(run_dir)
    if not snapshots:
        return {"cons": {}, "grids": {}}
    resolved = resolve_assets(config.to_dict(), need_fr=True, progress=progress)
    data, bfm, recon = resolved.data, resolved.bfm, resolved.recon_ckpt
    dataset = ImageLabelDataset(data)
    renderer = build_renderer(bfm, config.render_backend, device)
    reconstructor = build_reconstructor(recon, device, config.recon_backbone)
    batch = max(config.batch_gpu or config.batch // max(config.gpus, 1), 32)
    log = print if progress else (lambda *args, **kwargs: None)

    reference = {"guess": guess_levels(dataset.labels),
                 "reals": real_image_levels(dataset, reconstructor, device, batch)}
    cons: dict[str, dict[str, float]] = {}
    cond_bank = None  # rendered on first use: a run whose cons1k lines are all recorded needs none
    for path in dict.fromkeys([snapshots[0], snapshots[-1]]):
        name = os.path.basename(path)
        results = _recorded(run_dir, name)
        if results is None:
            log(f"Consistency ({CONS_METRIC}) of {name} ...", flush=True)
            G = load_network(path, device=device)
            if cond_bank is None:  # both snapshots see the same p: render the bank's rows once (within rep_cache_mb)
                cond_bank = ConditionBank(dataset.labels, renderer, dataset.resolution, device, config.rep_cache_mb)
            ctx = build_context(G, dataset, device=device, bank=cond_bank, reconstructor=reconstructor,
                                batch_size=batch, num_workers=0, seed=config.seed)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                result = calc_metric(CONS_METRIC, ctx)
            report_metric(result, run_dir=run_dir, snapshot_name=name)
            results = result["results"]
        cons[name] = results

    G = load_network(snapshots[-1], device=device)
    sampler = Sampler(G, renderer, device, noise_mode="const", batch=batch, progress=False)
    bank = torch.as_tensor(dataset.labels)
    grids = {}
    for attr in VARY_ATTRS:
        rows = []
        for seed in VARY_SEEDS:  # row pairs: the condition's shaded render r(p) above, G's image below
            cells = vary_grid(sampler, seed, bank, attr, VARY_DONORS, sweep=True).cells
            rows += [cells.renders, cells.images]
        grids[attr] = os.path.join(run_dir, f"vary-{attr}.png")
        save_image_grid(torch.cat(rows), grids[attr], VARY_DONORS + 1)
    dataset.close()
    log(format_summary(cons, grids, run_dir, reference), flush=True)
    return {"cons": cons, "grids": grids, "reference": reference}


def guess_levels(labels) -> dict[str, float]:
    """cons_<group> of always answering the bank's mean p: the per-coefficient variance of labels [M, 257], averaged
    over the group's dimensions (the metric's per-element normalisation)."""
    var = np.asarray(labels, np.float64).var(axis=0)
    return {f"cons_{g}": float(var[COEFF_SLICES[g]].mean()) for g in CONS_GROUPS}


@torch.no_grad()
def real_image_levels(dataset, reconstructor: torch.nn.Module, device: torch.device, batch: int) -> dict[str, float]:
    """cons_<group> of FR on the dataset's own images (uint8 -> [-1, 1], as G's output) vs their labels."""
    sums, n = np.zeros(len(CONS_GROUPS)), len(dataset)
    for start in range(0, n, batch):
        items = [dataset[i] for i in range(start, min(start + batch, n))]
        images = torch.as_tensor(np.stack([im for im, _ in items]), device=device).float() / 127.5 - 1
        p_hat = reconstructor(images).float().cpu().numpy()
        sums += group_squared_errors(p_hat, np.stack([label for _, label in items]), CONS_GROUPS)
    return {f"cons_{g}": float(sums[k] / (n * (COEFF_SLICES[g].stop - COEFF_SLICES[g].start)))
            for k, g in enumerate(CONS_GROUPS)}  # fmt: skip


def format_summary(cons: dict[str, dict[str, float]], grids: dict[str, str], run_dir: str,
                   reference: dict[str, dict[str, float]] | None = None) -> str:  # fmt: skip
    """The printed end-of-run summary: consistency per group first vs last snapshot (and the reference levels of
    the module docstring, when given), then the grid paths."""
    names = list(cons)
    first, last = cons[names[0]], cons[names[-1]]
    reference = reference or {}
    lines = [f"Consistency per group ({CONS_METRIC}: mean squared error of FR(G(p, z)) vs p, lower = G follows p):",
             f"  {'group':<6} {'start':>10} {'end':>10} {'change':>8}" + "".join(f" {k:>10}" for k in reference)
             + f"    start = {names[0]}, end = {names[-1]}"]  # fmt: skip
    for group in CONS_GROUPS:
        a, b = first[f"cons_{group}"], last[f"cons_{group}"]
        change = f"{100 * (b - a) / a:+7.0f}%" if a > 0 else "       -"
        levels = "".join(f" {level[f'cons_{group}']:10.4f}" for level in reference.values())
        lines.append(f"  {group:<6} {a:10.4f} {b:10.4f} {change}{levels}")
    if reference:
        lines.append("  (guess: always answering the mean p; reals: FR on the dataset's images, the floor)")
    fakes = sorted(glob.glob(os.path.join(run_dir, "fakes[0-9]*.png")))
    lines.append("Grids to look at:")
    if fakes:
        lines.append(f"  {fakes[-1]}  (fakes: each row one p, each column one z)")
    for attr, path in grids.items():
        lines.append(f"  {path}  (row pairs: r(p) above G; column 0 the face, then only '{attr}' changed, low to high)")
    return "\n".join(lines)
