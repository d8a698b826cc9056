"""Training throughput of a preset on the current device: sec/kimg, images/s and peak memory, as a table.

  python benchmarks/bench_training.py --cfg paper256 --iters 20            # GPU: the paper's setting
  python benchmarks/bench_training.py --cfg smoke --iters 10 --no-cond     # the speed "tax" of the method
Runs the real training loop on a throw-away random dataset (throughput does not depend on image content). FR:
--recon-ckpt, else the synthetic FR for presets on the built-in synthetic world (smoke), else a random-weight
ResNet-50 in the official layout (the release's cost). Face model: --bfm or the synthetic one (the BFM has ~36k
vertices vs a few thousand: pass --bfm for representative rendering cost).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_dataset(path: str, resolution: int, num: int, seed: int = 0) -> None:
    import zipfile

    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    entries = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(num):
            name = f"img{i:05d}.png"
            image = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
            with zf.open(name, "w") as f:
                PIL.Image.fromarray(image).save(f, format="png")
            p = np.zeros(257, np.float32)
            p[:144] = rng.normal(size=144) * 0.5
            entries.append([name, p.tolist()])
        zf.writestr("dataset.json", json.dumps({"labels": entries}))


@click.command()
@click.option("--cfg", default="smoke", help="Preset name or JSON file")
@click.option("--iters", default=10, type=int, help="Measured iterations (after one warm-up tick)")
@click.option("--batch", type=int, help="Override the preset batch")
@click.option("--batch-gpu", type=int, help="Override images per forward pass")
@click.option("--resolution", type=int, help="Dataset resolution [preset's built-in data or 256]")
@click.option("--cond/--no-cond", default=None, help="Method or unconditional baseline [preset]")
@click.option("--bfm", help="Face model .mat [synthetic]")
@click.option("--recon-ckpt", help="FR checkpoint [random-weight resnet50 in the official layout]")
@click.option("--render-backend", default="auto", type=click.Choice(["auto", "torch", "nvdiffrast"]))
def main(cfg: str, iters: int, batch: int | None, batch_gpu: int | None, resolution: int | None,
         cond: bool | None, bfm: str | None, recon_ckpt: str | None, render_backend: str) -> None:
    """Print one table row per measured tick and a summary line."""
    from dataprep.builtin import builtin_recon_path
    from deep3drecon import assets
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from torch_utils.misc import pick_device
    from training.config import resolve_config
    from training.resolve import resolve_run
    from training.training_loop import training_loop

    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        c = resolve_config(cfg, dict(batch=batch, batch_gpu=batch_gpu, cond=cond, render_backend=render_backend,
                                     data=None, workers=0))
        res = resolution or (c.builtin_data or {}).get("resolution", 256)
        data = os.path.join(tmp, "data.zip")
        _random_dataset(data, res, num=max(c.batch * 2, 64))
        c.data, c.metrics = data, []
        if c.design_spec.conditional:
            c.bfm = bfm or str(assets.synthetic_face_model_path())
            if recon_ckpt is None and c.builtin_data is not None:
                recon_ckpt = str(builtin_recon_path())  # the FR this preset really trains with
            elif recon_ckpt is None:
                recon_ckpt = os.path.join(tmp, "fr.pth")  # the release's architecture: resnet50 at 224
                save_recon_net(ReconNet(backbone="resnet50"), recon_ckpt)
            c.recon_ckpt = recon_ckpt
        c.builtin_data = None
        c.tick_kimg = (c.batch - 0.5) / 1000  # one tick per iteration (robust to float rounding)
        c.kimg = c.batch * (iters + 1) / 1000
        c.snap = 10**9
        run_dir = os.path.join(tmp, "run")
        os.makedirs(run_dir)
        training_loop(c, run_dir, device, *resolve_run(c))
        ticks = [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))][1:]  # drop warm-up
    name = f"{c.cfg} {c.design} R{res} batch {c.batch} ({device.type})"
    sec_per_kimg = sorted(t["Timing/sec_per_kimg"]["mean"] for t in ticks)[len(ticks) // 2]
    mem = max(t["Resources/peak_gpu_mem_gb"]["mean"] for t in ticks)
    cpumem = max(t["Resources/cpu_mem_gb"]["mean"] for t in ticks)
    print()
    print("| config | sec/kimg (median) | images/s | peak GPU mem GB | CPU RSS GB |")
    print("|---|---|---|---|---|")
    print(f"| {name} | {sec_per_kimg:.2f} | {1000 / sec_per_kimg:.1f} | {mem:.2f} | {cpumem:.2f} |")


if __name__ == "__main__":
    main()
