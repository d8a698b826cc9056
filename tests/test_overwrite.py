"""Every command that writes a file refuses an output that exists, in one line naming it, before any work, unless
--overwrite is given (torch_utils.outputs). The refusals need no valid network, photo or dataset: they come first."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
import generate
from deep3drecon import reconstruct, train_synthetic_fr
from tests.training.interop.nvidia_fixtures import tiny_networks, write_nvidia_pickle
from torch_utils.outputs import OVERWRITE_HINT
from training.interop import convert_nvidia
from training.networks import Generator
from training.run.snapshot import save_network_snapshot

NET = ["--network", "@net.pt", "--outdir", "@out"]

# command, its arguments ("@name" = tmp_path / name), the output that already exists (under tmp_path).
CASES = {
    "convert_nvidia": (convert_nvidia.main, ["@in.pkl", "@out.pt"], "out.pt"),
    "dataset_tool images": (dataset_tool.cli, ["images", "--source", "@photos", "--dest", "@d.zip"], "d.zip"),
    "dataset_tool ffhq": (dataset_tool.cli, ["ffhq", "--source", "@photos", "--landmarks", "@lm.json", "--dest",
                                             "@d.zip"], "d.zip"),  # fmt: skip
    "dataset_tool synthetic": (dataset_tool.cli, ["synthetic", "--dest", "@d.zip", "--count", "2"], "d.zip"),
    "generate images": (generate.cli, ["images", *NET, "--seeds", "0-3"], "out/grid-seeds0-3.png"),
    "generate vary": (generate.cli, ["vary", *NET, "--seeds", "0", "--attr", "exp"], "out/vary-exp-seed0000.png"),
    "generate resample-z": (generate.cli, ["resample-z", *NET, "--seeds", "0-1", "--z-seeds", "5-6"],
                            "out/resample-z-seeds0-1-z5-6.png"),  # fmt: skip
    "generate resample-p": (generate.cli, ["resample-p", *NET, "--seeds", "0-1", "--p-seeds", "5-6"],
                            "out/resample-p-seeds0-1-p5-6.png"),  # fmt: skip
    "generate reference": (generate.cli, ["reference", *NET, "--images", "@photos", "--seeds", "0-1"],
                           "out/reference-seeds0-1.png"),  # fmt: skip
    "generate style-mix": (generate.cli, ["style-mix", *NET, "--row-seeds", "0-1", "--scale", "coarse"],
                           "out/style-mix-coarse-rows0-1-cols0-1.png"),  # fmt: skip
    "generate feature-derivatives": (generate.cli, ["feature-derivatives", *NET, "--seeds", "3"],
                                     "out/fig2-seed0003.png"),  # fmt: skip
    "generate invert": (generate.cli, ["invert", *NET, "--images", "@photos/me.png"], "out/me-latent.npz"),
    "generate edit": (generate.cli, ["edit", *NET, "--latent", "@out/me-latent.npz", "--attr", "exp"],
                      "out/me-edit-exp.png"),  # fmt: skip
    "deep3drecon.reconstruct": (reconstruct.main, ["--image", "@photos/me.png", "--outdir", "@out"],
                                "out/me_coeffs.npy"),  # fmt: skip
    "deep3drecon.train_synthetic_fr": (train_synthetic_fr.main, ["--data", "@d.zip", "--eval-data", "@d.zip", "--out",
                                                                 "@fr.pth"], "fr.pth"),  # fmt: skip
}


def _absolute(tmp_path, args: list[str]) -> list[str]:
    return [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]  # "@name": a path under tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_every_command_refuses_an_existing_output(tmp_path, name):
    command, args, existing = CASES[name]
    (tmp_path / "photos").mkdir()
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "me.png")
    for needed in ("lm.json", "d.zip", "in.pkl"):  # inputs click checks for existence
        (tmp_path / needed).write_bytes(b"input")
    target = tmp_path / existing
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"precious")
    result = CliRunner().invoke(command, _absolute(tmp_path, args))
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {target} already exists; {OVERWRITE_HINT}\n", result.output
    assert target.read_bytes() == b"precious"


def test_overwrite_replaces_and_convert_never_writes_over_its_source(tmp_path):
    G, D, G_ema, G_kwargs, D_kwargs = tiny_networks(resolution=16)
    pkl, pt = str(tmp_path / "in.pkl"), tmp_path / "out.pt"
    write_nvidia_pickle(pkl, str(tmp_path / "MARKER"), dict(G=G, D=D, G_ema=G_ema), G_kwargs, D_kwargs)
    pt.write_bytes(b"old")
    assert CliRunner().invoke(convert_nvidia.main, [pkl, str(pt), "--overwrite"]).exit_code == 0
    assert torch.load(pt, weights_only=True)["G_kwargs"]["img_resolution"] == 16
    source = tmp_path / "nvidia.pt"  # an NVIDIA pickle under a .pt name, reached as itself, a hard and a soft link
    source.write_bytes(open(pkl, "rb").read())
    os.link(source, tmp_path / "hard.pt")
    os.symlink(source, tmp_path / "soft.pt")
    for dest in ("nvidia.pt", "hard.pt", "soft.pt"):
        result = CliRunner().invoke(convert_nvidia.main, [str(source), str(tmp_path / dest), "--overwrite"])
        assert result.exit_code == 1 and "is the source itself" in result.output, result.output
    assert source.read_bytes() == open(pkl, "rb").read()
    # generate.py: the same grid twice; the second run needs --overwrite and then writes the same bytes again.
    kwargs = dict(z_dim=8, w_dim=16, img_resolution=16, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0), encoder_kwargs=None)
    net = str(tmp_path / "net.pt")
    save_network_snapshot(net, Generator(**kwargs), kwargs, dict(cond=False), 0)
    args = ["images", "--network", net, "--outdir", str(tmp_path / "o"), "--seeds", "0-1", "--device", "cpu",
            "--quiet", "--save-images"]  # fmt: skip
    assert CliRunner().invoke(generate.cli, args).exit_code == 0
    grid = tmp_path / "o" / "grid-seeds0-1.png"
    first = np.asarray(PIL.Image.open(grid))
    grid.write_bytes(b"changed")
    assert CliRunner().invoke(generate.cli, args).exit_code == 1 and grid.read_bytes() == b"changed"
    assert CliRunner().invoke(generate.cli, [*args, "--overwrite"]).exit_code == 0
    assert np.array_equal(np.asarray(PIL.Image.open(grid)), first)
    assert not [n for n in os.listdir(tmp_path / "o") if ".tmp" in n]
