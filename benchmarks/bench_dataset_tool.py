"""Throughput of dataset_tool's three modes (images/s), on generated sources; nothing is downloaded.

    python benchmarks/bench_dataset_tool.py [--count 48] [--resolution 256] [--backbone resnet50] [--workers N]

Sources: synthetic-face renders placed into 1024x1024 canvases (FFHQ's size) with their 68 landmarks, written
both as an image folder with `<name>.txt` files and as a fake FFHQ tree + ffhq-dataset-v2.json. FR is a
random-weight ReconNet of the chosen backbone (resnet50 = the release's cost). Prints one line per mode.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataprep.builder import build_realigned_dataset, list_ffhq, list_image_folder  # noqa: E402
from dataprep.synthetic_scenes import build_synthetic_dataset  # noqa: E402
from deep3drecon.face_model import FaceModel  # noqa: E402
from deep3drecon.recon_net import ReconNet, save_recon_net  # noqa: E402
from deep3drecon.render import Renderer  # noqa: E402
from deep3drecon.synthetic import write_synthetic_mat  # noqa: E402

SOURCE_SIZE = 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the worker pools)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make_sources(root: Path, face_model_path: Path, count: int) -> None:
    """count 1024x1024 photos: a 512 render pasted off-centre on noise, landmarks scaled accordingly."""
    face_model = FaceModel.from_mat(face_model_path)
    rng = np.random.default_rng(0)
    coeffs = np.zeros((count, 257), np.float32)
    coeffs[:, :80] = rng.normal(0, 0.5, (count, 80))
    coeffs[:, 144:224] = rng.normal(0, 0.5, (count, 80))
    with torch.no_grad():
        geom = face_model.compute(torch.from_numpy(coeffs))
        out = Renderer(face_model).render_geometry(geom, 512)
    lm512 = (geom.landmarks.numpy().astype(np.float64) + 0.5) * 512 / 224 - 0.5
    (root / "photos").mkdir()
    (root / "ffhq" / "images1024x1024" / "00000").mkdir(parents=True)
    records = {}
    for i in range(count):
        canvas = (rng.random((SOURCE_SIZE, SOURCE_SIZE, 3)) * 255).astype(np.uint8)
        ox, oy = rng.integers(100, 400, 2)
        face = (out.render[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mask = out.mask[i, 0].numpy() > 0.5
        canvas[oy : oy + 512, ox : ox + 512][mask] = face[mask]
        lm = lm512[i] + [ox, oy]
        image = PIL.Image.fromarray(canvas)
        image.save(root / "photos" / f"{i:05d}.png", compress_level=1)
        np.savetxt(root / "photos" / f"{i:05d}.txt", lm, fmt="%.3f")
        rel = f"images1024x1024/00000/{i:05d}.png"
        image.save(root / "ffhq" / rel, compress_level=1)
        records[str(i)] = {"image": {"file_path": rel, "face_landmarks": lm.tolist()}}
    (root / "ffhq" / "ffhq-dataset-v2.json").write_text(json.dumps(records))


@click.command()
@click.option("--count", type=int, default=48, show_default=True, help="Images per mode")
@click.option("--resolution", type=int, default=256, show_default=True)
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50"]),
    default="resnet50",
    show_default=True,
    help="FR trunk (resnet50 = the released model's cost)",
)
@click.option("--workers", type=int, default=None, help="Worker processes (default: dataset_tool's default)")
@click.option("--device", default="cpu", show_default=True)
def main(count: int, resolution: int, backbone: str, workers: int | None, device: str) -> None:
    """Build one dataset per mode and print images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fm = root / "face.mat"
        write_synthetic_mat(fm, seed=0)
        save_recon_net(ReconNet(backbone), root / "fr.pth")
        make_sources(root, fm, count)
        print(
            f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, workers {workers}, "
            f"R={resolution}, FR {backbone} on {device}, {count} images per mode, sources 1024x1024"
        )
        runs = {
            "images": lambda: build_realigned_dataset(
                list_image_folder(root / "photos"),
                root / "images.zip",
                resolution,
                root / "fr.pth",
                mode="images",
                device=device,
                workers=workers,
                progress=False,
            ),
            "ffhq": lambda: build_realigned_dataset(
                list_ffhq(root / "ffhq", root / "ffhq" / "ffhq-dataset-v2.json")[0],
                root / "ffhq.zip",
                resolution,
                root / "fr.pth",
                mode="ffhq",
                device=device,
                workers=workers,
                progress=False,
            ),
            "synthetic": lambda: build_synthetic_dataset(
                root / "synthetic.zip",
                count,
                resolution,
                progress=False,
                face_model_path=fm,
                workers=workers,
                device=device,
            ),
        }
        for mode, run in runs.items():
            start, cpu_start = time.time(), cpu_seconds()
            report = run()
            seconds, cpu = time.time() - start, cpu_seconds() - cpu_start
            # CPU seconds (this process + its finished workers) make numbers comparable on a shared machine.
            print(
                f"{mode:<10} {report['num_images']:>5} images  {seconds:7.2f} s wall  "
                f"{report['num_images'] / seconds:7.2f} images/s  ({cpu:7.2f} CPU-s, "
                f"{report['num_images'] / cpu:6.2f} images per CPU-s)"
            )


if __name__ == "__main__":
    main()
