"""Landmarks for a folder of photos that lack landmark files: the offline face detector fills them in.

`dataset_tool.py images` calls `detect_missing_landmarks` after listing the folder: photos with `<stem>.txt` (or a
`<stem>_landmarks.txt` from an earlier run) keep their points, the others are run through
`deep3drecon.landmarks` (largest face) and their five points are written beside the photo as
`<stem>_landmarks.txt`. Photos without a face, or all unlabelled photos when the `faces` extra is missing, carry a
skip reason that the builder reports at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dataprep.builder import SourceItem
from torch_utils.errors import UserError
from torch_utils.progress import progress as show_progress


def detect_missing_landmarks(items: list[SourceItem], device: str = "auto", progress: bool = True,
                             log: Callable[[str], None] = print) -> int:  # fmt: skip
    """Run the face detector on items without a landmark file (in place); returns how many were missing.

    Detected points (largest face) are written beside the photo as `<stem>_landmarks.txt` and used; a photo
    without a face gets a skip reason. Needs the `faces` extra only when some photo lacks landmarks.
    """
    missing = [it for it in items if it.landmarks is None and not (it.landmarks_path and os.path.isfile(
        it.landmarks_path))]  # fmt: skip
    if not missing:
        return 0
    from deep3drecon.landmarks import NoFaceError, detect_landmarks, load_face_detector, write_landmarks
    from deep3drecon.photo import read_photo
    from torch_utils.misc import pick_device

    try:
        detector = load_face_detector(pick_device(device))
    except UserError as exc:  # no detector installed: those photos are skipped, the rest still build
        log(f"{len(missing)} photo(s) have no landmark file and will be skipped: {exc}")
        for it in missing:
            it.skip_reason = f"no landmarks ({it.landmarks_path})"
        return len(missing)
    log(f"{len(missing)} photo(s) have no landmark file; detecting faces (largest face per photo).")
    several = 0
    for it in show_progress(missing, unit="img", desc="detecting faces", disable=not progress):
        try:
            lm, count = detect_landmarks(read_photo(it.image_path, it.name), detector, it.name)
        except NoFaceError:
            it.skip_reason = "no landmarks file and no face found by the detector"
            continue
        except UserError as exc:  # unreadable or above the pixel budget: the same wording as the decode step
            it.skip_reason = str(exc)
            continue
        path = Path(it.image_path)
        it.landmarks_path = str(write_landmarks(path.with_name(f"{path.stem}_landmarks.txt"), lm))
        it.landmarks = lm.tolist()
        several += count > 1
    if several:
        log(f"{several} photo(s) showed several faces; the largest was used (see the *_landmarks.txt files).")
    return len(missing)
