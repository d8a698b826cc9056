"""Project-wide asset check: the face assets (deep3drecon) plus the Inception weights that FID/KID need.

    python -m metrics.assets [--bfm PATH] [--checkpoint PATH] [--inception PATH]
    python calc_metrics.py --check-assets [--bfm PATH] [--recon-ckpt PATH] [--inception PATH]

Nothing is downloaded or built: the report says what is found and, for what is missing, where to put it or
which flag to pass, so an offline user learns before a 50k-image run what is missing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click
import torch

from deep3drecon.assets import AssetStatus, check_assets
from metrics.features import INCEPTION_FILENAME, INCEPTION_URL


def inception_cache_path() -> Path:
    """Where the Inception weights are looked for without --inception: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _sha256_prefix_ok(path: Path) -> bool:
    """True if the file's SHA-256 starts with the 8 hex digits in the release file name (torch hub convention)."""
    expected = INCEPTION_FILENAME.rsplit("-", 1)[-1].split(".")[0]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(expected)


def inception_status(path: str | os.PathLike | None = None) -> AssetStatus:
    """Status of the Inception-v3 FID weights: an explicit file, else the torch hub cache; checksum verified."""
    target = Path(path).expanduser() if path is not None else inception_cache_path()
    if not target.is_file():
        how = f"download {INCEPTION_URL} to {inception_cache_path()} or pass --inception PATH (fid*/kid* metrics)"
        return AssetStatus("Inception-v3 FID weights", target, False, how)
    if path is None and not _sha256_prefix_ok(target):
        note = "checksum does not match the release file; download it again"
        return AssetStatus("Inception-v3 FID weights", target, False, note)
    return AssetStatus("Inception-v3 FID weights", target, True, "used by fid*/kid* metrics")


def check_all_assets(
    bfm: str | None = None, checkpoint: str | None = None, inception: str | None = None
) -> list[AssetStatus]:
    """Face assets (deep3drecon.assets.check_assets) followed by the Inception weights line."""
    return [*check_assets(bfm, checkpoint), inception_status(inception)]


def print_asset_report(bfm: str | None = None, checkpoint: str | None = None, inception: str | None = None) -> bool:
    """Prints one line per asset; returns True when the real BFM, FR checkpoint and Inception weights are found."""
    statuses = check_all_assets(bfm, checkpoint, inception)
    for status in statuses:
        click.echo(str(status))
    wanted = {"BFM face model", "FR checkpoint", "Inception-v3 FID weights"}
    return all(s.found for s in statuses if s.name in wanted)


@click.command()
@click.option("--bfm", type=click.Path(dir_okay=False), default=None, help="BFM_model_front.mat to check")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FR checkpoint to check")
@click.option("--inception", type=click.Path(dir_okay=False), default=None, help="Inception weights (.pth) to check")
def main(bfm: str | None, checkpoint: str | None, inception: str | None) -> None:
    """Print the status of every asset training and the metrics use."""
    print_asset_report(bfm, checkpoint, inception)


if __name__ == "__main__":
    main()
