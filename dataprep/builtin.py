"""The smoke preset's built-in world, made on first use and cached (no download): dataset and synthetic FR.

Both come from the same synthetic world (dataprep.synthetic_scenes on the synthetic face model of
deep3drecon.synthetic) with disjoint seeds: the GAN's dataset uses its config's seed (0), the FR trains on the
images of world seed FR_TRAIN_SEED and is scored on those of FR_HELD_OUT_SEED. Each asset is built once under a
file lock (deep3drecon.assets.cached_build): a second process waits for the first instead of building its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deep3drecon import assets

FR_RESOLUTION = 32  # the smoke resolution; FaceReconstructor resizes other inputs to it
FR_TRAIN_IMAGES, FR_HELD_OUT_IMAGES = 8000, 400
FR_TRAIN_SEED, FR_HELD_OUT_SEED = 1_000_001, 1_000_002


def builtin_dataset_path(count: int, resolution: int, seed: int = 0, progress: bool = True) -> str:
    """Path of the cached synthetic dataset zip with these settings, building it first if absent."""
    from dataprep.synthetic_scenes import build_synthetic_dataset

    version = assets.SYNTHETIC_FR_VERSION  # the images depend on the face model version
    dest = Path(assets.cache_dir()) / "datasets" / f"synthetic-v{version}-{count}-{resolution}px-seed{seed}.zip"

    def build(tmp: Path) -> None:
        build_synthetic_dataset(tmp, count=count, resolution=resolution, seed=seed, progress=progress,
                                face_model_path=assets.synthetic_face_model_path(progress=progress))

    what = f"the built-in synthetic dataset ({count} images at {resolution}px)"
    return os.fspath(assets.cached_build(dest, build, what, progress))


def builtin_recon_path(progress: bool = True) -> Path:
    """Path of the cached synthetic FR (epoch_20.pth layout, input 32 px), trained first if absent.

    Its held-out errors are written next to it as <name>.json (deep3drecon.train_synthetic_fr.format_errors).
    """
    dest = assets.synthetic_recon_file()

    def build(tmp: Path) -> None:
        from dataprep.synthetic_scenes import render_scene_arrays
        from deep3drecon.train_synthetic_fr import FRTrainingSet, SyntheticFRConfig, train_synthetic_fr

        fm_path = assets.synthetic_face_model_path(progress=progress)
        # In this process (workers=0): composing a 32-px scene takes a fifth of rendering it, less than a worker
        # pool's transfers cost (docs/benchmarks.md, Quick start). The images are the same either way.
        train = render_scene_arrays(FR_TRAIN_IMAGES, FR_RESOLUTION, FR_TRAIN_SEED, progress, face_model_path=fm_path,
                                    workers=0)
        held_out = render_scene_arrays(FR_HELD_OUT_IMAGES, FR_RESOLUTION, FR_HELD_OUT_SEED, progress,
                                       face_model_path=fm_path, workers=0)
        cfg = SyntheticFRConfig(backbone=assets.SYNTHETIC_FR_BACKBONE)
        result = train_synthetic_fr(cfg, FRTrainingSet.from_uint8(*train),
                                    FRTrainingSet.from_uint8(held_out[0], None, held_out[2]), out=tmp,
                                    progress=progress)
        dest.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    return assets.cached_build(dest, build, "the synthetic face reconstructor", progress)
