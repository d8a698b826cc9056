"""Controlled generation with a trained G: the sampling and editing behind generate.py (paper figs. 3, 4, 6, 7, 8).

Every grid is built from cells, each cell one (w+, p, noise seed) triple run through the generator's own seam
    ws = G.mapping(z, cond(p)),  img = G.synthesis(ws, cond(p))      (cond: p and rep(p), training.condition)
so a mode is just a rule for filling the cells:
  images       cell k: z and p from seed k                                        (plain samples)
  vary         row: one base p with one attribute group taken from bank donors    (fig. 3)
  resample-z   row r: p from seed r; column c: z from z-seed c                   (fig. 4)
  resample-p   row r: z from seed r; column c: p from p-seed c                   (fig. 8)
  reference    row r: generated identity; column c: exp, SH light, angles of a real photo via FR   (fig. 6)
  style-mix    row r's w+ with one scale's layers replaced by column c's, p of row r               (fig. 7)
Reproducibility: z for seed s is np.random.RandomState(s).randn(z_dim) (the StyleGAN2 convention), the bank row
for seed s comes from its own seeded stream, and with noise_mode='random' each cell draws its noise under
torch.manual_seed(noise seed); no cell depends on the batch it was computed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deep3drecon.coeffs import ATTRIBUTE_GROUPS, COEFF_SLICES, NUM_COEFFS
from torch_utils.errors import UserError
from torch_utils.misc import quantize_uint8
from torch_utils.outputs import output_file, refuse_existing, save_image
from torch_utils.progress import progress
from training.condition import Condition
from training.dataset_checks import check_coeffs
from training.rep import make_rep, rep_render
from training.run.grids import enlarge

# Attribute groups of p edited by `vary` (identity = id + tex, see deep3drecon.coeffs).
ATTR_GROUPS = ATTRIBUTE_GROUPS
# What `reference` takes from the photo (fig. 6: "expression, illumination, and pose"). Translation stays the base
# face's: for aligned crops it only encodes residual misalignment, not pose.
REFERENCE_GROUPS: tuple[str, ...] = ("exp", "gamma", "angle")
# Style-mixing scales of fig. 7, as inclusive ranges of the resolution a w modulates (upper None = up to R).
STYLE_SCALES: dict[str, tuple[int, int | None]] = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, None)}
# `vary --sweep`: donors from the 2% to the 98% quantile of the group's first varied coefficient (the extremes of a
# bank are often outliers; 2-98% spans +-2 std of a normal prior).
SWEEP_QUANTILES: tuple[float, float] = (0.02, 0.98)
# Seeds one list may name (one image each; grids are further capped by their pixel count in generation.session).
MAX_SEEDS = 100_000
# Separate random streams per purpose, so bank picks never correlate with z of the same seed.
_P_STREAM, _DONOR_STREAM = 1, 2


# ------------------------------------------------------------------------------------------------------------------
# Seeds and coefficient vectors.


def parse_seeds(spec: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (order kept, ranges inclusive); UserError on anything else,
    including a list of more than MAX_SEEDS seeds (counted before any is made)."""
    parts = spec.replace(" ", "").split(",")
    ranges = []
    for part in parts:
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise UserError(f"bad seed list {spec[:80]!r}: use non-negative integers and ranges like '0-31,40'")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise UserError(f"bad seed range {part[:40]!r}: the end is smaller than the start")
        if b >= 2**32:
            raise UserError(f"seed {b} is too large (seeds must be < 2**32)")
        ranges.append((a, b))
    count = sum(b - a + 1 for a, b in ranges)
    if count > MAX_SEEDS:
        raise UserError(f"{spec[:80]!r} names {count} seeds; at most {MAX_SEEDS} per list: split it over several runs")
    return [s for a, b in ranges for s in range(a, b + 1)]


def format_seeds(seeds: Sequence[int]) -> str:
    """Compact file-name tag of a seed list: [0..31, 40] -> '0-31_40' (runs of consecutive seeds as ranges)."""
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    tag = "_".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return tag if len(tag) <= 48 else f"{seeds[0]}-{seeds[-1]}-n{len(seeds)}"  # keep file names sane


def seed_z(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """z [N, z_dim] float32, row k = np.random.RandomState(seeds[k]).randn(z_dim) (StyleGAN2's convention)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds]).astype(np.float32))


def _stream(stream: int, seed: int) -> np.random.RandomState:
    """RandomState for (purpose, seed). Hashed through SeedSequence: RandomState([stream, seed]) itself gives
    neighbouring seeds the same first randint (seeds 0 and 1 picked the same bank row)."""
    return np.random.RandomState(np.random.SeedSequence([stream, seed]).generate_state(1)[0])


def p_index(seed: int, bank_size: int) -> int:
    """Row of the p bank that seed picks: uniform, from its own seeded stream (independent of z and batching)."""
    return int(_stream(_P_STREAM, seed).randint(bank_size))


def bank_p(bank: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """p [N, 257] for seeds: bank [M, 257] rows picked by `p_index`."""
    return bank[[p_index(s, len(bank)) for s in seeds]]


def donor_indices(seed: int, bank_size: int, count: int, exclude: int) -> np.ndarray:
    """count bank rows [count] for `vary` (seeded by seed), avoiding `exclude` (the base) when the bank allows it."""
    rng = _stream(_DONOR_STREAM, seed)
    if bank_size < 2:
        return np.zeros(count, dtype=np.int64)
    # Draw among the M - 1 other rows, then shift past the base: a donor equal to the base would be a no-op column.
    idx = rng.choice(bank_size - 1, size=count, replace=count > bank_size - 1)
    return idx + (idx >= exclude)


def sweep_indices(bank: torch.Tensor, groups: Sequence[str], count: int) -> np.ndarray:
    """count bank rows [count] that sweep `groups` from one end of the bank to the other, in order.

    The rows sit at evenly spaced quantiles (SWEEP_QUANTILES) of the groups' first coefficient that varies in the bank,
    ascending: yaw for angle (pitch comes first but may be constant), face width / the first identity component
    for id, mouth open for the synthetic world's exp. For a PCA model such as the BFM, whose first coefficient has
    the largest variance, that is the bank's main direction of change. A grid's columns then move monotonically
    along it (the donors' other coefficients of the group come along) instead of jumping between random donors.
    """
    cols = torch.cat([bank[:, COEFF_SLICES[g]] for g in groups], dim=1)
    varied = torch.nonzero(cols.std(dim=0) > 0).flatten() if len(bank) > 1 else torch.zeros(0, dtype=torch.int64)
    if len(varied) == 0:
        return np.zeros(count, dtype=np.int64)
    order = torch.argsort(cols[:, varied[0]], stable=True).cpu().numpy()
    return order[np.rint(np.linspace(*SWEEP_QUANTILES, count) * (len(bank) - 1)).astype(np.int64)]


def mix_groups(base: torch.Tensor, donors: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """base [257] or [N, 257], donors [C, 257] -> [C, 257] or [N, C, 257]: base with `groups` copied from donors."""
    out = base[..., None, :].repeat_interleave(len(donors), dim=-2).clone()
    for name in groups:
        out[..., COEFF_SLICES[name]] = donors[:, COEFF_SLICES[name]]
    return out


def ws_resolutions(G: torch.nn.Module) -> list[int]:
    """Per w in w+ [num_ws]: the resolution of the feature map it modulates (the input of its conv / toRGB).

    w k drives synthesis conv k (input size = feat_resolutions[k]) and the toRGB sharing its index, whose input is
    the same size; the last w drives only the final toRGB at R. For 256: [4, 4, 8, 8, 16, 16, ..., 256, 256].
    """
    return [int(r) for r in G.synthesis.feat_resolutions] + [int(G.img_resolution)]


def style_layers(G: torch.nn.Module, scale: str) -> list[int]:
    """Indices into w+ of a fig. 7 scale: coarse 4-8, middle 16-32, fine 64-R (by modulated resolution)."""
    if scale not in STYLE_SCALES:
        raise UserError(f"unknown style-mixing scale {scale!r}; choose one of {', '.join(STYLE_SCALES)}")
    lo, hi = STYLE_SCALES[scale]
    return [k for k, r in enumerate(ws_resolutions(G)) if lo <= r and (hi is None or r <= hi)]


def load_p_bank(path: str) -> torch.Tensor:
    """The p bank [M, 257] float32: a .npy array, or the labels of a dataset zip / folder (ImageLabelDataset)."""
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise UserError(f"p bank not found: {path}")
        try:
            bank = np.load(path, allow_pickle=False)
        except Exception as e:  # not a .npy, truncated, object arrays: one line
            raise UserError(f"cannot read the p bank {path} as a .npy array ({type(e).__name__})") from None
    else:
        from training.dataset import ImageLabelDataset

        bank = ImageLabelDataset(path).labels
    bank = np.asarray(bank, dtype=np.float32)
    if bank.ndim != 2 or bank.shape[0] < 1 or bank.shape[1] != NUM_COEFFS:
        raise UserError(f"{path}: expected 3DMM coefficients [M, {NUM_COEFFS}], got shape {list(bank.shape)}")
    return torch.from_numpy(check_coeffs(bank, f"p bank {path}"))  # finite, each group in the labels' range


# ------------------------------------------------------------------------------------------------------------------
# Running G on cells.


@dataclass
class Tiles:
    """Images [K, 3, R, R] in [-1, 1] and, for conditional G, the shaded render of rep(p) [K, 3, R, R] in [-1, 1]."""

    images: torch.Tensor
    renders: torch.Tensor | None = None


@dataclass
class GridResult:
    """One figure: rows x cols generated cells (row-major, K <= rows * cols), optional header row / column.

    p [K, 257] is the exact coefficient vector each cell was conditioned on (None for an unconditional G); names [K]
    name the per-cell files; col_headers has `cols` tiles, row_headers `rows` tiles.
    """

    rows: int
    cols: int
    cells: Tiles
    names: list[str]
    p: torch.Tensor | None = None
    row_headers: Tiles | None = None
    col_headers: Tiles | None = None


class Sampler:
    """Runs G (and the renderer for rep(p)) on cells in batches; a cell's output never depends on its batch."""

    def __init__(self, G: torch.nn.Module, renderer: torch.nn.Module | None, device: torch.device,
                 truncation_psi: float = 1.0, noise_mode: str = "const", batch: int = 8,
                 progress: bool = True) -> None:  # fmt: skip
        if noise_mode not in ("const", "random", "none"):
            raise UserError(f"noise mode must be const, random or none, not {noise_mode!r}")
        if G.needs and renderer is None:
            raise UserError("a 3DMM-conditional generator needs a renderer for rep(p)")
        self.G, self.renderer, self.device = G, renderer, device
        self.psi, self.noise_mode, self.batch, self.progress = truncation_psi, noise_mode, max(int(batch), 1), progress

    def condition(self, p: torch.Tensor | None) -> Condition | None:
        """The Condition of cells p [N, 257] on the device (rep(p) rendered when first read); None without p."""
        if p is None:
            return None
        size = self.G.img_resolution
        return Condition(p.to(self.device), render=lambda coeffs: make_rep(self.renderer, coeffs, size))

    @torch.no_grad()
    def mapping(self, seeds: Sequence[int], p: torch.Tensor | None = None) -> torch.Tensor:
        """w+ [N, num_ws, w_dim] on device for z of seeds (and cell conditions p [N, 257]), truncated by psi."""
        if self.G.needs and p is None:
            raise UserError("this generator is 3DMM-conditional: every cell needs a p")
        z = seed_z(seeds, self.G.z_dim).to(self.device)
        cond = self.condition(p)
        return torch.cat([self.G.mapping(z[i : i + self.batch], None if cond is None else cond[i : i + self.batch],
                                         self.psi) for i in range(0, len(z), self.batch)])  # fmt: skip

    @torch.no_grad()
    def render(self, p: torch.Tensor) -> torch.Tensor:
        """rep [N, 9, R, R] in [-1, 1] for coefficients p [N, 257]."""
        p = p.to(self.device)
        return torch.cat([make_rep(self.renderer, p[i : i + self.batch], self.G.img_resolution)
                          for i in range(0, len(p), self.batch)])  # fmt: skip

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, p: torch.Tensor | None, noise_seeds: Sequence[int],
                   desc: str = "generating") -> Tiles:  # fmt: skip
        """Cells ws [K, num_ws, w_dim] + p [K, 257] (None if unconditional) -> Tiles on the CPU."""
        if self.G.needs and p is None:
            raise UserError("this generator is 3DMM-conditional: every cell needs a p")
        images, renders = [], []
        starts = range(0, len(ws), self.batch)
        for i in progress(starts, desc=desc, unit="batch", disable=not self.progress or len(starts) < 2):
            ws_b = ws[i : i + self.batch].to(self.device)
            cond = self.condition(None if p is None else p[i : i + self.batch])
            if cond is not None and self.renderer is not None:
                cond.rep  # noqa: B018 - rendered once per batch: the cells below slice it, the tiles show r(p)
            if self.noise_mode == "random":
                # Per-cell seeded noise: torch.randn inside the layers would otherwise tie a cell to its batch.
                imgs = [self._one_random(ws_b[j : j + 1], None if cond is None else cond[j : j + 1], noise_seeds[i + j])
                        for j in range(len(ws_b))]  # fmt: skip
                images.append(torch.cat(imgs).cpu())
            else:
                images.append(self.G.synthesis(ws_b, cond, noise_mode=self.noise_mode).float().cpu())
            if cond is not None and self.renderer is not None:  # r(p) shown beside / above G's image
                renders.append(rep_render(cond.rep).cpu())
        return Tiles(torch.cat(images), torch.cat(renders) if renders else None)

    def _one_random(self, ws: torch.Tensor, cond: Condition | None, seed: int) -> torch.Tensor:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # leave the caller's RNG stream untouched
            torch.manual_seed(seed)
            return self.G.synthesis(ws, cond, noise_mode="random").float()

    def generate(self, seeds: Sequence[int], p: torch.Tensor | None, desc: str = "generating") -> Tiles:
        """G(z(seeds[k]), cond(p[k])) for each k: Tiles of N images."""
        return self.synthesize(self.mapping(seeds, p), p, seeds, desc)


# ------------------------------------------------------------------------------------------------------------------
# The figures.


def _check_bank(G: torch.nn.Module, bank: torch.Tensor | None, mode: str) -> None:
    if not G.needs:
        raise UserError(f"'{mode}' edits the 3DMM coefficients p, but this snapshot is unconditional (uncond); "
                        "use 'images' or 'style-mix'")  # fmt: skip
    if bank is None:
        raise UserError(f"'{mode}' needs a p bank (a dataset's labels or a .npy [M, 257])")


def images_grid(s: Sampler, seeds: Sequence[int], bank: torch.Tensor | None, cols: int) -> GridResult:
    """Plain samples: cell k = G(z(seeds[k]), rep(p(seeds[k]))) laid out `cols` wide (last row may be short)."""
    if s.G.needs and bank is None:
        raise UserError("this snapshot is 3DMM-conditional: images need a p bank")
    p = bank_p(bank, seeds) if s.G.needs else None
    cols = max(1, min(cols, len(seeds)))
    tiles = s.generate(seeds, p)
    return GridResult(math.ceil(len(seeds) / cols), cols, tiles, [f"seed{x:04d}" for x in seeds], p)


def vary_p(bank: torch.Tensor, seed: int, attr: str, count: int, sweep: bool = False) -> torch.Tensor:
    """p [count + 1, 257]: the base p of seed, then the base with ATTR_GROUPS[attr] from `count` donor rows.

    Donors are random rows (seeded by seed), or with `sweep` the same rows for every base, ordered from one end of
    the bank's range to the other (`sweep_indices`).
    """
    if attr not in ATTR_GROUPS:
        raise UserError(f"unknown attribute {attr!r}; choose one of {', '.join(ATTR_GROUPS)}")
    base = p_index(seed, len(bank))
    if sweep:
        donors = bank[sweep_indices(bank, ATTR_GROUPS[attr], count)]
    else:
        donors = bank[donor_indices(seed, len(bank), count, exclude=base)]
    return torch.cat([bank[base : base + 1], mix_groups(bank[base], donors, ATTR_GROUPS[attr])])


def vary_grid(s: Sampler, seed: int, bank: torch.Tensor, attr: str, count: int, sweep: bool = False) -> GridResult:
    """Fig. 3: the cells of `vary_p` (base, then one attribute group from each donor), all with z(seed)."""
    _check_bank(s.G, bank, "vary")
    p = vary_p(bank, seed, attr, count, sweep)
    tiles = s.synthesize(s.mapping([seed] * len(p), p), p, [seed] * len(p), desc=f"vary {attr}")
    return GridResult(1, len(p), tiles, [f"seed{seed:04d}-col{c:02d}" for c in range(len(p))], p)


def resample_z_grid(s: Sampler, seeds: Sequence[int], z_seeds: Sequence[int], bank: torch.Tensor) -> GridResult:
    """Fig. 4: row r keeps p(seeds[r]); column c uses z(z_seeds[c])."""
    _check_bank(s.G, bank, "resample-z")
    p = bank_p(bank, seeds).repeat_interleave(len(z_seeds), dim=0)
    ws = s.mapping(list(z_seeds) * len(seeds), p)
    tiles = s.synthesize(ws, p, list(z_seeds) * len(seeds), desc="resample z")
    names = [f"seed{r:04d}-z{c:04d}" for r in seeds for c in z_seeds]
    return GridResult(len(seeds), len(z_seeds), tiles, names, p)


def resample_p_grid(s: Sampler, seeds: Sequence[int], p_seeds: Sequence[int], bank: torch.Tensor) -> GridResult:
    """Fig. 8: row r keeps z(seeds[r]); column c uses p(p_seeds[c])."""
    _check_bank(s.G, bank, "resample-p")
    p = bank_p(bank, p_seeds).repeat(len(seeds), 1)
    ws = s.mapping([r for r in seeds for _ in p_seeds], p)
    noise_seeds = [r for r in seeds for _ in p_seeds]
    tiles = s.synthesize(ws, p, noise_seeds, desc="resample p")
    names = [f"seed{r:04d}-p{c:04d}" for r in seeds for c in p_seeds]
    return GridResult(len(seeds), len(p_seeds), tiles, names, p)


@torch.no_grad()
def reconstruct(reconstructor: torch.nn.Module, images: torch.Tensor, device: torch.device,
                batch: int = 8) -> torch.Tensor:  # fmt: skip
    """FR on images [C, 3, H, W] in [-1, 1] -> coefficients [C, 257] float32 on the CPU."""
    return torch.cat([reconstructor(images[i : i + batch].to(device)).float().cpu()
                      for i in range(0, len(images), batch)])  # fmt: skip


def reference_grid(s: Sampler, seeds: Sequence[int], bank: torch.Tensor, ref_images: torch.Tensor,
                   ref_p: torch.Tensor, ref_names: Sequence[str]) -> GridResult:  # fmt: skip
    """Fig. 6: row r = generated face of seeds[r]; column c takes REFERENCE_GROUPS from ref_p[c] (FR of photo c).

    ref_images [C, 3, R, R] in [-1, 1] head the columns (beside the render of their reconstruction).
    """
    _check_bank(s.G, bank, "reference")
    base = bank_p(bank, seeds)
    p = mix_groups(base, ref_p.to(base.dtype), REFERENCE_GROUPS).reshape(-1, NUM_COEFFS)
    row_headers = s.generate(seeds, base, desc="identities")
    ws = s.mapping([r for r in seeds for _ in ref_p], p)
    noise_seeds = [r for r in seeds for _ in ref_p]
    tiles = s.synthesize(ws, p, noise_seeds, desc="reference")
    col_headers = Tiles(ref_images.float().cpu(), rep_render(s.render(ref_p)).cpu())
    names = [f"seed{r:04d}-ref-{c}" for r in seeds for c in ref_names]
    return GridResult(len(seeds), len(ref_p), tiles, names, p, row_headers, col_headers)


def style_mix_grid(s: Sampler, row_seeds: Sequence[int], col_seeds: Sequence[int], bank: torch.Tensor | None,
                   layers: Sequence[int], p_seed: int | None = None) -> GridResult:  # fmt: skip
    """Fig. 7: cell (r, c) = w+ of row source r with `layers` taken from column source c, conditioned on row r's p.

    Each source's p comes from its own seed, or all from p_seed (fig. 7 uses one p for every image).
    """
    if s.G.needs and bank is None:
        raise UserError("this snapshot is 3DMM-conditional: style mixing needs a p bank")
    bad = [k for k in layers if not 0 <= k < s.G.num_ws]
    if not layers or bad:
        raise UserError(f"style-mixing layers must be a non-empty subset of 0-{s.G.num_ws - 1}, got {list(layers)}")

    def p_of(seeds: Sequence[int]) -> torch.Tensor | None:
        if not s.G.needs:
            return None
        return bank_p(bank, seeds if p_seed is None else [p_seed] * len(seeds))

    row_p, col_p = p_of(row_seeds), p_of(col_seeds)
    row_ws, col_ws = s.mapping(row_seeds, row_p), s.mapping(col_seeds, col_p)
    row_headers = s.synthesize(row_ws, row_p, row_seeds, desc="source A")
    col_headers = s.synthesize(col_ws, col_p, col_seeds, desc="source B")
    ws = row_ws.repeat_interleave(len(col_seeds), dim=0)
    ws[:, list(layers)] = col_ws.repeat(len(row_seeds), 1, 1)[:, list(layers)]
    p = row_p.repeat_interleave(len(col_seeds), dim=0) if row_p is not None else None
    noise_seeds = [r for r in row_seeds for _ in col_seeds]
    tiles = s.synthesize(ws, p, noise_seeds, desc="style mix")
    names = [f"row{r:04d}-col{c:04d}" for r in row_seeds for c in col_seeds]
    return GridResult(len(row_seeds), len(col_seeds), tiles, names, p, row_headers, col_headers)


# ------------------------------------------------------------------------------------------------------------------
# Writing.


def _tile(tiles: Tiles | None, k: int, show_rep: bool, size: int) -> torch.Tensor:
    """Tile k as [3, R, R] (or [3, R, 2R]: image | render); black when absent."""
    width = 2 * size if show_rep else size
    if tiles is None or k >= len(tiles.images):
        return torch.full([3, size, width], -1.0)
    if not show_rep:
        return tiles.images[k]
    if tiles.renders is None:
        raise UserError("--show-rep needs the rep(p) renders, which only a 3DMM-conditional snapshot has")
    return torch.cat([tiles.images[k], tiles.renders[k]], dim=2)


def compose_grid(result: GridResult, show_rep: bool = False) -> torch.Tensor:
    """The figure as one image [3, H, W] in [-1, 1]: H = (rows + header) R, W = (cols + header) R (x2 with rep)."""
    size = result.cells.images.shape[-1]
    header_row, header_col = result.col_headers is not None, result.row_headers is not None
    rows = []
    if header_row:
        corner = [_tile(None, 0, show_rep, size)] if header_col else []
        rows.append(corner + [_tile(result.col_headers, c, show_rep, size) for c in range(result.cols)])
    for r in range(result.rows):
        head = [_tile(result.row_headers, r, show_rep, size)] if header_col else []
        rows.append(head + [_tile(result.cells, r * result.cols + c, show_rep, size) for c in range(result.cols)])
    return torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> uint8 [H, W, 3] with the project's one quantiser (torch_utils.misc.quantize_uint8)."""
    return quantize_uint8(image.permute(1, 2, 0))


def save_grid(result: GridResult, outdir: str, stem: str, show_rep: bool = False,
              save_images: bool = False, overwrite: bool = False) -> list[str]:  # fmt: skip
    """Write <stem>.png (cells under 96 px enlarged, nearest), <stem>-p.npy ([rows, cols, 257] p per cell, NaN for
    empty cells) and, with save_images, <stem>/<cell name>.png per generated cell at G's resolution -> the paths.
    An existing file is refused (one line, nothing written) unless overwrite (torch_utils.outputs)."""
    grid, p_file = os.path.join(outdir, f"{stem}.png"), os.path.join(outdir, f"{stem}-p.npy")
    cells = [os.path.join(outdir, stem, f"{name}.png") for name in result.names] if save_images else []
    refuse_existing([grid, *([p_file] if result.p is not None else []), *cells], overwrite)
    size = result.cells.images.shape[-1]
    written = [save_image(grid, enlarge(to_uint8(compose_grid(result, show_rep)), size), overwrite)]
    if result.p is not None:
        p = np.full([result.rows * result.cols, NUM_COEFFS], np.nan, dtype=np.float32)
        p[: len(result.p)] = result.p.cpu().numpy()
        with output_file(p_file, overwrite) as f:
            np.save(f, p.reshape(result.rows, result.cols, NUM_COEFFS))
        written.append(p_file)
    for k, path in enumerate(cells):
        written.append(save_image(path, to_uint8(result.cells.images[k]), overwrite))  # the sample alone
    return written
