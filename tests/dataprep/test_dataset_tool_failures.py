"""dataset_tool.py when writing fails: a full disk (a tiny tmpfs where root may mount one, else a simulated ENOSPC)
is one line, and neither the destination nor a temporary file is left behind."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
from click.testing import CliRunner

import dataset_tool
from dataprep import builder
from deep3drecon.recon_net import ReconNet, save_recon_net
from tests.full_disk import full_disk, no_space  # noqa: F401 (fixture)

FIVE = np.array([[24.0, 28.0], [40.0, 28.0], [32.0, 36.0], [26.0, 44.0], [38.0, 44.0]])  # eyes, nose, mouth corners


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, full_disk, monkeypatch):  # noqa: F811
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        PIL.Image.fromarray(rng.integers(0, 256, [64, 64, 3], dtype=np.uint8)).save(src / f"{name}.png")
        np.savetxt(src / f"{name}.txt", FIVE)
    ckpt = str(tmp_path / "recon.pth")
    save_recon_net(ReconNet("resnet18", input_size=32), ckpt)
    folder = full_disk or tmp_path / "out"
    if full_disk is None:
        folder.mkdir()
        monkeypatch.setattr(builder.DatasetWriter, "write", no_space)
    dest = folder / "faces.zip"
    result = CliRunner().invoke(dataset_tool.cli, ["images", "--source", str(src), "--dest", str(dest), "--resolution",
                                                   "32", "--recon-ckpt", ckpt, "--workers", "0", "--device", "cpu",
                                                   "--no-progress"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith(f"Error: cannot write {dest}: No space left on device")
    assert "Traceback" not in result.output
    assert sorted(os.listdir(folder)) == (["filler"] if full_disk else [])  # no dest, no .faces.zip.*.tmp
