"""Build the method's training datasets: aligned face images labelled with their 257-d 3DMM coefficients p.

    python dataset_tool.py ffhq --source ~/ffhq --landmarks ffhq-dataset-v2.json --dest ffhq256.zip \\
        --resolution 256 --bfm BFM_model_front.mat --recon-ckpt epoch_20.pth
    python dataset_tool.py images --source photos/ --dest faces256.zip --resolution 256 --recon-ckpt epoch_20.pth
    python dataset_tool.py synthetic --dest synthetic64.zip --count 2000 --resolution 64 --seed 0
    python dataset_tool.py info ffhq256.zip

Output (zip, or a new folder when --dest has no .zip suffix): `00000/img00000123.png` RGB images at R x R in the
Deep3DFaceRecon framing scaled to R, `dataset.json` = {"labels": [[name, [257 floats]], ...], "meta": {...}} and
`alignment.json` (per-image source + similarity). Written to a temporary file and renamed when complete.
The library code lives in training/dataset_builder.py and training/synthetic_scenes.py.
"""

from __future__ import annotations

import json
from typing import Any

import click

from torch_utils.errors import Group

MAX_COUNT = 1_000_000  # synthetic images per dataset (their p are drawn up front: 1M x 257 floats, ~1 GB)


def _check_resolution(resolution: int) -> None:
    # The generator needs a power of two; 8 is the smallest size the face still covers a few pixels at.
    if resolution < 8 or resolution > 4096 or resolution & (resolution - 1):
        raise click.BadParameter(f"{resolution} is not a power of two between 8 and 4096", param_hint="--resolution")


def _finish(report: dict[str, Any]) -> None:
    """Print the end-of-run summary: written images, throughput and the skipped-file report."""
    from dataprep.builder import SkipReport

    skipped = SkipReport(report["skipped"])
    click.echo(
        f"Wrote {report['num_images']} images to {report['dest']} in {report['seconds']:.1f} s "
        f"({report['images_per_sec']:.2f} images/s)."
    )
    click.echo(skipped.format())


def _run(fn, **kwargs) -> dict[str, Any]:
    """Call a builder (its UserErrors print as one line through the Group)."""
    return fn(**kwargs)


def common_options(fn):
    """Options shared by the modes that realign photos (images, ffhq)."""
    options = [
        click.option("--dest", required=True, type=click.Path(), help="Output .zip (or new folder)"),
        click.option("--resolution", type=int, default=256, show_default=True, help="Output size R (power of 2)"),
        click.option(
            "--bfm",
            type=click.Path(dir_okay=False),
            default=None,
            help="BFM_model_front.mat the labels refer to (optional; recorded in meta by SHA-256)",
        ),
        click.option(
            "--recon-ckpt",
            type=click.Path(dir_okay=False),
            default=None,
            help="FR checkpoint (epoch_20.pth layout; default: cache dir)",
        ),
        click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use only the first N sources"),
        click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True, help="FR batch"),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="Decode/align processes (0 = in-process; default: CPUs - 1)",
        ),
        click.option("--device", default="auto", show_default=True, help="FR device: auto, cpu, cuda, cuda:1, ..."),
        click.option("--progress/--no-progress", default=True, help="Show progress (a terminal bar or log lines)"),
        click.option("--overwrite", is_flag=True, help="Replace an existing --dest zip (a folder is never replaced)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(cls=Group)
def cli() -> None:
    """Build and inspect 3DMM-labelled face datasets."""


@cli.command()
@click.option(
    "--source",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="FFHQ root (holding images1024x1024/ or in-the-wild-images/) or the images folder itself",
)
@click.option(
    "--landmarks",
    "landmarks_json",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="ffhq-dataset-v2.json",
)
@click.option(
    "--landmark-set",
    type=click.Choice(["auto", "image", "in_the_wild"]),
    default="auto",
    show_default=True,
    help="Which json record's landmarks/file_path to use (auto: whichever exists)",
)
@common_options
def ffhq(source: str, landmarks_json: str, landmark_set: str, **opts: Any) -> None:
    """Realign FFHQ from its 68 landmarks to the Deep3DFaceRecon framing at R and label it with FR."""
    from dataprep.builder import list_ffhq
    from dataprep.dataset_writer import check_dest

    _check_resolution(opts["resolution"])
    check_dest(opts["dest"], opts["overwrite"])  # before any work: an existing output is refused in one line
    items, used = _run(
        list_ffhq, source=source, landmarks_json=landmarks_json, landmark_set=landmark_set,
        max_images=opts["max_images"],
    )  # fmt: skip
    click.echo(f"{len(items)} FFHQ entries, landmarks from the '{used}' records.")
    _build_realigned(items, "ffhq", source, opts, extra_meta={"landmark_set": used})


@cli.command()
@click.option(
    "--source",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of face photos (recursive); landmarks in <name>.txt beside each (5 or 68 rows 'x y'), detected "
    "(faces extra) and written as <name>_landmarks.txt where missing",
)
@common_options
def images(source: str, **opts: Any) -> None:
    """Align any folder of face photos (landmark files or detected faces) and label them with FR."""
    from dataprep.builder import list_image_folder
    from dataprep.dataset_writer import check_dest
    from dataprep.photo_landmarks import detect_missing_landmarks

    _check_resolution(opts["resolution"])
    check_dest(opts["dest"], opts["overwrite"])
    items = _run(list_image_folder, source=source, max_images=opts["max_images"])
    _run(detect_missing_landmarks, items=items, device=opts["device"], progress=opts["progress"], log=click.echo)
    _build_realigned(items, "images", source, opts)


def _build_realigned(items: list, mode: str, source: str, opts: dict[str, Any], extra_meta: dict | None = None) -> None:
    """Shared tail of `ffhq` and `images`: align, label with FR, write, report."""
    from dataprep.builder import build_realigned_dataset

    opts = {k: v for k, v in opts.items() if k != "max_images"}  # already applied when listing the items
    _finish(_run(build_realigned_dataset, items=items, mode=mode, source=source, extra_meta=extra_meta, **opts))


@cli.command()
@click.option("--dest", required=True, type=click.Path(), help="Output .zip (or new folder)")
@click.option("--count", type=click.IntRange(1, MAX_COUNT), required=True, help="Number of images")
@click.option("--resolution", type=int, default=256, show_default=True, help="Output size R (power of 2)")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i depends only on (seed, i)")
@click.option(
    "--face-model",
    type=click.Path(dir_okay=False),
    default=None,
    help="BFM-layout .mat to render with (default: the built-in synthetic face model)",
)
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Cap on --count for quick tries")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True, help="Render batch")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Compositing processes (0 = in-process)")
@click.option("--device", default="cpu", show_default=True, help="Render device: cpu, cuda, auto")
@click.option("--progress/--no-progress", default=True, help="Show progress (a bar on a terminal, lines in a log)")
@click.option("--overwrite", is_flag=True, help="Replace an existing --dest zip (a folder is never replaced)")
def synthetic(
    dest: str,
    count: int,
    resolution: int,
    seed: int,
    face_model: str | None,
    max_images: int | None,
    batch_size: int,
    workers: int | None,
    device: str,
    progress: bool,
    overwrite: bool,
) -> None:
    """Render synthetic faces with ground-truth p into random scenes (backgrounds, hair, hats, clothing)."""
    from dataprep.dataset_writer import check_dest
    from dataprep.synthetic_scenes import build_synthetic_dataset

    _check_resolution(resolution)
    check_dest(dest, overwrite)
    report = _run(
        build_synthetic_dataset,
        dest=dest,
        count=min(count, max_images or count),
        resolution=resolution,
        seed=seed,
        progress=progress,
        face_model_path=face_model,
        batch_size=batch_size,
        workers=workers,
        device=device,
        overwrite=overwrite,
    )
    _finish(report)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table")
def info(path: str, as_json: bool) -> None:
    """Images, resolution, label dimension and per-group label statistics of a dataset."""
    from training.dataset_info import dataset_info, format_info

    summary = _run(dataset_info, path=path)
    click.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


if __name__ == "__main__":
    cli()
