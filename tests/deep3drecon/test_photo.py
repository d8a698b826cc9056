"""deep3drecon.photo, the one photo reader: EXIF orientation (all eight, against numpy's own rotations and flips), the
pixel budget checked from the header before decoding (peak memory measured in a subprocess), one line for empty,
missing and foreign files; and the photo paths that use it (dataset_tool.py images on a rotated and a huge photo)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import PIL.Image
import pytest

from deep3drecon.photo import PHOTO_MAX_PIXELS, read_photo
from tests.deep3drecon.recon_fixtures import HAND_LANDMARKS, needs_detector, run_images_tool
from torch_utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# EXIF orientation k: the displayed (upright) image D from the stored pixels S, written with numpy only.
DISPLAYED = {1: lambda s: s, 2: lambda s: s[:, ::-1], 3: lambda s: s[::-1, ::-1], 4: lambda s: s[::-1],
             5: lambda s: s.transpose(1, 0, 2), 6: lambda s: np.rot90(s, -1), 7: lambda s: np.rot90(s, 2).transpose(
                 1, 0, 2), 8: lambda s: np.rot90(s, 1)}  # fmt: skip
# ... and the stored pixels that display as D (the inverse of each map above).
STORED = {1: lambda d: d, 2: lambda d: d[:, ::-1], 3: lambda d: d[::-1, ::-1], 4: lambda d: d[::-1],
          5: lambda d: d.transpose(1, 0, 2), 6: lambda d: np.rot90(d, 1), 7: lambda d: np.rot90(d.transpose(1, 0, 2),
          2), 8: lambda d: np.rot90(d, -1)}  # fmt: skip


def huge_png(path, width: int = 10000, height: int = 10000) -> None:
    """A valid, complete black RGB PNG of width x height px (~290 KB for 10000 x 10000; 300 MB once decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
    idat = b"".join([packer.compress(row) for _ in range(height)] + [packer.flush()])
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))  # fmt: skip


def _tagged(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format=fmt, exif=exif, **(
        {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))  # fmt: skip
    return buf.getvalue()


def test_the_orientation_maps_are_inverse_pairs():
    upright = np.random.default_rng(0).integers(0, 256, [5, 7, 3], dtype=np.uint8)
    for k in range(1, 9):
        assert np.array_equal(DISPLAYED[k](STORED[k](upright)), upright), k


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_every_exif_orientation_reads_upright(tmp_path, fmt):
    upright = np.zeros([24, 40, 3], np.uint8)  # asymmetric, smooth blocks (JPEG keeps them within a few levels)
    upright[:8, :10] = (250, 30, 30)
    upright[16:, 25:] = (30, 30, 250)
    upright[8:16, :] = (30, 200, 30)
    for k in range(1, 9):
        path = tmp_path / f"k{k}.{fmt.lower()}"
        path.write_bytes(_tagged(STORED[k](upright), k, fmt))
        got = np.asarray(read_photo(path))
        assert got.shape == upright.shape, (k, got.shape)
        err = np.abs(got.astype(int) - upright).max()
        assert err <= (0 if fmt == "PNG" else 12), (k, err)
        if k > 1:  # the reference check can fail: ignoring the tag gives other pixels
            raw = np.asarray(PIL.Image.open(path).convert("RGB"))
            assert raw.shape != upright.shape or np.abs(raw.astype(int) - upright).max() > 100


def test_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(_tagged(np.zeros([64, 64, 3], np.uint8) + 90, 1, "PNG")[:60])
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "pic.gif")  # a real image, but not a photo format we decode
    for name, message in [("empty.png", "cannot read empty.png: the file is empty (0 bytes)"),
                          ("text.jpg", "cannot read text.jpg as an image (UnidentifiedImageError"),
                          ("cut.png", "cannot read cut.png as an image"), ("pic.gif", "cannot read pic.gif"),
                          ("missing.png", "photo not found: missing.png")]:  # fmt: skip
        with pytest.raises(UserError) as info:
            read_photo(tmp_path / name, name)
        assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


_PEAK = r"""
import resource, sys
from deep3drecon.photo import read_photo
from torch_utils.errors import UserError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_photo(sys.argv[1])
    print("READ", 0)
except UserError as e:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, e)
"""


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    huge_png(path)
    return path


def test_a_huge_photo_is_refused_from_its_header(huge):
    assert os.path.getsize(huge) < 400_000 and 10000 * 10000 > PHOTO_MAX_PIXELS
    done = subprocess.run([sys.executable, "-c", _PEAK, str(huge)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)  # fmt: skip
    peak_kb, message = done.stdout.strip().split(" ", 1)
    assert message == (f"cannot read {huge}: 10000x10000 px (100 megapixels) is above the photo budget of 40 "
                       "megapixels; downscale it (e.g. to 4000 px on the long side) and try again")
    assert int(peak_kb) < 20_000  # decoding would take 300 MB (6.5 GB through face detection)


@needs_detector
def test_dataset_tool_reads_a_rotated_photo_upright_and_skips_a_huge_one(tmp_path, huge):
    data = pytest.importorskip("skimage.data")
    src = tmp_path / "photos"
    src.mkdir()
    # Stored lying on its side with orientation 6 ("rotate 90 degrees clockwise to view"), as a phone writes it.
    (src / "astro.jpg").write_bytes(_tagged(STORED[6](data.astronaut()), 6, "JPEG"))
    os.link(huge, src / "huge.png")
    result, dest = run_images_tool(tmp_path, src)
    assert result.exit_code == 0, result.output
    assert "Wrote 1 images" in result.output and "huge.png: cannot read huge.png: 10000x10000 px" in result.output
    # Detected on the upright image: where the hand-placed points are (before: "no face found", photo skipped).
    assert np.abs(np.loadtxt(src / "astro_landmarks.txt") - HAND_LANDMARKS).max() < 4.0
    with zipfile.ZipFile(dest) as zf:
        assert [name for name, _ in json.loads(zf.read("dataset.json"))["labels"]] == ["00000/img00000000.png"]
