"""Landmark files and checks for dataset_tool: 5 or 68 points 'x y' in y-down pixels of the source photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_landmarks_txt(path: str | os.PathLike) -> np.ndarray:
    """Read a landmark file of 5 or 68 rows 'x y' (y-down pixels, space/tab/comma separated) -> float64 [K, 2]."""
    text = Path(path).read_text().replace(",", " ")
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    lm = np.array(rows, dtype=np.float64)
    return check_landmarks(lm)


def check_landmarks(lm: np.ndarray) -> np.ndarray:
    """Validate landmarks: shape [5|68, 2], finite, not all on one point -> float64 [K, 2]; ValueError if not."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68):
        raise ValueError(f"landmarks must be 5 or 68 rows of 'x y', got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN/inf")
    if np.ptp(lm, axis=0).max() < 1e-3:
        raise ValueError("landmarks are degenerate (all at one point)")
    return lm


def landmarks_outside(lm: np.ndarray, width: int, height: int) -> str | None:
    """Why landmarks [5|68, 2] (y-down pixels) do not fit a width x height image, or None if they do.

    The 5 points the alignment uses (eyes, nose tip, mouth corners; from 68 as the alignment reduces them) must lie
    inside the image: outside it the crop shows no face (all black) while FR would still label it.
    """
    from deep3drecon.align import landmarks_68_to_5

    points = np.asarray(landmarks_68_to_5(lm) if len(lm) == 68 else lm, dtype=np.float64)
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    if inside.all():
        return None
    x, y = points[~inside][0]
    return (f"{int((~inside).sum())} of the 5 alignment points lie outside the {width}x{height} image "
            f"(e.g. at {x:.1f}, {y:.1f})")
