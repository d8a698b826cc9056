"""Shared test helpers for the FR and photo tests: random weights with random BN statistics, the astronaut's
hand-placed landmarks, and `dataset_tool.py images` on a folder of photos."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

# Hand-placed on the astronaut photo (512 x 512, from a 4x zoom of the face): eye centres (image left, right), nose
# tip, mouth corners (image left, right); y-down pixels.
HAND_LANDMARKS = np.array([[203.0, 101.3], [247.0, 102.5], [223.8, 126.3], [205.5, 141.3], [243.0, 142.0]])

needs_detector = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                    reason='face detector weights not installed (pip install -e ".[faces]")')


def run_images_tool(tmp_path, source) -> tuple[object, str]:
    """`dataset_tool.py images` on `source` at 32 px with a random-weight FR -> (click result, dest zip path)."""
    from click.testing import CliRunner

    from dataset_tool import cli
    from deep3drecon.recon_net import ReconNet, save_recon_net

    ckpt, dest = str(tmp_path / "recon.pth"), str(tmp_path / "faces.zip")
    save_recon_net(ReconNet("resnet18", input_size=32), ckpt)
    result = CliRunner().invoke(cli, ["images", "--source", str(source), "--dest", dest, "--resolution", "32",
                                      "--recon-ckpt", ckpt, "--workers", "0", "--device", "cpu",
                                      "--no-progress"])  # fmt: skip
    return result, dest


def randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights AND random BN running stats (zero heads / unit stats would hide loading bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.ndim == 4:  # conv weights: He-like scale keeps activations finite through 50 layers
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if name.endswith("bn3.weight") else 0.0))
