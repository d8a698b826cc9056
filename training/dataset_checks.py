"""Checks a dataset passes when it is opened, before any long work: every image's header and every label.

Reading a header costs a few hundred bytes per file (format, mode, size, PNG bit depth, the end-of-file marker
that a truncated PNG or JPEG lacks), so all images are checked up front instead of one failing hours into a run.
Labels are checked once: a list of numbers, one length, finite, and for 257-d 3DMM coefficients within a
plausible range per coefficient group (a 1e30 or NaN label would otherwise train silently on garbage).
Each check returns a one-line reason (or None); the dataset names the file and stops or skips it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import IO, Any

import numpy as np
import PIL.Image

from deep3drecon.coeffs import COEFF_SLICES, NUM_COEFFS
from torch_utils.errors import UserError, first_line

# |value| bounds per group of the 257-d coefficient vector, about 10x the spread real FR labels show: id / exp /
# tex are PCA weights (within a few units), angles radians, gamma SH bands, trans decimetres with the camera 10 dm
# in front of the face (|trans| >= 10 puts the face at or behind the camera).
PLAUSIBLE_ABS: dict[str, float] = {"id": 100.0, "exp": 100.0, "tex": 100.0, "angle": 10.0, "gamma": 20.0,
                                   "trans": 10.0}  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG
JPEG_END = b"\xff\xd9"  # EOI marker (only padding may follow it)

_MODE_PROBLEMS = {"L": "grayscale", "LA": "grayscale with alpha", "1": "1-bit black and white", "P": "palette",
                  "PA": "palette with alpha", "RGBA": "RGBA (has an alpha channel)", "CMYK": "CMYK",
                  "I": "32-bit integer", "F": "32-bit float"}  # fmt: skip


def image_header_problem(f: IO[bytes], file_size: int) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height) or None, reason or None) of one image file from its header and its last bytes.

    f: a seekable binary file positioned at 0; file_size: its length in bytes. Reasons: unreadable, not RGB
    (grayscale, RGBA, palette, ...), 16-bit, truncated. Size checks against the dataset are the caller's.
    """
    head = f.read(32)
    f.seek(0)
    try:
        image = PIL.Image.open(f, formats=("PNG", "JPEG", "WEBP", "BMP"))  # the dataset extensions only
        size, mode, fmt = image.size, image.mode, image.format
    except Exception as e:  # PIL raises many types for a foreign or damaged file
        return None, f"not a readable image ({type(e).__name__}: {first_line(e)})"
    if mode.startswith("I;16") or (fmt == "PNG" and head.startswith(PNG_SIGNATURE) and len(head) > 24
                                   and head[24] == 16):  # fmt: skip
        return size, "16-bit image; save it as 8-bit RGB"
    if mode != "RGB":
        return size, f"{_MODE_PROBLEMS.get(mode, 'mode ' + mode)} image; expected 8-bit RGB"
    if fmt in ("PNG", "JPEG"):
        f.seek(max(file_size - 64, 0))
        tail = f.read()
        complete = tail.endswith(PNG_END) if fmt == "PNG" else JPEG_END in tail
        if not complete:
            return size, f"truncated {fmt} ({file_size} bytes, no end marker)"
    else:  # other formats have no cheap end marker: decode fully
        try:
            image.load()
        except Exception as e:
            return size, f"truncated or damaged {fmt} ({type(e).__name__}: {first_line(e)})"
    return size, None


def check_images(names: list[str], open_file: Callable[[str], IO[bytes]], file_size: Callable[[str], int],
                 progress: bool = False) -> tuple[int, dict[str, str]]:
    """Header-check every image; returns (the dataset's resolution, {name: reason} of the images that fail).

    The resolution is the most common square size, so that one odd file does not make every other file look
    wrong (a requested resolution that differs is the caller's one dataset-level error).
    """
    sizes: dict[str, tuple[int, int]] = {}
    problems: dict[str, str] = {}
    for name in _progress(names, progress, "checking images"):
        try:
            with open_file(name) as f:
                size, reason = image_header_problem(f, file_size(name))
        except OSError as e:
            size, reason = None, f"cannot read ({first_line(e)})"
        if reason is not None:
            problems[name] = reason
        if size is not None:
            sizes[name] = size
    squares = [w for w, h in sizes.values() if w == h]
    values, counts = np.unique(squares, return_counts=True) if squares else (np.array([0]), np.array([1]))
    resolution = int(values[np.argmax(counts)])
    for name, (w, h) in sizes.items():
        if name in problems:
            continue
        if w != h:
            problems[name] = f"{w}x{h} is not square"
        elif w != resolution:
            problems[name] = f"{w}x{h} but the dataset is {resolution}x{resolution}"
    return resolution, problems


def label_problem(label: object, expected_dim: int) -> str | None:
    """Why one dataset.json label vector cannot be used (None if it can): not numbers, wrong length, non-finite,
    or (257-d) a coefficient group outside its plausible range."""
    if not isinstance(label, list):
        return f"label is not a list of numbers ({str(label)[:40]!r})"
    bad = [v for v in label if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        return f"label holds a non-number ({str(bad[0])[:40]!r})"
    if len(label) != expected_dim:
        return f"label has {len(label)} values, the others have {expected_dim}"
    if not all(math.isfinite(v) for v in label):
        return "label holds NaN or inf"
    if expected_dim == NUM_COEFFS:
        problem = coeffs_range_problem(label)
        return f"label's {problem}" if problem else None
    return None


def coeffs_range_problem(p: list[float]) -> str | None:
    """Which coefficient group of one finite 257-d p leaves its plausible range (PLAUSIBLE_ABS), or None."""
    for group, sl in COEFF_SLICES.items():
        worst = max((abs(v) for v in p[sl]), default=0.0)
        if worst > PLAUSIBLE_ABS[group]:
            return (f"{group} coefficients reach {worst:.3g}, outside the plausible +-{PLAUSIBLE_ABS[group]:g} for "
                    "3DMM coefficients")  # fmt: skip
    return None


def check_coeffs(p: Any, what: str) -> np.ndarray:
    """p [..., 257] (array or CPU tensor) as float32 if every vector passes the dataset's label check: finite,
    each group within its plausible range. Otherwise one UserError naming `what`, the vector and the group; for
    p that reach G without a dataset (a --p-bank, a studio upload or slider, an edit, a latent)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != NUM_COEFFS:
        raise UserError(f"{what}: expected 3DMM coefficients [..., {NUM_COEFFS}], got shape {list(p.shape)}")
    rows = p.reshape(-1, NUM_COEFFS)
    finite = np.isfinite(rows).all(axis=1)
    bounds = np.array([PLAUSIBLE_ABS[g] for g in COEFF_SLICES])
    worst = np.stack([np.abs(np.where(np.isfinite(rows[:, sl]), rows[:, sl], 0)).max(axis=1)
                      for sl in COEFF_SLICES.values()], axis=1)  # fmt: skip
    bad = np.flatnonzero(~finite | (worst > bounds).any(axis=1))
    if bad.size:
        k = int(bad[0])
        problem = "holds NaN or inf" if not finite[k] else coeffs_range_problem(rows[k].tolist())
        where = f" (vector {k} of {len(rows)})" if len(rows) > 1 else ""
        raise UserError(f"{what}{where}: {problem}")
    return p.astype(np.float32)


def check_labels(names: list[str], raw: list[object]) -> tuple[np.ndarray, dict[str, str]]:
    """(labels float32 [N, L] with bad rows zeroed, {name: reason} of the bad rows) for dataset.json labels.

    Vectorised when the labels form one numeric array; otherwise every row is diagnosed on its own.
    """
    try:
        array = np.asarray(raw)
        fast = array.ndim == 2 and array.dtype.kind in "fi"
    except ValueError:  # rows of different lengths
        fast = False
    if fast:
        dim = array.shape[1]
        array = array.astype(np.float64)
        ok = np.isfinite(array).all(axis=1)
        if dim == NUM_COEFFS:
            for group, sl in COEFF_SLICES.items():
                ok &= np.abs(np.nan_to_num(array[:, sl], nan=np.inf)).max(axis=1) <= PLAUSIBLE_ABS[group]
        bad_rows = np.flatnonzero(~ok)
    else:
        dim = common_length(raw)
        bad_rows = np.arange(len(raw))  # diagnosed one by one below; the good ones come back None
    problems = {}
    for row in bad_rows.tolist():
        reason = label_problem(raw[row], dim)
        if reason is not None:
            problems[names[row]] = reason
    if fast:
        labels = array.astype(np.float32)
        labels[bad_rows] = 0
        return labels, problems
    labels = np.zeros([len(raw), dim], dtype=np.float32)
    for row, value in enumerate(raw):
        if names[row] not in problems:
            labels[row] = value
    return labels, problems


def common_length(labels: Iterable[object]) -> int:
    """The most common length among the label lists (the one every label must have)."""
    lengths = [len(v) for v in labels if isinstance(v, list)]
    if not lengths:
        return 0
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[np.argmax(counts)])


def format_problems(path: str, problems: dict[str, str], total: int) -> str:
    """One line: how many of `total` items fail, and the first one with its reason."""
    first = sorted(problems)[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{path}: {len(problems)} of {total} images cannot be used: {first}: {problems[first]}{more}"


def file_size_in_dir(root: str) -> Callable[[str], int]:
    """name -> size in bytes of root/name."""
    return lambda name: os.path.getsize(os.path.join(root, name))


def _progress(items: list[str], enabled: bool, desc: str):
    if not enabled or len(items) < 1000:
        return items
    from torch_utils.progress import progress

    return progress(items, desc=desc, unit="img", leave=False)
