"""Image + 3DMM-label datasets: a zip or folder of PNG/JPEG images with `dataset.json` label vectors.

Layout (the StyleGAN2 convention users expect):
    dataset.json = {"labels": [[relative_path, [float, ...]], ...], "meta": {...optional...}}
Images must be square, all of one power-of-two resolution, RGB (grayscale is rejected, not silently converted).
Labels are the 257-d Deep3DFaceRecon coefficient vectors p (any length is accepted; the method checks 257).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator

import numpy as np
import PIL.Image
import torch

from torch_utils.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageLabelDataset(torch.utils.data.Dataset):
    """Reads (image uint8 [C, R, R], label float32 [L]) pairs from a zip file or a folder."""

    def __init__(self, path: str, resolution: int | None = None, max_size: int | None = None,
                 xflip: bool = False) -> None:
        self.path = os.fspath(path)
        self.name = os.path.splitext(os.path.basename(self.path.rstrip("/")))[0]
        self.xflip = xflip
        self._zipfile: zipfile.ZipFile | None = None
        if not os.path.exists(self.path):
            raise UserError(f"dataset not found: {self.path}")
        if os.path.isdir(self.path):
            self._type = "dir"
            all_names = {os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/")
                         for root, _dirs, files in os.walk(self.path) for f in files}
        elif zipfile.is_zipfile(self.path):
            self._type = "zip"
            all_names = set(self._get_zipfile().namelist())
        else:
            raise UserError(f"dataset must be a folder or a .zip file: {self.path}")

        if "dataset.json" not in all_names:
            raise UserError(f"{self.path} has no dataset.json with labels; build datasets with dataset_tool.py")
        with self._open_file("dataset.json") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{self.path}/dataset.json is not valid JSON: {e}") from e
        entries = meta.get("labels") if isinstance(meta, dict) else None
        if not entries:
            raise UserError(f"{self.path}/dataset.json has no 'labels' list")
        self.meta = meta.get("meta", {})
        label_map = {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise UserError(f"{self.path}/dataset.json: bad label entry {str(entry)[:80]}")
            label_map[entry[0].replace("\\", "/")] = entry[1]
        self.image_names = sorted(n for n in label_map if n.lower().endswith(IMAGE_EXTENSIONS))
        missing = [n for n in self.image_names if n not in all_names]
        if missing:
            raise UserError(f"{self.path}: {len(missing)} labelled images are missing, e.g. {missing[0]}")
        if not self.image_names:
            raise UserError(f"{self.path}: dataset.json lists no images")
        if max_size is not None:
            self.image_names = self.image_names[:max_size]
        labels = np.asarray([label_map[n] for n in self.image_names], dtype=np.float32)
        if labels.ndim != 2:
            raise UserError(f"{self.path}: label vectors have different lengths")
        self.labels = labels

        first = self._load_raw_image(0)
        self.num_channels, self.resolution = first.shape[0], first.shape[1]
        if resolution is not None and resolution != self.resolution:
            raise UserError(f"{self.path}: images are {self.resolution}x{self.resolution} but {resolution} "
                            f"was requested ({self.image_names[0]})")
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise UserError(f"{self.path}: resolution {self.resolution} is not a power of two >= 4")

    @property
    def label_dim(self) -> int:
        """Length of one label vector (257 for 3DMM coefficients)."""
        return self.labels.shape[1]

    def _get_zipfile(self) -> zipfile.ZipFile:
        # Opened lazily so that each data-loader worker process gets its own handle.
        if self._zipfile is None:
            self._zipfile = zipfile.ZipFile(self.path)
        return self._zipfile

    def _open_file(self, name: str):
        if self._type == "dir":
            return open(os.path.join(self.path, name), "rb")
        return self._get_zipfile().open(name, "r")

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None)

    def close(self) -> None:
        """Close the zip handle (reopened on demand)."""
        if self._zipfile is not None:
            self._zipfile.close()
            self._zipfile = None

    def _load_raw_image(self, index: int) -> np.ndarray:
        name = self.image_names[index]
        try:
            with self._open_file(name) as f:
                image = np.array(PIL.Image.open(f))
        except Exception as e:
            raise UserError(f"{self.path}: cannot read image {name}: {e}") from e
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{self.path}: {name} has shape {image.shape}; expected RGB (H, W, 3)")
        if image.shape[0] != image.shape[1]:
            raise UserError(f"{self.path}: {name} is {image.shape[1]}x{image.shape[0]}; expected a square image")
        if hasattr(self, "resolution") and image.shape[0] != self.resolution:
            raise UserError(f"{self.path}: {name} is {image.shape[0]}px but the dataset is {self.resolution}px")
        return image.transpose(2, 0, 1)

    def __len__(self) -> int:
        return len(self.image_names) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 [C, R, R] (row 0 = top) and its label float32 [L]. Flipped copies follow the originals."""
        flip, index = divmod(index, len(self.image_names))
        image = self._load_raw_image(index)
        if flip:
            # Mirroring the photo without mirroring p would break the 3DMM condition; off by default.
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.labels[index].copy()


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled index stream, split across ranks; `start` skips what was consumed (for resume)."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0) -> None:
        if dataset_size <= 0:
            raise UserError("dataset is empty")
        self.size, self.rank, self.world_size, self.seed, self.start = dataset_size, rank, world_size, seed, start

    def __iter__(self) -> Iterator[int]:
        # Global position g visits permutation(epoch)[g % size]; rank r takes g = r, r + W, r + 2W, ...
        # A pure function of the position, so resuming at `start` continues the same stream.
        pos = self.start * self.world_size + self.rank
        epoch, perm = -1, None
        while True:
            e, i = divmod(pos, self.size)
            if e != epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                epoch, perm = e, torch.randperm(self.size, generator=gen).tolist()
            yield perm[i]
            pos += self.world_size


def make_loader(dataset: ImageLabelDataset, batch_gpu: int, rank: int, world_size: int, seed: int,
                start: int = 0, workers: int = 3, pin_memory: bool = False) -> Iterator:
    """Endless iterator of (images uint8 [B, C, R, R], labels [B, L]) batches for this rank."""
    sampler = InfiniteSampler(len(dataset), rank, world_size, seed, start)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_gpu, num_workers=workers, pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))  # own generator: leaves the global RNG stream untouched
    return iter(loader)
