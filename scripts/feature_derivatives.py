"""Paper figure 2 for a snapshot: finite-difference maps dc/dp per attribute group (id, exp, illum, angle).

  python scripts/feature_derivatives.py --network runs/.../network-snapshot-000002.pt --outdir out/fig2
Writes fig2-seed<S>.png (rows: synthesis conv layers from 4x4 up; columns: id, exp, illum, angle) and prints,
per attribute, the fraction of feature pixels above 10% of the layer's peak (small = localised, as in the paper).
"""

from __future__ import annotations

import os
import sys

import click
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from generation.feature_derivatives import derivative_sparsity, feature_derivative_maps, maps_to_image  # noqa: E402
from torch_utils.errors import UserError  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.dataset import ImageLabelDataset  # noqa: E402
from training.face_pipeline import build_renderer, resolve_run_assets  # noqa: E402
from training.snapshot import load_network  # noqa: E402


@click.command()
@click.option("--network", required=True, help="network-snapshot-*.pt of a conditional (--cond) run")
@click.option("--outdir", required=True, help="Where to write the PNG")
@click.option("--data", help="Dataset whose labels give p and the per-group std [snapshot's dataset]")
@click.option("--bfm", help="Face model .mat [snapshot's]")
@click.option("--render-backend", default="auto", type=click.Choice(["auto", "torch", "nvdiffrast"]))
@click.option("--seeds", default="0", help="Comma-separated seeds: each picks a base p and directions")
@click.option("--eps", default=0.1, type=float, help="Step, in per-coefficient standard deviations")
@click.option("--cell", default=64, type=int, help="Pixel size of each map in the PNG")
def main(network: str, outdir: str, data: str | None, bfm: str | None, render_backend: str, seeds: str, eps: float,
         cell: int) -> None:
    """Write figure-2 style dc/dp maps for a conditional snapshot."""
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        G = load_network(network, device)
        if not G.is_conditional:
            raise UserError("this snapshot is unconditional (--no-cond): it has no injected features")
        config = TrainConfig.from_dict(G.snapshot_config)
        if data is None or bfm is None:  # the run's own assets (built-in ones are rebuilt if the cache moved)
            run_data, run_bfm, _ = resolve_run_assets(config, progress=True)
            data, bfm = data or run_data, bfm or run_bfm
        dataset = ImageLabelDataset(data)
        renderer = build_renderer(bfm, render_backend, device)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    bank = torch.as_tensor(dataset.labels, device=device)
    std = bank.std(dim=0).clamp(min=1e-6)
    os.makedirs(outdir, exist_ok=True)
    for seed in [int(s) for s in seeds.split(",") if s]:
        p = bank[torch.randint(len(bank), [], generator=torch.Generator().manual_seed(seed))]
        maps = feature_derivative_maps(G, renderer, p, std, eps=eps, seed=seed)
        path = os.path.join(outdir, f"fig2-seed{seed:04d}.png")
        PIL.Image.fromarray(maps_to_image(maps, cell)).save(path)
        sparsity = ", ".join(f"{k} {v:.3f}" for k, v in derivative_sparsity(maps).items())
        print(f"{path}: active fraction {sparsity}")


if __name__ == "__main__":
    main()
