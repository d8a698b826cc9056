"""Compute quality / disentanglement metrics (FID, KID, DS, consistency) of a network snapshot.

Example:
    python calc_metrics.py --network runs/00000-paper256/network-snapshot-025000.pt \\
        --metrics fid50k_full,ds10k --data ffhq256.zip --bfm BFM_model_front.mat --recon-ckpt epoch_20.pth --gpus 2

Dataset, face model and FR default to those the snapshot was trained with. Results are printed as JSON lines and,
if the snapshot's folder is a run directory (has training_options.json), appended to metric-<name>.jsonl there.
`python calc_metrics.py --check-assets` reports the face assets and the Inception weights without computing anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import click
import torch

from metrics import context as metric_context
from metrics.context import MetricContext
from metrics.features import RandomFeatureExtractor, inception_factory, resolve_inception_weights
from metrics.progress import ProgressPrinter
from metrics.registry import (
    calc_metric,
    check_metric_names,
    check_metrics_apply,
    get_metric,
    plan_evaluation,
    report_metric,
)
from torch_utils.errors import Command, UserError
from torch_utils.misc import pick_device


@dataclasses.dataclass
class MetricsOptions:
    """Resolved options of one calc_metrics run (plain data: passed to every spawned rank)."""

    network: str
    metrics: list[str]
    data: str | None
    gpus: int
    bfm: str | None
    recon_ckpt: str | None
    render_backend: str
    batch: int
    inception: str | None
    random_features: bool
    cache_dir: str | None
    workers: int
    seed: int
    run_dir: str | None
    verbose: bool


def resolve_options(opts: MetricsOptions) -> MetricsOptions:
    """Fills data / face-asset / Inception paths (CLI flag > the snapshot's config > smoke defaults) and validates
    them once, in the parent process, before any rank starts (so downloads and cached builds happen once)."""
    from training.dataset import ImageLabelDataset
    from training.resolve import resolve_assets
    from training.run.snapshot import load_network

    G = load_network(opts.network, device="cpu")
    config = getattr(G, "snapshot_config", {}) or {}
    specs = [get_metric(name) for name in opts.metrics]
    check_metrics_apply(opts.metrics, bool(G.needs), f"the network {opts.network}")
    needs_fr = any(spec.needs_reconstructor for spec in specs)
    resolved = resolve_assets(config, data=opts.data, bfm=opts.bfm, recon_ckpt=opts.recon_ckpt,
                              need_face=bool(G.needs), need_fr=needs_fr, progress=opts.verbose,
                              log=print if opts.verbose else None)  # fmt: skip
    opts.data, opts.bfm, opts.recon_ckpt = resolved.data, resolved.bfm, resolved.recon_ckpt
    dataset = ImageLabelDataset(opts.data, require_labels=bool(G.needs), progress=opts.verbose)
    if dataset.resolution != G.img_resolution:
        raise UserError(f"dataset is {dataset.resolution}px but the network generates {G.img_resolution}px")
    if any(spec.needs_inception for spec in specs) and not opts.random_features:
        opts.inception = resolve_inception_weights(opts.inception)
    return opts


def build_context(opts: MetricsOptions, rank: int, device: torch.device) -> MetricContext:
    """Loads G_ema, the dataset and (when resolved) the renderer for rep(p) and FR; returns the MetricContext."""
    from training.dataset import ImageLabelDataset
    from training.run.snapshot import load_network

    G = load_network(opts.network, device=device)
    dataset = ImageLabelDataset(opts.data, require_labels=bool(G.needs), check_images=False)  # checked above
    renderer = reconstructor = None
    if opts.bfm is not None:
        from training.resolve import build_reconstructor, build_renderer

        renderer = build_renderer(opts.bfm, opts.render_backend, device)
        if opts.recon_ckpt is not None:
            backbone = (getattr(G, "snapshot_config", {}) or {}).get("recon_backbone")
            reconstructor = build_reconstructor(opts.recon_ckpt, device, backbone)
    if opts.random_features:
        factory = lambda dev: RandomFeatureExtractor(feature_dim=64, device=dev)
    else:
        factory = inception_factory(opts.inception, download=False)
    return metric_context.build_context(
        G, dataset, device=device, renderer=renderer, reconstructor=reconstructor, rank=rank, num_gpus=opts.gpus,
        batch_size=opts.batch, cache_dir=opts.cache_dir, feature_extractor_factory=factory, num_workers=opts.workers,
        seed=opts.seed,
    )  # fmt: skip


def run_rank(rank: int, opts: MetricsOptions, init_file: str | None) -> None:
    """One process: set up torch.distributed (if several GPUs), build the context, compute and report metrics."""
    device = pick_device("auto", local_rank=rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # metric features in full fp32, as the reference
        torch.backends.cudnn.allow_tf32 = False
    if opts.gpus > 1:
        backend = "nccl" if use_cuda else "gloo"
        torch.distributed.init_process_group(
            backend, init_method=f"file://{init_file}", rank=rank, world_size=opts.gpus
        )
    ctx = build_context(opts, rank, device)
    if opts.verbose:
        ctx.log = lambda line: print(line, flush=True)  # rank 0 only (MetricContext.say)
    plan_evaluation(opts.metrics, ctx)  # FID + KID together: one real pass, one generation pass
    snapshot = os.path.basename(opts.network)
    for name in opts.metrics:
        show = opts.verbose and rank == 0  # images/s and ETA per pass (real features, generation)
        ctx.progress = ProgressPrinter(name, lambda line: print(line, flush=True)) if show else None
        result = calc_metric(name, ctx)  # collective: every rank runs it
        if rank == 0:
            print(report_metric(result, opts.run_dir, snapshot), flush=True)
    if opts.gpus > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@click.command(cls=Command)
@click.option(
    "--network", "network", type=click.Path(exists=True, dir_okay=False),
    help="Snapshot .pt or NVIDIA StyleGAN2 .pkl (required)",
)
@click.option("--metrics", default="fid50k_full", show_default=True, help="Comma-separated metric names")
@click.option("--data", type=click.Path(exists=True), help="Dataset zip/folder [default: the snapshot's]")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(min=1), help="Number of processes/GPUs")
@click.option(
    "--bfm", type=click.Path(exists=True, dir_okay=False), help="BFM_model_front.mat [default: the snapshot's]"
)
@click.option(
    "--recon-ckpt", type=click.Path(exists=True, dir_okay=False), help="FR checkpoint [default: the snapshot's]"
)
@click.option("--render-backend", default="auto", show_default=True, type=click.Choice(["auto", "torch", "nvdiffrast"]))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1), help="Images per batch per GPU")
@click.option("--inception", type=click.Path(exists=True, dir_okay=False), help="Local Inception weights (.pth)")
@click.option("--random-features", is_flag=True, help="Smoke only: random feature net instead of Inception")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Real-statistics cache [default: ~/.cache/...]")
@click.option("--workers", default=3, show_default=True, type=click.IntRange(min=0), help="Data-loader workers")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of latents/labels/subsets")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where metric-<name>.jsonl goes [default: see doc]")
@click.option("--verbose/--quiet", default=True, show_default=True, help="Print options and progress")
@click.option("--check-assets", is_flag=True, help="Report face assets and Inception weights, then exit")
def main(check_assets: bool, **kwargs: object) -> None:
    """Compute metrics of a network snapshot and print/append them as JSON lines."""
    if check_assets:
        from metrics.assets import print_asset_report

        print_asset_report(kwargs["bfm"], kwargs["recon_ckpt"], kwargs["inception"])  # type: ignore[arg-type]
        return
    if kwargs["network"] is None:
        raise click.UsageError("Missing option '--network'.")
    kwargs["metrics"] = [m.strip() for m in str(kwargs["metrics"]).split(",") if m.strip()]
    opts = MetricsOptions(**kwargs)  # type: ignore[arg-type]
    check_metric_names(opts.metrics)
    if not opts.metrics:
        raise UserError("no metrics given (--metrics)")
    if opts.gpus > 1 and torch.cuda.is_available() and torch.cuda.device_count() < opts.gpus:
        raise UserError(f"--gpus {opts.gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
    if opts.run_dir is None:  # like stylegan2-ada: log next to the snapshot only inside a run directory
        folder = os.path.dirname(os.path.abspath(opts.network))
        opts.run_dir = folder if os.path.isfile(os.path.join(folder, "training_options.json")) else None
    opts = resolve_options(opts)
    if opts.verbose:
        print(json.dumps(dataclasses.asdict(opts), indent=2))
    if opts.gpus == 1:
        run_rank(0, opts, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            torch.multiprocessing.spawn(run_rank, args=(opts, os.path.join(tmp, "init")), nprocs=opts.gpus)


if __name__ == "__main__":
    main()
