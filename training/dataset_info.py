"""`dataset_tool.py info`: what a dataset holds, and every image or label that fails the training-time check."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dataprep.builder import label_layout, to_jsonable
from training.dataset import ImageLabelDataset


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a dataset zip/folder: image count, resolution, label dim, per-group label statistics."""
    # Every image header and label is checked as training would; bad ones are listed here instead of stopping.
    ds = ImageLabelDataset(os.fspath(path), require_labels=False, skip_bad_images=True, progress=True)
    labels = ds.labels.astype(np.float64)
    groups: dict[str, dict[str, float]] = {}
    if labels.shape[1] == 257:
        for name, (a, b) in label_layout().items():
            g = labels[:, a:b]
            # mean_dim_std: the spread of each coefficient, averaged over the group's dimensions.
            groups[name] = {
                "dims": b - a, "mean": g.mean(), "std": g.std(), "min": g.min(), "max": g.max(),
                "mean_dim_std": g.std(axis=0).mean(),
            }  # fmt: skip
    meta = ds.meta if isinstance(ds.meta, dict) else {}
    info = {
        "path": str(path), "num_images": len(ds.image_names), "resolution": ds.resolution,
        "channels": ds.num_channels, "label_dim": ds.label_dim, "label_stats": groups, "mode": meta.get("mode"),
        "tool_version": meta.get("tool_version"), "num_skipped": meta.get("num_skipped"),
        "bad_images": [{"name": name, "reason": reason} for name, reason in ds.skipped],
    }  # fmt: skip
    ds.close()
    return to_jsonable(info)


def format_info(info: dict[str, Any]) -> str:
    """Human-readable table of `dataset_info` output."""
    lines = [
        f"{info['path']}: {info['num_images']} images, {info['resolution']}x{info['resolution']}x"
        f"{info['channels']}, label dim {info['label_dim']}"
        + (f", built by mode '{info['mode']}' (tool {info['tool_version']})" if info.get("mode") else "")
    ]
    if info["label_stats"]:
        lines.append(f"{'group':<6} {'dims':>4} {'mean':>9} {'std':>9} {'min':>9} {'max':>9} {'dim-std':>9}")
        for name, s in info["label_stats"].items():
            lines.append(
                f"{name:<6} {s['dims']:>4} {s['mean']:>9.4f} {s['std']:>9.4f} {s['min']:>9.4f} "
                f"{s['max']:>9.4f} {s['mean_dim_std']:>9.4f}"
            )
    bad = info.get("bad_images") or []
    if bad:
        lines.append(f"{len(bad)} image(s) fail the check training runs (train.py stops, or leaves them out with "
                     "--skip-bad-images):")  # fmt: skip
        lines += [f"  {b['name']}: {b['reason']}" for b in bad[:20]]
        lines += [f"  ... and {len(bad) - 20} more"] if len(bad) > 20 else []
    else:
        lines.append("All images and labels pass the training-time check.")
    return "\n".join(lines)
