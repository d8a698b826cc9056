"""Image grids written during training: reals, and fakes where each row keeps p fixed and each column keeps z."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from torch_utils.misc import quantize_uint8


def save_image_grid(images: np.ndarray | torch.Tensor, path: str, grid_w: int, drange=(-1, 1)) -> None:
    """Tile images [N, C, H, W] (N = grid_w * rows, row-major) into one PNG; drange maps to 0..255."""
    images = quantize_uint8(images, drange)
    n, c, h, w = images.shape
    grid_h = n // grid_w
    images = images[: grid_w * grid_h].reshape(grid_h, grid_w, c, h, w).transpose(0, 3, 1, 4, 2)
    images = images.reshape(grid_h * h, grid_w * w, c)
    PIL.Image.fromarray(images[:, :, 0] if c == 1 else images, "L" if c == 1 else "RGB").save(path)


def grid_size(resolution: int) -> tuple[int, int]:
    """(columns, rows) like StyleGAN2: about a 4K canvas, 7..32 columns and 4..32 rows."""
    return int(np.clip(7680 // resolution, 7, 32)), int(np.clip(4320 // resolution, 4, 32))


@torch.no_grad()
def generate_grid(G: torch.nn.Module, z: torch.Tensor, rep: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Fakes for a grid: z [gw, z_dim] per column, rep [gh, 9, R, R] per row -> [gh * gw, 3, R, R] in [-1, 1]."""
    gw, gh = z.shape[0], (rep.shape[0] if rep is not None else 1)
    zs = z.repeat(gh, 1)
    reps = rep.repeat_interleave(gw, dim=0) if rep is not None else None
    out = []
    for i in range(0, zs.shape[0], batch):
        out.append(G(zs[i : i + batch], reps[i : i + batch] if reps is not None else None, noise_mode="const").cpu())
    return torch.cat(out)
