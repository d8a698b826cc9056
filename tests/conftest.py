"""Shared fixtures: tiny datasets written in the project's real on-disk layout, and an isolated cache dir."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores shared by 2 xdist workers

# Fixtures shared across test folders (a tiny conditional snapshot with its face model and FR).
pytest_plugins = ["tests.conditional_fixtures"]


def run_training_loop(config, run_dir: str, device: torch.device, resume_state: str | None = None) -> dict:
    """train.py's single-process path: resolve the run's dataset and assets, then run the loop (with --metrics)."""
    from metrics.snapshot_hook import snapshot_hook
    from training.resolve import resolve_run
    from training.training_loop import training_loop

    dataset, assets = resolve_run(config)
    hook = snapshot_hook(config, dataset, assets.recon_ckpt, run_dir, device, rank=0, world_size=1)
    return training_loop(config, run_dir, device, dataset, assets, resume_state=resume_state, snapshot_hook=hook)


def rep_cond(rep: torch.Tensor):
    """A training.condition.Condition carrying a bare rep [N, 9, R, R] (p zeros: the networks read only rep)."""
    from training.condition import Condition

    return Condition(torch.zeros(rep.shape[0], 257, dtype=rep.dtype, device=rep.device), rep)


def write_image_dataset(path: str, num: int = 16, resolution: int = 16, label_dim: int = 257, seed: int = 0,
                        as_zip: bool = True) -> np.ndarray:
    """Write `num` random RGB PNGs + dataset.json labels (zip or folder); returns the labels [num, label_dim]."""
    rng = np.random.default_rng(seed)
    labels = rng.normal(size=[num, label_dim]).astype(np.float32) * 0.1
    entries, files = [], {}
    for i in range(num):
        name = f"{i // 1000:05d}/img{i:08d}.png"
        image = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
        image[: resolution // 2] //= 2  # some structure so that grids are not pure noise
        files[name] = image
        entries.append([name, labels[i].tolist()])
    meta = json.dumps({"labels": entries})
    if as_zip:
        with zipfile.ZipFile(path, "w") as zf:
            for name, image in files.items():
                with zf.open(name, "w") as f:
                    PIL.Image.fromarray(image).save(f, format="png")
            zf.writestr("dataset.json", meta)
    else:
        for name, image in files.items():
            os.makedirs(os.path.join(path, os.path.dirname(name)), exist_ok=True)
            PIL.Image.fromarray(image).save(os.path.join(path, name))
        with open(os.path.join(path, "dataset.json"), "w") as f:
            f.write(meta)
    return labels


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a private asset cache, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("TAXFREE3DMM_CACHE", str(tmp_path_factory.mktemp("cache")))
