"""Controlled generation with a network snapshot: the paper's figure modes as PNG grids.

Examples:
    python generate.py images     --network snap.pt --outdir out --seeds 0-31 --show-rep
    python generate.py vary       --network snap.pt --outdir out --seeds 0,5 --attr exp --attr angle   # fig. 3
    python generate.py resample-z --network snap.pt --outdir out --seeds 0-3 --z-seeds 100-106         # fig. 4
    python generate.py reference  --network snap.pt --outdir out --images photos/ --landmarks          # fig. 6
    python generate.py style-mix  --network snap.pt --outdir out --row-seeds 0-2 --p-seed 7           # fig. 7
    python generate.py studio     --network snap.pt --port 7860          # sliders in a browser; saves in studio/
    python generate.py resample-p --network snap.pt --outdir out --seeds 0-3 --p-seeds 100-106         # fig. 8
    python generate.py invert     --network snap.pt --outdir inv --images photos/                     # real photos
    python generate.py edit       --network snap.pt --outdir inv --latent inv/me-latent.npz --attr angle
    python generate.py feature-derivatives --network snap.pt --outdir out --seeds 0                   # fig. 2

p comes from a bank: the labels of the snapshot's training dataset (or --data), or a .npy [M, 257] (--p-bank);
seed s always picks the same bank row and the same z, whatever the batch size. Face model / FR / renderer default
to the snapshot's. Output names: grid-seeds0-31.png, vary-exp-seed0000.png, resample-z-seeds0-3-z100-106.png,
resample-p-seeds0-3-p100-106.png, reference-seeds0-3.png, style-mix-coarse-rows0-2-cols0-2.png, fig2-seed0000.png;
each grid of a conditional snapshot also gets <name>-p.npy (the p of every cell, [rows, cols, 257]) and, with
--save-images, a folder <name>/ holding every generated cell as its own PNG.
"""

from __future__ import annotations

import os

import click
import torch

from generation import animation
from generation import controlled as cg
from generation.session import (
    Options,
    SeedList,
    check_grid,
    common_options,
    echo,
    open_fr,
    open_session,
    refuse_existing_outputs,
    write,
)
from torch_utils.checks import FiniteFloat
from torch_utils.errors import Group, UserError
from torch_utils.outputs import refuse_existing, save_image
from training.dataset_checks import check_coeffs


@click.group(cls=Group)
def cli() -> None:
    """Generate images and controlled-generation figures (paper figs. 2, 3, 4, 6, 7, 8) from a snapshot."""


@cli.command(short_help="Plain samples, one per seed, as a grid.")
@common_options
@click.option("--seeds", type=SeedList(), default="0-7", show_default=True, help="One sample per seed")
@click.option("--cols", default=8, show_default=True, type=click.IntRange(min=1), help="Grid width")
def images(opts: Options, seeds: list[int], cols: int) -> None:
    """Plain samples: z and p from each seed, tiled into one grid."""
    stem = f"grid-seeds{cg.format_seeds(seeds)}"
    refuse_existing_outputs(opts, f"{stem}.png")
    s = open_session(opts, "images", needs_p=False)
    check_grid(s, len(seeds))
    write(s, cg.images_grid(s.sampler, seeds, s.bank, cols), stem)


@cli.command(short_help="Fig. 3: one attribute group resampled per column.")
@common_options
@click.option("--seeds", type=SeedList(), default="0", show_default=True, help="Base faces (one grid each)")
@click.option("--attr", multiple=True, type=click.Choice(list(cg.ATTR_GROUPS)), default=list(cg.ATTR_GROUPS),
              show_default=True, help="Attribute group resampled across columns (repeatable)")  # fmt: skip
@click.option("--cols", default=7, show_default=True, type=click.IntRange(min=1), help="Variations per grid")
@click.option("--sweep", is_flag=True,
              help="Donors: evenly spaced quantiles (2%..98%) of the group's first varied coefficient, ascending")
@click.option("--video", type=click.Choice(animation.VIDEO_FORMATS), is_flag=False, flag_value="gif",
              help="Instead of grids, one animation per --attr: p interpolated from donor to donor, a row per seed "
                   "(G's image | r(p)); --video = gif, --video mp4 needs the video extra")  # fmt: skip
@click.option("--tween", default=7, show_default=True, type=click.IntRange(min=0),
              help="--video: frames between two donors")
@click.option("--fps", default=12.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="--video: frames per second (donors are held 4 frames)")  # fmt: skip
def vary(opts: Options, seeds: list[int], attr: tuple[str, ...], cols: int, sweep: bool, video: str | None,
         tween: int, fps: float) -> None:  # fmt: skip
    """A base face, then one attribute group (id+tex | exp | SH light | angles) from bank donors (fig. 3)."""
    if video is not None:  # one animation per group: vary-<attr>-seeds<S>.<gif|mp4> and its p per frame
        stems = animation.video_stems(opts.outdir, seeds, attr, video, opts.overwrite)  # checked before any work
        s = open_session(opts, "vary", needs_p=True)
        log = lambda message: echo(opts, message)
        animation.save_vary_videos(s.sampler, s.bank, stems, seeds, cols, sweep, video, tween, fps, log,
                                   opts.overwrite)
        return
    refuse_existing_outputs(opts, *(f"vary-{name}-seed{seed:04d}.png" for seed in seeds for name in attr))
    s = open_session(opts, "vary", needs_p=True)
    check_grid(s, cols + 1)
    for seed in seeds:
        for name in attr:
            write(s, cg.vary_grid(s.sampler, seed, s.bank, name, cols, sweep), f"vary-{name}-seed{seed:04d}")


@cli.command("resample-z", short_help="Fig. 4: same p per row, new z per column.")
@common_options
@click.option("--seeds", type=SeedList(), default="0-3", show_default=True, help="Rows: p of each seed")
@click.option("--z-seeds", type=SeedList(), default="100-106", show_default=True, help="Columns: z of each seed")
def resample_z(opts: Options, seeds: list[int], z_seeds: list[int]) -> None:
    """Same p along each row, a different z in every column (fig. 4)."""
    stem = f"resample-z-seeds{cg.format_seeds(seeds)}-z{cg.format_seeds(z_seeds)}"
    refuse_existing_outputs(opts, f"{stem}.png")
    s = open_session(opts, "resample-z", needs_p=True)
    check_grid(s, len(seeds) * len(z_seeds))
    write(s, cg.resample_z_grid(s.sampler, seeds, z_seeds, s.bank), stem)


@cli.command("resample-p", short_help="Fig. 8: same z per row, new p per column.")
@common_options
@click.option("--seeds", type=SeedList(), default="0-3", show_default=True, help="Rows: z of each seed")
@click.option("--p-seeds", type=SeedList(), default="100-106", show_default=True, help="Columns: p of each seed")
def resample_p(opts: Options, seeds: list[int], p_seeds: list[int]) -> None:
    """Same z along each row, a different p in every column (fig. 8)."""
    stem = f"resample-p-seeds{cg.format_seeds(seeds)}-p{cg.format_seeds(p_seeds)}"
    refuse_existing_outputs(opts, f"{stem}.png")
    s = open_session(opts, "resample-p", needs_p=True)
    check_grid(s, len(seeds) * len(p_seeds))
    write(s, cg.resample_p_grid(s.sampler, seeds, p_seeds, s.bank), stem)


@cli.command(short_help="Fig. 6: exp, light and pose from real photos via FR.")
@common_options
@click.option("--images", "images_dir", required=True, help="Folder of reference photos (aligned crops, or raw "
              "photos with --landmarks)")  # fmt: skip
@click.option("--landmarks", is_flag=True, help="Align raw photos with <name>.txt (or detections/<name>.txt) "
              "landmarks, 5 or 68 'x y' rows, y-down pixels; detected (faces extra) where there is none")  # fmt: skip
@click.option("--seeds", type=SeedList(), default="0-3", show_default=True, help="Rows: generated identities")
@click.option("--recon-ckpt", help="FR checkpoint (epoch_20.pth layout) [default: the snapshot's]")
def reference(opts: Options, images_dir: str, landmarks: bool, seeds: list[int], recon_ckpt: str | None) -> None:
    """Generated identities (rows) with the expression, lighting and angles of real photos (columns) via FR (fig. 6)."""
    from generation import real_edit
    from training.resolve import build_reconstructor, resolve_assets

    if not os.path.isdir(images_dir):
        raise UserError(f"--images: folder not found: {images_dir}")
    refuse_existing_outputs(opts, f"reference-seeds{cg.format_seeds(seeds)}.png")
    s = open_session(opts, "reference", needs_p=True)
    ckpt = resolve_assets(s.config, recon_ckpt=recon_ckpt, need_data=False, need_face=False, need_fr=True,
                          progress=opts.verbose, log=lambda msg: echo(opts, msg)).recon_ckpt  # fmt: skip
    fr = build_reconstructor(ckpt, s.device, s.config.get("recon_backbone"))
    names, ref_images = real_edit.load_reference_images(images_dir, s.G.img_resolution, landmarks,
                                                        lambda m: echo(opts, m), opts.outdir)  # fmt: skip
    echo(opts, f"{len(names)} reference photos from {images_dir}; FR {ckpt}")
    check_grid(s, (len(seeds) + 1) * (len(names) + 1))
    ref_p = cg.reconstruct(fr, ref_images, s.device, opts.batch)
    result = cg.reference_grid(s.sampler, seeds, s.bank, ref_images, ref_p, names)
    write(s, result, f"reference-seeds{cg.format_seeds(seeds)}")


@cli.command("style-mix", short_help="Fig. 7: style mixing at coarse / middle / fine scales.")
@common_options
@click.option("--row-seeds", type=SeedList(), default="0-2", show_default=True, help="Source A (rows)")
@click.option("--col-seeds", type=SeedList(), help="Source B (columns) [default: the row seeds, as in fig. 7]")
@click.option("--scale", multiple=True, type=click.Choice(list(cg.STYLE_SCALES)), default=list(cg.STYLE_SCALES),
              show_default=True, help="Which ws to swap: coarse 4-8, middle 16-32, fine 64-R (repeatable)")  # fmt: skip
@click.option(
    "--layers", type=SeedList(), metavar="INDICES", help="Explicit w+ indices to swap, e.g. 0-3 (instead of --scale)"
)
@click.option("--p-seed", type=click.IntRange(min=0), help="One p (of this seed) for every image, as in fig. 7 "
              "[default: each source's own]")  # fmt: skip
def style_mix(opts: Options, row_seeds: list[int], col_seeds: list[int] | None, scale: tuple[str, ...],
              layers: list[int] | None, p_seed: int | None) -> None:  # fmt: skip
    """Style mixing (fig. 7): row source A's w+ with one scale's ws from column source B; p stays row A's."""
    col_seeds = col_seeds or row_seeds
    tag = f"rows{cg.format_seeds(row_seeds)}-cols{cg.format_seeds(col_seeds)}"
    refuse_existing_outputs(opts, *(f"style-mix-{n}-{tag}.png" for n in ([f"layers{cg.format_seeds(layers)}"]
                                                                        if layers else scale)))  # fmt: skip
    s = open_session(opts, "style-mix", needs_p=False)
    check_grid(s, (len(row_seeds) + 1) * (len(col_seeds) + 1))
    jobs = [(f"layers{cg.format_seeds(layers)}", layers)] if layers else [(n, cg.style_layers(s.G, n)) for n in scale]
    if not any(idx for _, idx in jobs):
        raise UserError(f"--scale {'/'.join(scale)} selects no ws at {s.G.img_resolution}px; use --layers")
    for name, idx in jobs:
        if not idx:
            echo(opts, f"skipping scale '{name}': no ws at {s.G.img_resolution}px")
            continue
        write(s, cg.style_mix_grid(s.sampler, row_seeds, col_seeds, s.bank, idx, p_seed), f"style-mix-{name}-{tag}")


@cli.command("feature-derivatives", short_help="Fig. 2: finite-difference maps dc/dp per attribute group.")
@click.option("--network", required=True, help="network-snapshot-*.pt of a conditional (--cond) run")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Where the PNGs go")
@click.option("--data", help="Dataset whose labels give p and the per-group std [default: the snapshot's]")
@click.option("--bfm", help="BFM_model_front.mat for rep(p) [default: the snapshot's]")
@click.option("--render-backend", default="auto", show_default=True, type=click.Choice(["auto", "torch", "nvdiffrast"]))
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seeds", type=SeedList(), default="0", show_default=True, help="Each picks a base p, directions")
@click.option("--eps", default=0.1, show_default=True, type=FiniteFloat(0, 10, lo_open=True),
              help="Step, in per-coefficient standard deviations")  # fmt: skip
@click.option("--cell", default=64, show_default=True, type=click.IntRange(1, 1024), help="Pixel size of each map")
@click.option("--overwrite", is_flag=True, help="Replace output files that exist (default: refuse them)")
def feature_derivatives(network: str, outdir: str, data: str | None, bfm: str | None, render_backend: str,
                        device: str, seeds: list[int], eps: float, cell: int, overwrite: bool) -> None:  # fmt: skip
    """Fig. 2: |dc_l/dp| per synthesis layer l (rows, 4x4 up) and attribute group (columns: id, exp, illum, angle).

    Writes fig2-seed<S>.png and prints, per attribute, the fraction of feature pixels above 10% of the layer's
    peak (small = localised, as in the paper).
    """
    from generation.feature_derivatives import derivative_sparsity, feature_derivative_maps, maps_to_image
    from training.dataset import ImageLabelDataset
    from training.resolve import build_renderer, pick_device, resolve_assets
    from training.run.snapshot import load_network

    refuse_existing([os.path.join(outdir, f"fig2-seed{seed:04d}.png") for seed in seeds], overwrite)
    dev = pick_device(device)
    G = load_network(network, dev)
    if G.synthesis.encoder is None:
        raise UserError(f"this snapshot's design ({G.cond_kind}) has no render encoder: it injects no features")
    resolved = resolve_assets(G.snapshot_config, data=data, bfm=bfm, log=click.echo)
    bank = torch.as_tensor(ImageLabelDataset(resolved.data).labels, device=dev)
    renderer = build_renderer(resolved.bfm, render_backend, dev)
    std = bank.std(dim=0).clamp(min=1e-6)
    for seed in seeds:
        p = bank[torch.randint(len(bank), [], generator=torch.Generator().manual_seed(seed))]
        maps = feature_derivative_maps(G, renderer, p, std, eps=eps, seed=seed)
        path = save_image(os.path.join(outdir, f"fig2-seed{seed:04d}.png"), maps_to_image(maps, cell), overwrite)
        sparsity = ", ".join(f"{k} {v:.3f}" for k, v in derivative_sparsity(maps).items())
        click.echo(f"{path}: active fraction {sparsity}")


@cli.command(short_help="Invert real photos into (p, w, noise) of the generator.")
@common_options
@click.option("--images", "images_path", required=True, help="A photo or a folder of photos (raw; aligned here)")
@click.option("--steps", default=500, show_default=True, type=int, help="Optimisation steps per photo")
@click.option("--w-plus", is_flag=True, help="Optimise one w per layer (W+) instead of one w (W)")
@click.option("--refine-p", is_flag=True, help="Also refine FR's p jointly (kept near FR's estimate)")
@click.option("--vgg", type=click.Path(dir_okay=False), help="torchvision VGG-16 weights for a perceptual loss "
              "[default: pixels + FR features, no extra weights]")  # fmt: skip
@click.option("--recon-ckpt", help="FR checkpoint [default: the snapshot's]")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial noise maps")
def invert(opts: Options, images_path: str, steps: int, w_plus: bool, refine_p: bool, vgg: str | None,
           recon_ckpt: str | None, seed: int) -> None:  # fmt: skip
    """Detect + align each photo, estimate p with FR, optimise w and the noise maps; print PSNR per photo."""
    from dataprep.builder import sha256_file
    from generation.inversion import InversionOptions
    from generation.real_edit import inversion_outputs, invert_photos, list_photos

    options = InversionOptions(steps=steps, w_plus=w_plus, refine_p=refine_p, seed=seed)
    options.check()
    paths = list_photos(images_path)
    refuse_existing([out for path in paths for out in inversion_outputs(path, opts.outdir)], opts.overwrite)
    s = open_session(opts, "invert", needs_p=True)
    fr = open_fr(s, recon_ckpt)
    invert_photos(s.G, fr, s.sampler.renderer, paths, opts.outdir, options, opts.network,
                  sha256_file(opts.network), vgg, log=click.echo, progress=opts.verbose,
                  overwrite=opts.overwrite)  # fmt: skip


@cli.command(short_help="Edit one 3DMM group of an inverted photo.")
@common_options
@click.option("--latent", required=True, help="<stem>-latent.npz written by 'invert'")
@click.option("--attr", required=True, type=click.Choice(["exp", "angle", "illum", "id"]), help="Group to edit")
@click.option("--yaw", help="angle: yaw values in degrees, e.g. -30,-15,15,30 [default sweep]")
@click.option("--pitch", help="angle: pitch values in degrees, e.g. -15,15")
@click.option("--light-dir", multiple=True, help="illum: light direction x,y,z (x right, y up, z to the viewer; "
              "repeatable) [default: left, right, top, bottom]")  # fmt: skip
@click.option("--light-strength", default=0.5, show_default=True, type=FiniteFloat(-10, 10),
              help="illum: directional strength")  # fmt: skip
@click.option("--scale", help="exp/id: multiply the group, e.g. 0,0.5,1.5,2 [exp default]")
@click.option("--from-image", multiple=True, help="exp/id: take the group from this photo via FR (repeatable)")
@click.option("--seeds", type=SeedList(), help="exp/id: take the group from p-bank rows of these seeds")
@click.option("--recon-ckpt", help="FR checkpoint for --from-image [default: the snapshot's]")
def edit(opts: Options, latent: str, attr: str, yaw: str | None, pitch: str | None, light_dir: tuple[str, ...],
         light_strength: float, scale: str | None, from_image: tuple[str, ...], seeds: list[int] | None,
         recon_ckpt: str | None) -> None:  # fmt: skip
    """A grid [target, reconstruction, edits]: only the chosen group of p changes; w and the noise maps stay."""
    from dataprep.builder import sha256_file
    from generation import real_edit
    from generation.inversion import load_latent

    stem = os.path.basename(latent).removesuffix(".npz").removesuffix("-latent")
    path = os.path.join(opts.outdir, f"{stem}-edit-{attr}.png")
    refuse_existing([path], opts.overwrite)
    s = open_session(opts, "edit", needs_p=True)
    lat = load_latent(latent, s.G, sha256_file(opts.network))
    check_coeffs(lat.p, f"--latent {latent}: p")
    photo_p = lambda paths: real_edit.photos_p(paths, open_fr(s, recon_ckpt), s.G.img_resolution, opts.outdir)
    edits, labels = real_edit.build_edits(lat.p, attr, yaw=yaw, pitch=pitch, light_dirs=light_dir,
                                          light_strength=light_strength, scale=scale, seeds=seeds, bank=s.bank,
                                          from_images=from_image, photo_p=photo_p)  # fmt: skip
    check_coeffs(edits, f"--attr {attr} edits")
    check_grid(s, len(edits) + 2)
    result = real_edit.render_edits(s.G, s.sampler.renderer, lat, edits, attr, labels, opts.batch)
    recon = real_edit.render_edits(s.G, s.sampler.renderer, lat, lat.p[None], attr, ["reconstruction"]).images[0]
    path = real_edit.save_edit_grid(path, lat.target, recon, result, overwrite=opts.overwrite)
    groups = ", ".join(result.changed) or "nothing (every edit equals the photo's p)"
    click.echo(f"{path}: [target, reconstruction, {', '.join(labels)}]; changed only p[{groups}], w and noise kept")


@cli.command(short_help="A browser editor: sliders for pose, expression, lighting, identity.")
@common_options(optional_outdir="Where 'Save' writes [default: studio/ beside the snapshot]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every interface)")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535), help="Port of the page")
@click.option("--recon-ckpt", help="FR checkpoint for the re-estimate view and photos [default: the snapshot's]")
@click.option("--invert-steps", default=200, show_default=True, type=click.IntRange(min=0),
              help="Uploaded photos: steps fitting w to the photo (as 'invert'); 0 = FR's p only, latent from z")
def studio(opts: Options, host: str, port: int, recon_ckpt: str | None, invert_steps: int) -> None:
    """Serve a local web page that edits a face with sliders; saved edits (image, p, z) go to --outdir."""
    from generation import studio as studio_app
    from generation.studio_state import Studio

    if opts.overwrite:
        raise UserError("--overwrite does nothing in the studio: it saves under a new number and never replaces a file")
    studio_app.import_gradio()  # the one-line install hint before any network is loaded
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: --host {host} serves the studio to every machine that can reach this one, without any "
                   "login (anyone can render, upload photos and save files into --outdir); use 127.0.0.1 with an SSH "
                   "tunnel unless the network is trusted", err=True)  # fmt: skip
    if opts.outdir is None:  # nothing is written until the user presses Save
        opts.outdir = studio_app.default_outdir(opts.network)
    s = open_session(opts, "studio", needs_p=False)
    fr = studio_app.fr_factory(s.config, recon_ckpt, s.device, opts.verbose) if s.G.needs else None
    inverter = None
    if fr is not None and invert_steps > 0:
        from generation.studio_state import inversion_inverter

        inverter = inversion_inverter(s.G, fr, s.sampler.renderer, s.device, invert_steps)
    app = Studio(s.G, s.sampler.renderer, s.bank, s.device, opts.network, opts.outdir, reconstructor=fr,
                 inverter=inverter)
    echo(opts, f"studio on http://{host}:{port} (Ctrl+C stops it); Save writes to {opts.outdir}")
    studio_app.serve(app, host, port, opts.trunc, opts.noise_mode, quiet=not opts.verbose)


if __name__ == "__main__":
    cli()
