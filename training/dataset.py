"""Image + 3DMM-label datasets: a zip or folder of PNG/JPEG images with `dataset.json` label vectors.

Layout (the StyleGAN2 convention users expect):
    dataset.json = {"labels": [[relative_path, [float, ...]], ...], "meta": {...optional...}}
Images must be square, all of one power-of-two resolution, 8-bit RGB (grayscale, RGBA, palette and 16-bit images
are rejected, not silently converted). Labels are the 257-d Deep3DFaceRecon coefficient vectors p (any one length
is accepted; the method checks 257). A folder or zip without dataset.json opens with require_labels=False (the
unconditional baseline, like StyleGAN2-ADA's unlabelled datasets).
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from collections.abc import Iterator

import numpy as np
import PIL.Image
import torch

from torch_utils.errors import UserError, first_line
from training import dataset_checks as checks

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageLabelDataset(torch.utils.data.Dataset):
    """Reads (image uint8 [C, R, R], label float32 [L]) pairs from a zip file or a folder.

    Opening checks every image header and every label (training.dataset_checks) and stops with one line naming
    the first bad file, or, with skip_bad_images, leaves the bad files out and lists them in `skipped`.
    require_labels=False (the unconditional baseline) also opens a plain folder / zip of images without
    dataset.json; its labels are then [N, 0]. check_images=False skips the header pass (for a second opening of
    a dataset already checked). The zip is opened lazily in each process, never shared across a fork.
    """

    def __init__(self, path: str, resolution: int | None = None, max_size: int | None = None,
                 xflip: bool = False, *, require_labels: bool = True, skip_bad_images: bool = False,
                 check_images: bool = True, progress: bool = False) -> None:  # fmt: skip
        self.path = os.fspath(path)
        self.name = os.path.splitext(os.path.basename(self.path.rstrip("/")))[0]
        self.xflip = xflip
        self._zipfile: zipfile.ZipFile | None = None
        self._zip_pid = -1
        self._zip_sizes: dict[str, int] = {}
        self.meta: dict = {}
        if not os.path.exists(self.path):
            raise UserError(f"dataset not found: {self.path}")
        if os.path.isdir(self.path):
            self._type = "dir"
            all_names = {os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/")
                         for root, _dirs, files in os.walk(self.path) for f in files}
        elif zipfile.is_zipfile(self.path):
            self._type = "zip"
            self._zip_sizes = {info.filename: info.file_size for info in self._get_zipfile().infolist()}
            all_names = set(self._zip_sizes)
        else:
            raise UserError(f"dataset must be a folder or a .zip file: {self.path}")
        try:
            names, raw_labels = self._read_label_entries(all_names, require_labels)
            problems: dict[str, str] = {}
            if max_size is not None:
                names, raw_labels = names[:max_size], raw_labels[:max_size]
            labels, label_problems = checks.check_labels(names, raw_labels)
            problems.update(label_problems)
            if check_images:
                size_of = self._zip_sizes.__getitem__ if self._type == "zip" else checks.file_size_in_dir(self.path)
                self.resolution, image_problems = checks.check_images(names, self._open_file, size_of, progress)
                problems.update(image_problems)
        finally:
            self.close()  # a handle opened here must not be inherited by forked loader workers
        self.skipped = sorted(problems.items())
        if problems and not skip_bad_images:
            raise UserError(checks.format_problems(self.path, problems, len(names))
                            + "; fix or remove them, or pass --skip-bad-images to leave them out")  # fmt: skip
        keep = [i for i, n in enumerate(names) if n not in problems]
        if not keep:
            raise UserError(f"{self.path}: none of its {len(names)} images can be used "
                            f"({checks.format_problems(self.path, problems, len(names))})")  # fmt: skip
        self.image_names = [names[i] for i in keep]
        self.labels = labels[keep]
        if not check_images:
            self.resolution = self._load_raw_image(0).shape[1]
            self.close()
        self.num_channels = 3
        if resolution is not None and resolution != self.resolution:
            raise UserError(f"{self.path}: images are {self.resolution}x{self.resolution} but {resolution} "
                            f"was requested ({self.image_names[0]})")
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise UserError(f"{self.path}: resolution {self.resolution} is not a power of two >= 4")

    def _read_label_entries(self, all_names: set[str], require_labels: bool) -> tuple[list[str], list[object]]:
        """(sorted image names, their raw label lists) from dataset.json, or every image with [] labels."""
        if "dataset.json" not in all_names:
            if require_labels:
                raise UserError(f"{self.path} has no dataset.json with labels; build datasets with dataset_tool.py "
                                "(the unconditional baseline, --no-cond, trains without labels)")  # fmt: skip
            names = sorted(n for n in all_names if n.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise UserError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
            return names, [[] for _ in names]
        with self._open_file("dataset.json") as f:
            try:
                meta = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{self.path}/dataset.json is not valid JSON: {e}") from e
        entries = meta.get("labels") if isinstance(meta, dict) else None
        if not entries or not isinstance(entries, list):
            raise UserError(f"{self.path}/dataset.json has no 'labels' list")
        self.meta = meta.get("meta", {})
        label_map = {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise UserError(f"{self.path}/dataset.json: bad label entry {str(entry)[:80]}; expected "
                                "[relative_path, [numbers]]")  # fmt: skip
            label_map[entry[0].replace("\\", "/")] = entry[1]
        names = sorted(n for n in label_map if n.lower().endswith(IMAGE_EXTENSIONS))
        missing = [n for n in names if n not in all_names]
        if missing:
            raise UserError(f"{self.path}: {len(missing)} labelled images are missing, e.g. {missing[0]}")
        if not names:
            raise UserError(f"{self.path}: dataset.json lists no images")
        return names, [label_map[n] for n in names]

    @property
    def label_dim(self) -> int:
        """Length of one label vector (257 for 3DMM coefficients)."""
        return self.labels.shape[1]

    def _get_zipfile(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited through fork shares its file offset with the parent, so
        # concurrent reads in loader workers interleave and fail with "Bad CRC-32".
        if self._zipfile is None or self._zip_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zipfile

    def _open_file(self, name: str):
        if self._type == "dir":
            return open(os.path.join(self.path, name), "rb")
        return self._get_zipfile().open(name, "r")

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None)

    def close(self) -> None:
        """Close the zip handle (reopened on demand)."""
        if self._zipfile is not None and self._zip_pid == os.getpid():
            self._zipfile.close()
        self._zipfile = None

    def _load_raw_image(self, index: int) -> np.ndarray:
        name = self.image_names[index]
        try:
            with self._open_file(name) as f:
                image = np.array(PIL.Image.open(f))
        except Exception as e:
            raise UserError(f"{self.path}: cannot read image {name}: {first_line(e)}") from e
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{self.path}: {name} has shape {image.shape}; expected RGB (H, W, 3)")
        if image.shape[0] != image.shape[1]:
            raise UserError(f"{self.path}: {name} is {image.shape[1]}x{image.shape[0]}; expected a square image")
        if hasattr(self, "resolution") and image.shape[0] != self.resolution:
            raise UserError(f"{self.path}: {name} is {image.shape[0]}px but the dataset is {self.resolution}px")
        return image.transpose(2, 0, 1)

    def __len__(self) -> int:
        return len(self.image_names) * (2 if self.xflip else 1)

    def without_xflip(self) -> ImageLabelDataset:
        """The same images and labels (same skipped files, no re-check), without the mirrored copies; own zip handle."""
        view = copy.copy(self)
        view.xflip, view._zipfile, view._zip_pid = False, None, -1
        return view

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
