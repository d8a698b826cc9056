"""Convert an NVIDIA StyleGAN2 network pickle into this project's network snapshot (read as data, never executed).

    python -m training.interop.convert_nvidia stylegan2-ffhq-256x256.pkl ffhq256.pt [--overwrite]

The output is a network snapshot (`torch.load(..., weights_only=True)`): G_ema (or G) + G_kwargs, usable by every
`--network` flag; it also carries NVIDIA's G and D (with D_kwargs) when the pickle has them, so that
`train.py --init-from OUT.pt` starts both networks from the pretrained weights. The config is empty: the pickle
says nothing about 3DMM assets, so generate.py / calc_metrics.py need --data where they use a dataset.
"""

from __future__ import annotations

import os

import click

from torch_utils.errors import UserError
from torch_utils.outputs import refuse_existing
from training.interop.nvidia_pickle import NvidiaNetworks, read_nvidia_networks
from training.run.snapshot import NETWORK_FORMAT, atomic_save


def snapshot_from_nvidia(nets: NvidiaNetworks) -> dict:
    """The network-snapshot dict for converted networks (G_ema falls back to G; G and D included when present)."""
    generator = nets.generator
    data = {"format": NETWORK_FORMAT, "G_kwargs": generator.kwargs, "G_ema": generator.state, "config": {},
            "cur_nimg": 0, "source": {"nvidia_pickle": os.path.abspath(nets.path), "networks": nets.present()}}
    if nets.G is not None:
        data["G"] = nets.G.state
    if nets.D is not None:
        data["D_kwargs"], data["D"] = nets.D.kwargs, nets.D.state
    return data


def describe(nets: NvidiaNetworks) -> str:
    """One line: resolution, latent sizes, mapping depth, channel widths and which networks the file holds."""
    kw = nets.generator.kwargs
    syn, mapping = kw["synthesis_kwargs"], kw["mapping_kwargs"]
    count = sum(t.numel() for t in nets.generator.state.values())
    return (f"{kw['img_resolution']}x{kw['img_resolution']} unconditional StyleGAN2, z_dim {kw['z_dim']}, "
            f"w_dim {kw['w_dim']}, mapping {mapping['num_layers']} layers, channel_base {syn['channel_base']}, "
            f"channel_max {syn['channel_max']}, {count / 1e6:.2f}M generator values; "
            f"networks: {', '.join(nets.present())}")


def check_destination(source: str, dest: str, overwrite: bool) -> None:
    """DEST must be a .pt, never the source itself (even with --overwrite), and new unless overwrite."""
    if not dest.endswith(".pt"):
        raise UserError(f"the destination must be a .pt network snapshot, not {dest}")
    same = os.path.realpath(source) == os.path.realpath(dest) or (
        os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest))
    if same:
        raise UserError(f"the destination {dest} is the source itself; writing it would destroy the pickle: choose "
                        "another .pt path")  # fmt: skip
    refuse_existing([dest], overwrite)


@click.command(context_settings={"max_content_width": 120})
@click.argument("source", type=str)
@click.argument("dest", type=str)
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists")
def main(source: str, dest: str, overwrite: bool) -> None:
    """Read SOURCE (an NVIDIA stylegan2-ada-pytorch / stylegan3 --cfg=stylegan2 .pkl) and write DEST (.pt)."""
    try:
        check_destination(source, dest, overwrite)
        nets = read_nvidia_networks(source)
        atomic_save(snapshot_from_nvidia(nets), dest, overwrite=overwrite)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{source}: {describe(nets)}")
    if nets.D_refused:
        click.echo(f"D left out: {nets.D_refused}")
    click.echo(f"wrote {dest}")


if __name__ == "__main__":
    main()
