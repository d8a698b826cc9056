"""Image grids written during training: reals, and fakes where each row keeps p fixed and each column keeps z.

Grids are GRID_COLS x GRID_ROWS cells and every cell is shown at least MIN_CELL_PX pixels wide: small images are
enlarged by an integer factor with nearest-neighbour upsampling (each pixel becomes a k x k block, so what is shown
is exactly what the network produced, only bigger). `enlarge` does the same for every other figure (generate.py's
grids, edit rows and videos).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch

from torch_utils.misc import quantize_uint8
from training.condition import Condition

GRID_COLS, GRID_ROWS = 8, 8
MIN_CELL_PX = 96


def upscale_factor(size: int, min_cell: int = MIN_CELL_PX) -> int:
    """Integer nearest-neighbour factor that shows a size-px cell at >= min_cell px (1 when already large)."""
    return max(1, math.ceil(min_cell / size))


def enlarge(image: np.ndarray, cell: int, min_cell: int = MIN_CELL_PX) -> np.ndarray:
    """uint8 [H, W, C] made of cell-px tiles -> [kH, kW, C], each pixel a k x k block, k = upscale_factor(cell)."""
    k = upscale_factor(cell, min_cell)
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def save_image_grid(images: np.ndarray | torch.Tensor, path: str, grid_w: int, drange=(-1, 1),
                    min_cell: int = MIN_CELL_PX) -> None:
    """Tile images [N, C, H, W] (N = grid_w * rows, row-major) into one PNG; drange maps to 0..255.

    Cells smaller than min_cell px are enlarged by `upscale_factor` with nearest-neighbour upsampling.
    """
    images = quantize_uint8(images, drange)
    n, c, h, w = images.shape
    grid_h = n // grid_w
    images = images[: grid_w * grid_h].reshape(grid_h, grid_w, c, h, w).transpose(0, 3, 1, 4, 2)
    images = images.reshape(grid_h * h, grid_w * w, c)
    images = enlarge(images, min(h, w), min_cell)  # nearest neighbour: every pixel becomes a k x k block
    PIL.Image.fromarray(images[:, :, 0] if c == 1 else images, "L" if c == 1 else "RGB").save(path)


def grid_size(resolution: int) -> tuple[int, int]:
    """(columns, rows) of the training grids: GRID_COLS x GRID_ROWS at every resolution (cells >= 96 px)."""
    del resolution  # same layout everywhere; the cell size is handled by save_image_grid's upsampling
    return GRID_COLS, GRID_ROWS


@torch.no_grad()
def generate_grid(G: torch.nn.Module, z: torch.Tensor, cond: Condition | None, batch: int) -> torch.Tensor:
    """Fakes for a grid: z [gw, z_dim] per column, cond of gh rows per row -> [gh * gw, 3, R, R] in [-1, 1]."""
    gw, gh = z.shape[0], (len(cond) if cond is not None else 1)
    zs = z.repeat(gh, 1)
    conds = cond.repeat_interleave(gw) if cond is not None else None
    out = []
    for i in range(0, zs.shape[0], batch):
        out.append(G(zs[i : i + batch], conds[i : i + batch] if conds is not None else None, noise_mode="const").cpu())
    return torch.cat(out)
