"""Dataset reading, validation errors that name the file, and the resumable infinite sampler."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import PIL.Image
import pytest

from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from training.dataset import ImageLabelDataset, InfiniteSampler


@pytest.mark.parametrize("as_zip", [True, False])
def test_reads_images_and_labels(tmp_path, as_zip):
    path = str(tmp_path / ("d.zip" if as_zip else "d"))
    labels = write_image_dataset(path, num=5, resolution=8, label_dim=7, as_zip=as_zip)
    ds = ImageLabelDataset(path)
    assert len(ds) == 5 and ds.resolution == 8 and ds.label_dim == 7
    image, label = ds[3]
    assert image.shape == (3, 8, 8) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, labels[3])
    # Pixels equal the PNG as written (channel-first, row 0 = top).
    if as_zip:
        with zipfile.ZipFile(path) as zf, zf.open("00000/img00000003.png") as f:
            ref = np.array(PIL.Image.open(f))
    else:
        ref = np.array(PIL.Image.open(tmp_path / "d" / "00000" / "img00000003.png"))
    np.testing.assert_array_equal(image, ref.transpose(2, 0, 1))


def test_xflip_mirrors_images_after_originals(tmp_path):
    path = str(tmp_path / "d.zip")
    write_image_dataset(path, num=3, resolution=8)
    ds = ImageLabelDataset(path, xflip=True)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds[4][0], ds[1][0][:, :, ::-1])


def test_errors_name_the_offending_file(tmp_path):
    path = tmp_path / "d"
    write_image_dataset(str(path), num=3, resolution=8, as_zip=False)
    PIL.Image.fromarray(np.zeros([16, 16, 3], np.uint8)).save(path / "00000" / "img00000002.png")
    with pytest.raises(UserError, match="img00000002.png: 16x16 but the dataset is 8x8"):
        ImageLabelDataset(str(path))
    PIL.Image.fromarray(np.zeros([8, 8], np.uint8)).save(path / "00000" / "img00000001.png")
    with pytest.raises(UserError, match="2 of 3 images.*img00000001.png: grayscale"):
        ImageLabelDataset(str(path))
    PIL.Image.fromarray(np.zeros([8, 8, 3], np.uint8)).save(path / "00000" / "img00000001.png")
    PIL.Image.fromarray(np.zeros([8, 8, 3], np.uint8)).save(path / "00000" / "img00000002.png")
    with pytest.raises(UserError, match="was requested"):
        ImageLabelDataset(str(path), resolution=32)
    with pytest.raises(UserError, match="not found"):
        ImageLabelDataset(str(tmp_path / "missing.zip"))
    (path / "dataset.json").write_text(json.dumps({"labels": [["00000/nope.png", [1.0]]]}))
    with pytest.raises(UserError, match="nope.png"):
        ImageLabelDataset(str(path))


def test_sampler_splits_ranks_and_resumes():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    size, world = 10, 2
    full = take(InfiniteSampler(size, 0, 1, seed=3), 40)
    # Each epoch is a permutation; ranks interleave the single global stream.
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    r0, r1 = take(InfiniteSampler(size, 0, world, seed=3), 20), take(InfiniteSampler(size, 1, world, seed=3), 20)
    assert r0 == full[0::2] and r1 == full[1::2]
    # Resuming at a per-rank position continues exactly the same stream.
    assert take(InfiniteSampler(size, 1, world, seed=3, start=7), 13) == r1[7:20]




