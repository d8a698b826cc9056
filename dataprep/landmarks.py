"""dataset_tool's landmark check beyond deep3drecon.landmarks' reader: the alignment points must lie in the photo."""

from __future__ import annotations

import numpy as np


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
