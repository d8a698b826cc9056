"""Where the face assets come from: user-supplied files (BFM, FR checkpoint), downloads, and generated stand-ins.

Real assets cannot be redistributed (BFM licence) or are hosted on Google Drive (epoch_20.pth), so the project
never downloads them: `resolve_bfm` / `resolve_recon_checkpoint` check a user path and explain in one line where to
obtain the file. Generated stand-ins (a synthetic face model with the BFM file layout and a small FR trained on its
renders) live in `cache_dir()` and are built once, atomically and under a file lock (`cached_build`), on first use.

`python -m deep3drecon.assets [--bfm PATH] [--checkpoint PATH]` prints what is found.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from torch_utils.errors import UserError
from torch_utils.progress import progress as show_progress

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see _exclusive_lock)
    fcntl = None

BFM_FILENAME = "BFM_model_front.mat"
RECON_FILENAME = "epoch_20.pth"
BFM_HELP = (
    "obtain 01_MorphableModel.mat (Basel Face Model 2009) from the University of Basel after accepting its licence "
    "(https://faces.dmi.unibas.ch/bfm/main.php?nav=1-2&id=downloads) plus Exp_Pca.bin, then build "
    "BFM_model_front.mat with Deep3DFaceRecon_pytorch's conversion "
    "(https://github.com/sicxu/Deep3DFaceRecon_pytorch#prepare-prerequisite-models)"
)
RECON_HELP = (
    "download the pretrained epoch_20.pth linked in the Deep3DFaceRecon_pytorch README "
    "(https://github.com/sicxu/Deep3DFaceRecon_pytorch#inference-with-a-pre-trained-model)"
)
SYNTHETIC_FR_BACKBONE = "small"
# Bump when the synthetic face model, its world or the synthetic-FR recipe changes, so stale caches (face model,
# built-in dataset, FR: their names carry it) are not reused.
SYNTHETIC_FR_VERSION = 8


def cache_dir() -> Path:
    """Cache for generated/downloaded assets: $TAXFREE3DMM_CACHE or ~/.cache/taxfree3dmm (not created here)."""
    env = os.environ.get("TAXFREE3DMM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "taxfree3dmm"


def _tmp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name in the same directory (so os.replace is an atomic rename), unique per process."""
    return path.with_name(f".{path.stem}.{os.getpid()}{suffix}")


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cached(url: str, filename: str, sha256: str | None = None, progress: bool = True) -> Path:
    """Download `url` once to cache_dir()/filename (atomic rename, progress display, optional SHA-256 check) -> path."""
    dest = cache_dir() / filename
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(dest, ".download")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with show_progress(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        if sha256 is not None and (actual := _sha256(tmp)) != sha256.lower():
            raise UserError(f"Download of {url} has SHA-256 {actual}, expected {sha256}; delete it and retry")
        os.replace(tmp, dest)
    except OSError as exc:
        raise UserError(f"Could not download {url} to {dest}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def resolve_bfm(path: str | os.PathLike | None = None) -> Path:
    """Path of a user-supplied BFM_model_front.mat (default: cache_dir()/BFM_model_front.mat); UserError if absent."""
    p = Path(path).expanduser() if path is not None else cache_dir() / BFM_FILENAME
    if not p.is_file():
        raise UserError(f"Face model {p} not found ({BFM_FILENAME} expected): {BFM_HELP}")
    return p


def resolve_recon_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """Path of a user-supplied FR checkpoint (default: cache_dir()/epoch_20.pth); UserError if absent."""
    p = Path(path).expanduser() if path is not None else cache_dir() / RECON_FILENAME
    if not p.is_file():
        raise UserError(f"FR checkpoint {p} not found ({RECON_FILENAME} expected): {RECON_HELP}")
    return p


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, what: str, progress: bool) -> Iterator[None]:
    """Hold an exclusive flock on lock_path; a second process waits here (saying so) until the first is done.

    The kernel drops a flock when its holder dies, so a lock left by a killed builder is recovered at once. The
    holder removes the lock file on exit; a waiter that then wins the lock on the removed file notices (its inode is
    no longer the path's) and locks the current file instead, so at most one process ever holds the lock. Where
    fcntl is missing (Windows) there is no lock: concurrent builders then duplicate work, and the atomic rename
    still leaves one complete file.
    """
    if fcntl is None:
        yield
        return
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"Waiting for another process that is building {what} ({lock_path}) ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous holder removed this file: lock the one now at lock_path
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def cached_build(dest: Path, build: Callable[[Path], object], what: str, progress: bool = True) -> Path:
    """dest, made once by build(tmp) + atomic rename, under a file lock so that one process builds at a time.

    A process that finds dest being built waits for it and then uses the same file. build receives a temporary
    path in dest's folder with dest's suffix and must write the asset there.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.with_name(f".{dest.name}.lock"), what, progress):
        if dest.exists():  # built by the process we waited for
            return dest
        if progress:
            print(f"Building {what} (once; cached at {dest}) ...", flush=True)
        start = time.time()
        tmp = _tmp_sibling(dest, ".tmp" + dest.suffix)  # keeps the suffix (scipy's savemat, zip writers need it)
        try:
            build(tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if progress:
            print(f"Built {what} in {time.time() - start:.0f} s; later runs reuse {dest}", flush=True)
    return dest


def synthetic_face_model_path(seed: int = 0, progress: bool = True) -> Path:
    """cache_dir()/synthetic_face_model_v<version>_seed<seed>.mat in the BFM_model_front.mat layout, written once."""
    from deep3drecon.synthetic import WORLD_GRID, write_synthetic_mat  # lazy: only needed when the file is missing

    dest = cache_dir() / f"synthetic_face_model_v{SYNTHETIC_FR_VERSION}_seed{seed}.mat"
    build = lambda tmp: write_synthetic_mat(tmp, seed=seed, grid=WORLD_GRID)  # noqa: E731
    return cached_build(dest, build, "the synthetic face model", progress)


def synthetic_recon_file() -> Path:
    """Cache location of the synthetic FR checkpoint (name carries backbone and recipe version); built by
    dataprep.builtin.builtin_recon_path."""
    return cache_dir() / f"synthetic_recon_{SYNTHETIC_FR_BACKBONE}_v{SYNTHETIC_FR_VERSION}.pth"


@dataclass
class AssetStatus:
    """One line of the asset report: what, where, whether it is usable, and how to get it if not."""

    name: str
    path: Path
    found: bool
    note: str

    def __str__(self) -> str:
        note = f"  ({self.note})" if self.note else ""
        return f"[{'ok' if self.found else 'missing'}] {self.name}: {self.path}{note}"


def check_assets(
    bfm: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None
) -> list[AssetStatus]:
    """Report which face assets exist (real BFM/FR, generated stand-ins, optional nvdiffrast); never builds any."""
    bfm_path = Path(bfm).expanduser() if bfm is not None else cache_dir() / BFM_FILENAME
    ckpt_path = Path(checkpoint).expanduser() if checkpoint is not None else cache_dir() / RECON_FILENAME
    synth_mat = cache_dir() / f"synthetic_face_model_v{SYNTHETIC_FR_VERSION}_seed0.mat"
    synth_fr = synthetic_recon_file()
    try:
        import nvdiffrast.torch as nvdr_module

        nvdr, nvdr_path, nvdr_note = True, Path(nvdr_module.__file__).parent, "optional GPU rasterizer"
    except Exception:  # any import failure (missing, broken build) means the torch rasterizer is used
        nvdr, nvdr_path, nvdr_note = False, Path("nvdiffrast"), "optional; the pure-PyTorch rasterizer is used"
    return [
        AssetStatus("cache directory", cache_dir(), cache_dir().is_dir(), "set $TAXFREE3DMM_CACHE to move it"),
        AssetStatus("BFM face model", bfm_path, bfm_path.is_file(), "" if bfm_path.is_file() else BFM_HELP),
        AssetStatus("FR checkpoint", ckpt_path, ckpt_path.is_file(), "" if ckpt_path.is_file() else RECON_HELP),
        AssetStatus("synthetic face model", synth_mat, synth_mat.is_file(), "generated on first use"),
        AssetStatus("synthetic FR", synth_fr, synth_fr.is_file(), "trained on first use (about 1.5 CPU minutes)"),
        AssetStatus("nvdiffrast", nvdr_path, nvdr, nvdr_note),
    ]


@click.command()
@click.option("--bfm", type=click.Path(dir_okay=False), default=None, help="BFM_model_front.mat to check")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="FR checkpoint to check")
def main(bfm: str | None, checkpoint: str | None) -> None:
    """Print the status of every face asset."""
    for status in check_assets(bfm, checkpoint):
        click.echo(str(status))


if __name__ == "__main__":
    main()
