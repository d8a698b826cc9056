"""What every generate.py subcommand shares: its common options, the loaded session (G, sampler, p bank,
renderer) and the helpers that write grids and build FR. generate.py holds only the subcommands."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import click
import torch

from generation import controlled as cg
from torch_utils.checks import FiniteFloat
from torch_utils.errors import UserError
from torch_utils.outputs import refuse_existing

# Every cell of a grid is held in memory (float32 image, render, composed grid): 2**28 px is ~10 GB at the peak.
MAX_GRID_PIXELS = 2**28


@dataclasses.dataclass
class Options:
    """Options shared by every subcommand (see `common_options`)."""

    network: str
    outdir: str
    trunc: float
    noise_mode: str
    batch: int
    device: str
    data: str | None
    p_bank: str | None
    bfm: str | None
    render_backend: str | None
    show_rep: bool
    save_images: bool
    verbose: bool
    overwrite: bool


@dataclasses.dataclass
class Session:
    """What a subcommand works with: G_ema, the cell sampler, the p bank [M, 257] (None if unconditional)."""

    G: torch.nn.Module
    sampler: cg.Sampler
    bank: torch.Tensor | None
    config: dict
    device: torch.device
    opts: Options


class SeedList(click.ParamType):
    """Click type for '0-31,40'-style seed lists, checked before any network is loaded."""

    name = "SEEDS"

    def convert(self, value, param, ctx) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return cg.parse_seeds(str(value))
        except UserError as e:
            self.fail(str(e), param, ctx)


def common_options(fn: Callable | None = None, *, optional_outdir: str | None = None) -> Callable:
    """Adds the shared options to a subcommand and hands them over as one `opts: Options`.

    `@common_options(optional_outdir="help")`: --outdir may be left out (None; the subcommand picks a default).
    """
    if fn is None:
        return functools.partial(common_options, optional_outdir=optional_outdir)
    options = [
        click.option(
            "--network", required=True, help="network-snapshot-*.pt, training-state-*.pt or an NVIDIA StyleGAN2 .pkl"
        ),
        click.option("--outdir", required=optional_outdir is None, type=click.Path(file_okay=False),
                     help=optional_outdir or "Where the PNGs go"),  # fmt: skip
        click.option("--trunc", "--truncation-psi", "trunc", default=1.0, show_default=True, type=FiniteFloat(-2, 2),
                     help="Truncation psi, in [-2, 2]"),  # fmt: skip
        click.option(
            "--noise-mode", default="const", show_default=True, type=click.Choice(["const", "random", "none"])
        ),
        click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1), help="Images per pass"),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--data", help="Dataset whose labels form the p bank [default: the snapshot's]"),
        click.option("--p-bank", help="p bank as a .npy array [M, 257] (instead of --data)"),
        click.option("--bfm", help="BFM_model_front.mat for rep(p) [default: the snapshot's]"),
        click.option(
            "--render-backend",
            type=click.Choice(["auto", "torch", "nvdiffrast"]),
            help="Rasterizer [default: the snapshot's]",
        ),
        click.option("--show-rep", is_flag=True, help="Put the rep(p) render beside every sample"),
        click.option("--save-images", is_flag=True, help="Also write every generated cell as its own PNG"),
        click.option("--verbose/--quiet", default=True, show_default=True, help="Print progress"),
        click.option("--overwrite", is_flag=True, help="Replace output files that exist (default: refuse them)"),
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        names = {f.name for f in dataclasses.fields(Options)}
        opts = Options(**{k: v for k, v in kwargs.items() if k in names})
        return fn(opts, **{k: v for k, v in kwargs.items() if k not in names})

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def echo(opts: Options, message: str) -> None:
    """Print a progress or status line unless --quiet."""
    if opts.verbose:
        click.echo(message)


def open_session(opts: Options, mode: str, needs_p: bool) -> Session:
    """Load G_ema, then (for a conditional G) the p bank and the renderer; every problem is one UserError line."""
    from training.resolve import build_renderer, pick_device, resolve_assets
    from training.run.snapshot import load_network

    if opts.data is not None and opts.p_bank is not None:
        raise UserError("pass either --data or --p-bank, not both")
    device = pick_device(opts.device)
    G = load_network(opts.network, device)
    config = getattr(G, "snapshot_config", {}) or {}
    if needs_p and not G.needs:
        raise UserError(f"'{mode}' edits the 3DMM coefficients p, but {opts.network} is unconditional (uncond); "
                        "use 'images' or 'style-mix'")  # fmt: skip
    if opts.show_rep and not G.needs:
        raise UserError("--show-rep needs a 3DMM-conditional snapshot; this one is unconditional (uncond)")
    renderer = bank = None
    bank_source = bfm = "-"
    if G.needs:
        resolved = resolve_assets(config, data=opts.data, bfm=opts.bfm, need_data=opts.p_bank is None,
                                  progress=opts.verbose, log=lambda msg: echo(opts, msg))  # fmt: skip
        bank_source, bfm = opts.p_bank or resolved.data, resolved.bfm
        bank = cg.load_p_bank(bank_source)
        backend = opts.render_backend or "auto"  # both backends render the same contract; pick what runs here
        renderer = build_renderer(bfm, backend, device)
    sampler = cg.Sampler(G, renderer, device, truncation_psi=opts.trunc, noise_mode=opts.noise_mode,
                         batch=opts.batch, progress=opts.verbose)  # fmt: skip
    kind = f"3DMM-conditional ({G.cond_kind})" if G.needs else "unconditional"
    bank_info = f"p bank {len(bank)} x 257 from {bank_source}; face model {bfm}; " if bank is not None else ""
    echo(opts, f"{opts.network}: {G.img_resolution}px {kind}, {G.num_ws} ws; {bank_info}device {device}, "
               f"psi {opts.trunc}, noise {opts.noise_mode}")  # fmt: skip
    return Session(G, sampler, bank, config, device, opts)


def refuse_existing_outputs(opts: Options, *names: str) -> None:
    """Before any work: one line if an output file (`names` in --outdir) exists and --overwrite was not given."""
    refuse_existing([os.path.join(opts.outdir, name) for name in names], opts.overwrite)


def check_grid(s: Session, cells: int) -> None:
    """One line when a grid of `cells` images of G's resolution would not fit in memory (all cells are held)."""
    pixels = cells * s.G.img_resolution**2 * (2 if s.opts.show_rep else 1)
    if pixels > MAX_GRID_PIXELS:
        raise UserError(f"the grid would hold {cells} images of {s.G.img_resolution}x{s.G.img_resolution} px "
                        f"({pixels / 1e6:.0f} Mpx, about {pixels * 36 / 2**30:.0f} GiB while it is built), more than "
                        f"the {MAX_GRID_PIXELS / 1e6:.0f} Mpx one grid may hold; use fewer seeds")  # fmt: skip


def write(session: Session, result: cg.GridResult, stem: str) -> None:
    """Save one grid (and its p / per-cell files; existing files refused unless --overwrite) and report it."""
    opts = session.opts
    paths = cg.save_grid(result, opts.outdir, stem, show_rep=opts.show_rep, save_images=opts.save_images,
                         overwrite=opts.overwrite)  # fmt: skip
    extra = f" (+{len(paths) - 1} files)" if len(paths) > 1 else ""
    echo(opts, f"wrote {paths[0]}{extra}")


def open_fr(s: Session, recon_ckpt: str | None) -> torch.nn.Module:
    """The snapshot's FR (or --recon-ckpt; the built-in synthetic FR for smoke snapshots) on the session device."""
    from training.resolve import build_reconstructor, resolve_assets

    ckpt = resolve_assets(s.config, recon_ckpt=recon_ckpt, need_data=False, need_face=False, need_fr=True,
                          progress=s.opts.verbose, log=lambda msg: echo(s.opts, msg)).recon_ckpt  # fmt: skip
    return build_reconstructor(ckpt, s.device, s.config.get("recon_backbone"))
