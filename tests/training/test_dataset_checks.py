"""The dataset is checked when it opens: every image header, every label; errors name the file; bad files can be
skipped (and are listed); the zip handle is never shared across a fork; unlabelled folders open for --no-cond."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from training.dataset import ImageLabelDataset


def _png(array: np.ndarray, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="png", **save_kwargs)
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="jpeg")
    return buf.getvalue()


def _rgb(size=8, seed=0, height=None):
    return np.random.default_rng(seed).integers(0, 256, [height or size, size, 3], dtype=np.uint8)


def _write_folder(root, files: dict[str, bytes], labels: dict[str, object] | None) -> str:
    os.makedirs(root, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    if labels is not None:
        with open(os.path.join(root, "dataset.json"), "w") as f:
            json.dump({"labels": [[n, v] for n, v in labels.items()]}, f)
    return str(root)


# Each bad file and the words its error must contain; every other file in the dataset is fine.
_BAD_IMAGES = {
    "truncated.png": (lambda: _png(_rgb())[:-20], "truncated PNG"),
    "truncated.jpg": (lambda: _jpeg(_rgb())[:-30], "truncated JPEG"),
    "gray.png": (lambda: _png(np.zeros([8, 8], np.uint8)), "grayscale"),
    "rgba.png": (lambda: _png(np.zeros([8, 8, 4], np.uint8)), "RGBA"),
    "palette.png": (lambda: _palette_png(), "palette"),
    "deep.png": (lambda: _png(np.zeros([8, 8], np.uint16)), "16-bit"),
    "big.png": (lambda: _png(_rgb(16)), "16x16 but the dataset is 8x8"),
    "wide.png": (lambda: _png(_rgb(16, height=8)), "16x8 is not square"),
    "junk.png": (lambda: b"not an image at all", "not a readable image"),
}


def _palette_png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(_rgb()).convert("P").save(buf, format="png")
    return buf.getvalue()


@pytest.mark.parametrize("bad", sorted(_BAD_IMAGES))
def test_each_bad_image_is_named_at_open(tmp_path, bad):
    make, words = _BAD_IMAGES[bad]
    files = {f"ok{i}.png": _png(_rgb(seed=i)) for i in range(3)} | {bad: make()}
    root = _write_folder(tmp_path / "d", files, {n: [0.0] * 4 for n in files})
    with pytest.raises(UserError, match=f"1 of 4 images cannot be used: {bad}: .*{words}.*--skip-bad-images"):
        ImageLabelDataset(root)
    ds = ImageLabelDataset(root, skip_bad_images=True)
    assert ds.image_names == ["ok0.png", "ok1.png", "ok2.png"] and len(ds.labels) == 3
    assert [name for name, _ in ds.skipped] == [bad] and words.split()[0] in ds.skipped[0][1]


def test_sixteen_bit_rgb_png_is_refused(tmp_path):
    # PIL would silently read a 48-bit RGB PNG as 8-bit RGB; the header's bit depth says 16.
    import zlib

    raw = b"".join(b"\x00" + np.zeros([8, 3], ">u2").tobytes() for _ in range(8))
    chunk = lambda kind, data: (len(data).to_bytes(4, "big") + kind + data
                                + zlib.crc32(kind + data).to_bytes(4, "big"))  # fmt: skip
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (8).to_bytes(4, "big") * 2 + bytes([16, 2, 0, 0, 0]))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip
    assert PIL.Image.open(io.BytesIO(png)).mode in ("RGB", "I;16", "RGB;16")  # what PIL alone would accept
    root = _write_folder(tmp_path / "d", {"a.png": _png(_rgb()), "b.png": png}, {"a.png": [0.0], "b.png": [0.0]})
    with pytest.raises(UserError, match="b.png: 16-bit"):
        ImageLabelDataset(root)


_BAD_LABELS = {
    "nan": ([float("nan")] + [0.0] * 256, "NaN or inf"),
    "inf": ([0.0] * 256 + [float("inf")], "NaN or inf"),
    "huge trans": ([0.0] * 254 + [0.0, 0.0, 1e30], "trans coefficients reach 1e\\+30"),
    "huge id": ([500.0] + [0.0] * 256, "id coefficients reach 500"),
    "string": (["0.5"] + [0.0] * 256, "non-number"),
    "short": ([0.0] * 100, "100 values, the others have 257"),
    "not a list": (3.0, "not a list"),
}


@pytest.mark.parametrize("case", sorted(_BAD_LABELS))
def test_each_bad_label_is_named_at_open(tmp_path, case):
    value, words = _BAD_LABELS[case]
    files = {f"img{i}.png": _png(_rgb(seed=i)) for i in range(4)}
    labels = {n: [0.1] * 257 for n in files}
    labels["img2.png"] = value
    root = _write_folder(tmp_path / "d", files, labels)
    with pytest.raises(UserError, match=f"img2.png: .*{words}"):
        ImageLabelDataset(root)
    ds = ImageLabelDataset(root, skip_bad_images=True)
    assert ds.image_names == ["img0.png", "img1.png", "img3.png"]
    assert ds.labels.shape == (3, 257) and np.isfinite(ds.labels).all() and (ds.labels == np.float32(0.1)).all()


def test_plausible_labels_pass_and_keep_their_values(tmp_path):
    from dataprep.synthetic_scenes import sample_coeffs

    files = {f"img{i}.png": _png(_rgb(seed=i)) for i in range(5)}
    values = {n: sample_coeffs(np.random.default_rng(i)).astype(np.float64).tolist() for i, n in enumerate(files)}
    ds = ImageLabelDataset(_write_folder(tmp_path / "d", files, values))
    np.testing.assert_array_equal(ds.labels, np.asarray([values[n] for n in sorted(files)], np.float32))


def test_unlabelled_folder_and_zip_open_without_labels_only_when_asked(tmp_path):
    files = {f"img{i}.png": _png(_rgb(seed=i)) for i in range(3)}
    root = _write_folder(tmp_path / "d", files, None)
    with pytest.raises(UserError, match="no dataset.json.*--no-cond"):
        ImageLabelDataset(root)
    ds = ImageLabelDataset(root, require_labels=False)
    assert len(ds) == 3 and ds.label_dim == 0 and ds.labels.shape == (3, 0)
    zpath = str(tmp_path / "u.zip")
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"sub/{name}", data)
    ds = ImageLabelDataset(zpath, require_labels=False)
    image, label = ds[1]
    np.testing.assert_array_equal(image, _rgb(seed=1).transpose(2, 0, 1))
    assert label.shape == (0,)


def _child_zip_pid(ds, queue):
    ds._get_zipfile()
    queue.put((ds._zip_pid, os.getpid(), int(ds[0][0].sum())))


def test_zip_handle_is_reopened_in_each_forked_process(tmp_path):
    path = str(tmp_path / "d.zip")
    write_image_dataset(path, num=4, resolution=8)
    ds = ImageLabelDataset(path)
    assert ds._zipfile is None  # nothing left open by __init__ for a fork to inherit
    parent_sum = int(ds[0][0].sum())  # the parent now holds a handle
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_zip_pid, args=(ds, queue))
    child.start()
    zip_pid, child_pid, child_sum = queue.get(timeout=60)
    child.join()
    assert zip_pid == child_pid != os.getpid() and child_sum == parent_sum


def test_forked_loader_workers_read_every_zip_image_intact(tmp_path):
    path = str(tmp_path / "d.zip")
    write_image_dataset(path, num=300, resolution=32)
    ds = ImageLabelDataset(path)
    serial = np.stack([ds[i][0] for i in range(len(ds))])  # parent handle open while the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    parallel = torch.cat([images for images, _ in loader]).numpy()
    np.testing.assert_array_equal(parallel, serial)


def test_dataset_tool_info_lists_bad_images(tmp_path):
    from click.testing import CliRunner

    import dataset_tool

    files = {"a.png": _png(_rgb()), "b.png": _png(np.zeros([8, 8], np.uint8)), "c.png": _png(_rgb(seed=2))}
    labels = {n: [0.0] * 257 for n in files}
    labels["c.png"] = [float("nan")] * 257
    root = _write_folder(tmp_path / "d", files, labels)
    result = CliRunner().invoke(dataset_tool.cli, ["info", root])
    assert result.exit_code == 0, result.output
    assert "1 images" in result.output and "2 image(s) fail" in result.output
    assert "b.png: grayscale" in result.output and "c.png: label holds NaN or inf" in result.output
