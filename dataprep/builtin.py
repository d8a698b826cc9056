"""The smoke preset's built-in data set: synthetic faces made on first use and cached (no download)."""

from __future__ import annotations

import os

from deep3drecon import assets


def builtin_dataset_path(count: int, resolution: int, seed: int = 0, progress: bool = True) -> str:
    """Path of the cached synthetic dataset zip with these settings, building it first if absent."""
    from dataprep.synthetic_scenes import build_synthetic_dataset

    path = os.path.join(assets.cache_dir(), "datasets", f"synthetic-{count}-{resolution}px-seed{seed}.zip")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if progress:
            print(f"Building the built-in synthetic dataset ({count} images at {resolution}px) -> {path}")
        build_synthetic_dataset(path, count=count, resolution=resolution, seed=seed, progress=progress)
    return path
