"""Building labelled training datasets: realign photos to the Deep3DFaceRecon framing and label them with FR.

Every dataset this module writes has the layout `training.dataset.ImageLabelDataset` reads:
    00000/img00000123.png ...   RGB PNGs, R x R, named after the image's position in the source stream
    dataset.json                {"labels": [[name, [257 floats]], ...], "meta": {...provenance...}}
    alignment.json              per image: source name and the similarity that produced the crop
Images are framed exactly like Deep3DFaceRecon's `align_img` (reference 6.5), scaled to R (6.10: target_size R,
rescale factor 102 R / 224), so that render(p, size=R) of an image's label lines up with it pixel for pixel.
Labels come from FR on a crop aligned *directly from the source* at FR's own input size (224 for the release),
as the release does, rather than from the stored R crop resized (which would resample twice).

Pipeline: a worker pool decodes + aligns (CPU bound), the main process batches the FR crops through the network
on the chosen device and streams PNGs into a temporary zip that is renamed into place only when complete.
Unreadable images and images without usable landmarks are skipped and listed in the report, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from dataprep.dataset_writer import DatasetWriter
from dataprep.landmarks import landmarks_outside
from deep3drecon.landmarks import check_landmarks, load_landmarks
from deep3drecon.photo import read_photo
from torch_utils.errors import UserError, first_line
from torch_utils.misc import pick_device
from torch_utils.progress import progress as show_progress

TOOL_NAME = "taxfree3dmm dataset_tool"
TOOL_VERSION = "1.0.0"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PNG_COMPRESS_LEVEL = 1  # ~2-3x smaller than level 0 (StyleGAN2's choice) at a small decode cost
FR_RESCALE_224 = 102.0  # Deep3DFaceRecon's rescale factor at 224 (reference 6.5)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers: names, hashing, PNG encoding, JSON-safe values.


def archive_name(index: int) -> str:
    """Relative name of the index-th image: '00000/img00000123.png' (StyleGAN2 convention, 1000 per folder)."""
    name = f"{index:08d}"
    return f"{name[:5]}/img{name}.png"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] RGB -> PNG bytes."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image, "RGB").save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def framing_record(resolution: int, fr_size: int) -> dict[str, Any]:
    """The alignment constants of a dataset at resolution R whose labels come from FR at fr_size (for 'meta')."""
    return {
        "method": "Deep3DFaceRecon align_img framing: POS fit of 5 landmarks to the 3-D template; one bicubic "
        "resampling of the exact crop box (deep3drecon.align exact=True; the release's int rounding differs < 1 px)",
        "landmarks": "5 points (68 reduced by extract_5p), y-down pixels of the source image",
        "target_size": resolution,
        "rescale_factor": FR_RESCALE_224 * resolution / 224,
        "fr_input_size": fr_size,
        "fr_rescale_factor": FR_RESCALE_224 * fr_size / 224,
        "render_focal_px": 1015.0 * resolution / 224,  # reference 6.10: render p at R with these intrinsics
        "render_center_px": resolution / 2,
    }


def label_row(coeffs: np.ndarray) -> list[float]:
    """float32 [L] -> shortest decimals that read back to the same float32 (keeps dataset.json ~2x smaller)."""
    return [float(str(v)) for v in np.asarray(coeffs, dtype=np.float32)]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and numpy arrays/scalars -> plain JSON types (recursively)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------------------------------------------
# Skip report.


@dataclass
class SkipReport:
    """Images left out of a dataset and why; printed at the end of a run and stored in the dataset's meta."""

    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        """Record that source image `name` was skipped for `reason` (one line)."""
        self.skipped.append({"name": name, "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)

    def format(self, limit: int = 20) -> str:
        """Human-readable summary: count, then up to `limit` 'name: reason' lines."""
        if not self.skipped:
            return "Skipped 0 images."
        lines = [f"Skipped {len(self.skipped)} image(s):"]
        lines += [f"  {s['name']}: {s['reason']}" for s in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more (all listed in dataset.json meta.skipped)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Atomic dataset writer.


# ----------------------------------------------------------------------------------------------------------------
# Worker pool.


def _init_worker() -> None:
    # Workers only decode and warp; one thread each keeps them from oversubscribing the cores with the parent.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, max_inflight: int | None = None
) -> Iterator[Any]:
    """fn over items in a pool of `workers` processes (0 = in this process), results in input order.

    At most `max_inflight` items are submitted ahead of the consumer, so a slow consumer (FR on a CPU) cannot
    make decoded images pile up in memory, and `items` may be a lazy generator that does work in this process.
    fork where available: no re-import of torch per worker (spawn would cost seconds each); workers never run
    torch ops, so forking a process that has initialised torch is safe here.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    max_inflight = max_inflight or 4 * workers
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    iterator = iter(items)
    with multiprocessing.get_context(method).Pool(workers, initializer=_init_worker) as pool:
        inflight = deque(pool.apply_async(fn, (x,)) for x in itertools.islice(iterator, max_inflight))
        while inflight:
            result = inflight.popleft().get()
            for x in itertools.islice(iterator, 1):
                inflight.append(pool.apply_async(fn, (x,)))
            yield result


def default_workers() -> int:
    """Decode/align processes to use by default: all cores but one (the main process runs FR), at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


# ----------------------------------------------------------------------------------------------------------------
# Sources: (index, name, image path, landmarks) records.


@dataclass
class SourceItem:
    """One source photo: output index, report name, image path, and landmarks [K, 2] y-down or a .txt path."""

    index: int
    name: str
    image_path: str
    landmarks: list[list[float]] | None = None
    landmarks_path: str | None = None
    skip_reason: str | None = None  # set before decoding (e.g. the face detector found no face)


def list_image_folder(source: str | os.PathLike, max_images: int | None = None) -> list[SourceItem]:
    """Images under `source` (recursive, sorted by relative path), each with landmarks in '<stem>.txt' beside it."""
    root = Path(source)
    if not root.is_dir():
        raise UserError(f"--source {root} is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"--source {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    paths = paths[:max_images] if max_images is not None else paths
    items = []
    for i, p in enumerate(paths):
        # '<stem>.txt' (user-made) first, then '<stem>_landmarks.txt' (written by the detector on an earlier run).
        detected = p.with_name(f"{p.stem}_landmarks.txt")
        lm_path = detected if not p.with_suffix(".txt").is_file() and detected.is_file() else p.with_suffix(".txt")
        items.append(SourceItem(i, p.relative_to(root).as_posix(), str(p), landmarks_path=str(lm_path)))
    return items


def list_ffhq(
    source: str | os.PathLike, landmarks_json: str | os.PathLike, landmark_set: str = "auto",
    max_images: int | None = None,
) -> tuple[list[SourceItem], str]:  # fmt: skip
    """FFHQ items from ffhq-dataset-v2.json -> (items, landmark set used).

    The json maps "0".."69999" to records with "image" (the aligned 1024 photo: file_path
    'images1024x1024/00000/00000.png' and face_landmarks [68][x, y] in its pixels) and "in_the_wild" (the original
    photo, its own file_path and face_landmarks). landmark_set 'image' or 'in_the_wild' picks the record; 'auto'
    takes whichever record's first file exists under `source` (the folder that holds images1024x1024/ or
    in-the-wild-images/, or the images folder itself). The output index is the FFHQ id, so img00000123 = 00123.
    """
    root = Path(source)
    try:
        with open(landmarks_json, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"Cannot read FFHQ landmarks json {landmarks_json}: {exc}") from exc
    if not isinstance(records, dict) or not records:
        raise UserError(f"{landmarks_json} is not an FFHQ metadata json (expected an object keyed by image id)")
    keys = sorted(records, key=lambda k: int(k) if str(k).isdigit() else sys.maxsize)
    keys = keys[:max_images] if max_images is not None else keys

    def locate(rel: str) -> Path:
        # Accept --source at the dataset root ('images1024x1024/00000/00000.png') or at the images folder itself.
        parts = Path(rel).parts
        for k in range(len(parts)):
            if (root / Path(*parts[k:])).is_file():
                return root / Path(*parts[k:])
        return root / rel

    if landmark_set == "auto":
        first = records[keys[0]]
        found = [s for s in ("image", "in_the_wild") if s in first and locate(first[s]["file_path"]).is_file()]
        landmark_set = found[0] if found else "image"
    items = []
    for position, key in enumerate(keys):
        rec = records[key].get(landmark_set, {}) if isinstance(records[key], dict) else {}
        index = int(key) if str(key).isdigit() else position
        rel = rec.get("file_path", f"{landmark_set}/{key}")
        lm = rec.get("face_landmarks")
        items.append(SourceItem(index, rel, str(locate(rel)), landmarks=lm))
    return items, landmark_set


# ----------------------------------------------------------------------------------------------------------------
# Decode + align (runs in the workers).


@dataclass
class Prepared:
    """A decoded, aligned source image: stored crop (PNG bytes, R x R), FR crop uint8 [S, S, 3], alignment."""

    item: SourceItem
    png: bytes
    fr_crop: np.ndarray
    align_params: Any
    crop_landmarks: list[list[float]]


@dataclass
class Skipped:
    """A source image that could not be used, with a one-line reason."""

    item: SourceItem
    reason: str


def prepare_item(item: SourceItem, resolution: int, fr_size: int) -> Prepared | Skipped:
    """Decode one source photo, read its landmarks, align it at R and at FR's input size S (worker entry point)."""
    from deep3drecon.align import align_face  # lazy: keeps the worker import light

    if item.skip_reason is not None:
        return Skipped(item, item.skip_reason)
    try:
        if item.landmarks is not None:
            lm = check_landmarks(np.asarray(item.landmarks, dtype=np.float64))
        elif item.landmarks_path is not None and os.path.isfile(item.landmarks_path):
            lm = load_landmarks(item.landmarks_path)
        else:
            return Skipped(item, f"no landmarks ({item.landmarks_path or 'none in the json'})")
    except (ValueError, OSError) as exc:
        return Skipped(item, f"bad landmarks: {exc}")
    try:  # the one photo reader: pixel budget from the header, EXIF orientation, full decode (truncation fails here)
        image = read_photo(item.image_path, item.name)
    except UserError as exc:
        return Skipped(item, str(exc))
    outside = landmarks_outside(lm, image.width, image.height)
    if outside:
        return Skipped(item, f"bad landmarks: {outside}")
    try:
        stored = align_face(image, lm, size=resolution)
        fr = stored if fr_size == resolution else align_face(image, lm, size=fr_size)
    except Exception as exc:  # a degenerate POS fit must not stop a 70k-image run
        return Skipped(item, f"alignment failed: {type(exc).__name__}: {first_line(exc)}")
    return Prepared(
        item=item,
        png=encode_png(np.asarray(stored.image.convert("RGB"), dtype=np.uint8)),
        fr_crop=np.asarray(fr.image.convert("RGB"), dtype=np.uint8),
        align_params=_params_record(stored.params),
        crop_landmarks=np.round(np.asarray(stored.landmarks, dtype=np.float64), 3).tolist(),
    )


def _params_record(params: Any) -> Any:
    """AlignParams -> JSON dict, plus the release's trans_params [W0, H0, s', t_x, t_y(y-up)] for interop."""
    record = to_jsonable(params)
    if isinstance(record, dict) and hasattr(params, "release_trans_params"):
        record["release_trans_params"] = to_jsonable(params.release_trans_params)
    return record


# ----------------------------------------------------------------------------------------------------------------
# The realign-and-label pipeline.


def build_realigned_dataset(
    items: list[SourceItem], dest: str | os.PathLike, resolution: int, recon_ckpt: str | os.PathLike | None,
    bfm: str | os.PathLike | None = None, *, mode: str = "images", source: str = "", device: str = "auto",
    batch_size: int = 32, workers: int | None = None, progress: bool = True, extra_meta: dict | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Align every item at `resolution`, label it with FR, write the dataset atomically -> report dict.

    report: {"dest", "num_images", "num_skipped", "skipped": [{"name", "reason"}], "seconds", "images_per_sec"}.
    FR runs in eval mode on `device` ('auto' = cuda if available) on crops aligned at its own input size.
    """
    import torch

    from deep3drecon.assets import resolve_recon_checkpoint
    from deep3drecon.recon_net import load_recon_net

    ckpt_path = resolve_recon_checkpoint(recon_ckpt)
    net = load_recon_net(ckpt_path)
    dev = pick_device(device)
    net = net.to(dev).eval()
    fr_size = int(net.input_size)
    meta: dict[str, Any] = {
        "tool": TOOL_NAME, "tool_version": TOOL_VERSION, "mode": mode, "source": str(source),
        "resolution": resolution, "framing": framing_record(resolution, fr_size), "label_layout": label_layout(),
        "created_unix": int(time.time()),
        "recon_checkpoint": {"file": ckpt_path.name, "sha256": sha256_file(ckpt_path), "backbone": net.backbone_name},
    }  # fmt: skip
    if bfm is not None:
        from deep3drecon.assets import resolve_bfm

        bfm_path = resolve_bfm(bfm)  # labels are coefficients of this model: record which one
        meta["bfm"] = {"file": bfm_path.name, "sha256": sha256_file(bfm_path)}
    meta.update(extra_meta or {})

    report, labels, alignment, pending = SkipReport(), [], {}, []
    start = time.time()
    workers = default_workers() if workers is None else workers

    def flush(writer: DatasetWriter) -> None:
        # One FR batch: uint8 [B, S, S, 3] -> [B, 3, S, S] in [0, 1] (the release's input range, no normalisation).
        crops = torch.from_numpy(np.stack([p.fr_crop for p in pending])).to(dev)
        with torch.inference_mode():
            coeffs = net(crops.permute(0, 3, 1, 2).float() / 255).float().cpu().numpy()
        for p, c in zip(pending, coeffs, strict=True):
            name = archive_name(p.item.index)
            writer.write(name, p.png)
            labels.append([name, label_row(c)])
            alignment[name] = {"source": p.item.name, "params": p.align_params, "landmarks": p.crop_landmarks}
        pending.clear()

    with (
        DatasetWriter(dest, overwrite) as writer,
        show_progress(total=len(items), unit="img", disable=not progress, desc=f"{mode} -> {Path(dest).name}") as bar,
    ):
        for result in ordered_map(partial(prepare_item, resolution=resolution, fr_size=fr_size), items, workers):
            if isinstance(result, Skipped):
                report.add(result.item.name, result.reason)
            else:
                pending.append(result)
                if len(pending) >= batch_size:
                    flush(writer)
            bar.update(1)
        if pending:
            flush(writer)
        if not labels:
            raise UserError(f"No usable images in {source or 'the source'}: {report.format(limit=5)}")
        meta.update(num_images=len(labels), num_skipped=len(report), skipped=report.skipped)
        writer.write_json("dataset.json", {"labels": labels, "meta": meta})
        writer.write_json("alignment.json", alignment)
    return finish_report(dest, len(labels), report, start)


def finish_report(dest: str | os.PathLike, num_images: int, report: SkipReport, start: float) -> dict[str, Any]:
    """The dict every builder returns: counts, skipped list, wall time and throughput."""
    seconds = time.time() - start
    return {
        "dest": str(dest), "num_images": num_images, "num_skipped": len(report), "skipped": report.skipped,
        "seconds": seconds, "images_per_sec": (num_images + len(report)) / max(seconds, 1e-9),
    }  # fmt: skip


def label_layout() -> dict[str, list[int]]:
    """Coefficient groups of the 257-d label as {name: [start, stop]} (id, exp, tex, angle, gamma, trans)."""
    from deep3drecon.coeffs import COEFF_SLICES

    return {name: [s.start, s.stop] for name, s in COEFF_SLICES.items()}
