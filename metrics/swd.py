"""Sliced Wasserstein Distance (SWD) on Laplacian-pyramid patches: the Progressive GAN protocol (Karras et al. 2018).

Protocol (tkarras/progressive_growing_of_gans `metrics/sliced_wasserstein.py`, restated in
shared/reference/tax_measurement.md section 1.2), for two equally large sets of uint8 RGB images [N, 3, R, R]:
1. Pyramid: images as float32 in 0..255; levels R, R/2, ... while >= 16 (`swd_resolutions`). pyr_down = 5x5
   binomial blur ([1,4,6,4,1]^T [1,4,6,4,1] / 256, per channel, mirror borders) then keep rows/cols 0, 2, ...;
   pyr_up = zero-insert to 2x (values at even positions) then the same blur x4. Level i = G_i - pyr_up(G_{i+1}),
   except the last (16 px) level, which is the low-pass image G_last itself.
   "Mirror" is scipy.ndimage's mode: reflect about the edge pixel without repeating it (d c b | a b c d | c b a),
   the same as numpy's 'reflect' and torch's ReflectionPad2d / F.pad(mode="reflect").
2. Descriptors: per image and level, 128 neighbourhoods of 7x7 pixels x 3 channels = 147 values, laid out
   (channel, row, col); centres drawn uniformly with replacement, row and column independently, in [3, S-4].
3. Normalisation: per level and colour channel, subtract the mean and divide by the (population) std taken over
   all descriptors and all 49 positions of ONE set; reals and fakes each use their own statistics.
4. Distance: 4 repeats x 128 directions, each a 147-d Gaussian vector scaled to unit L2 norm; project both sets,
   sort each direction's projections, take the mean absolute difference (1-D W1) over descriptors and directions,
   then the mean over repeats. Reported x1e3 per level, plus "avg" = plain mean over levels.

Deviations, all deliberate: the random draws come from a seeded private generator (the official code uses the
unseeded global numpy RNG), so the same images and seed give the same number on one machine and device; the
draws are independent of batch size and device. A channel whose std is 0 (a constant set) is divided by 1
instead of producing NaN. Values are comparable only at equal image counts: SWD is biased by the number of
descriptors, so always report the real-vs-real floor at the same count (`swd_floor`, the official "Reals2" pass).

Cost (M = N x 128 descriptors per set and level): memory peaks at one level's descriptors of both sets,
2 x M x 147 x 4 B (2 x 1.23 GB for 16384 images, whatever R), plus one batch of images (2^21 pixels per channel)
and projection chunks of at most 2^24 floats per set; the pyramid is recomputed per level from the uint8 images
(about a third of the CPU time at 256 px) so that nothing else grows with N. Time per level: 2 x M x 147 x 512
multiply-adds for the projections and 2 x 512 sorts of M values, O(N log N). Measured CPU time on one core
(AMD EPYC, float32, official settings): 2048 vs 2048 images at 64 px 47 s (peak RSS 1.6 GB incl. ~0.6 GB of Python and
torch), 512 vs 512 at 256 px 27 s; by N log N about 8 min for 16384 at 64 px and 20 min for 16384 at 256 px.
On CUDA the same code runs on the device (torch.sort), not timed here.

Blind spots (measured on synthetic 64 px faces, 512 vs 512, floor avg ~12): a global colour shift (red +20)
stays at the floor, because each set is normalised by its own channel statistics; misplaced global layout is
seen only through the 16 px level (quadrant swap: 16 px 114, avg 59). Pair it with metrics.random_features.
"""

from __future__ import annotations

import numpy as np
import torch

from torch_utils.errors import UserError

NHOOD_SIZE = 7  # 7x7 neighbourhoods
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16  # coarsest pyramid level
_PROJ_ELEMENTS = 1 << 24  # projections held per set at once (64 MiB of float32)
_NORM_ROWS = 1 << 16  # descriptors per chunk when reducing the normalisation statistics in float64
_BATCH_PIXELS = 1 << 21  # default batch: this many pixels per channel (32 images at 256 px, 512 at 64 px)

# Random streams: np.random.default_rng([seed, level, stream]); one stream per set's patch centres, one for the
# directions, so every draw is fixed by (seed, level) and does not depend on the other set or on the batch size.
STREAM_CENTRES_A, STREAM_CENTRES_B, STREAM_DIRECTIONS = 0, 1, 2


def swd_resolutions(size: int) -> list[int]:
    """Pyramid level sizes for square images of `size` px: size, size/2, ... while >= 16 (e.g. 64 -> [64, 32, 16]).

    Raises UserError for images below 16 px or when a level other than the last is odd (pyr_up would not
    restore its size).
    """
    if size < MIN_RESOLUTION:
        raise UserError(f"SWD needs images of at least {MIN_RESOLUTION} px, got {size} px")
    sizes = [size]
    while sizes[-1] // 2 >= MIN_RESOLUTION:
        if sizes[-1] % 2:
            raise UserError(f"SWD needs an image size whose pyramid levels above 16 px are even, got {size} px")
        sizes.append(sizes[-1] // 2)
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# Laplacian pyramid (protocol step 1).


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] float32 -> [B, C, ceil(H/2), ceil(W/2)]: blur, keep even rows/cols (as cv2.pyrDown).

    The 5x5 binomial blur is separable; each 1-D pass computes only the kept outputs (stride 2).
    """
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")  # mirror: c b | a b c d | c b
    t = [x[..., :, j : j + w : 2] for j in range(5)]  # horizontal pass, [1, 4, 6, 4, 1] / 16
    x = ((t[0] + t[4]) + 4 * (t[1] + t[3]) + 6 * t[2]) * 0.0625
    t = [x[..., j : j + h : 2, :] for j in range(5)]  # vertical pass
    return ((t[0] + t[4]) + 4 * (t[1] + t[3]) + 6 * t[2]) * 0.0625


def _upsample_last_axis(x: torch.Tensor) -> torch.Tensor:
    """[..., n] -> [..., 2n]: 1-D zero-insert then [1, 4, 6, 4, 1] / 8 with mirror borders, in polyphase form.

    With u[2i] = x[i], u[2i+1] = 0: out[2i] = (x[i-1] + 6 x[i] + x[i+1]) / 8 and out[2i+1] = (x[i] + x[i+1]) / 2.
    Mirroring u (length 2n) gives x[-1] = u[-2] = u[2] = x[1] on the left but x[n] = u[2n] = u[2n-2] = x[n-1]
    on the right (the edge sample repeated), so the zero-inserted image never has to be built and blurred.
    """
    p = torch.cat([x[..., 1:2], x, x[..., -1:]], dim=-1)
    even = (p[..., :-2] + 6 * p[..., 1:-1] + p[..., 2:]) * 0.125
    odd = (p[..., 1:-1] + p[..., 2:]) * 0.5
    return torch.stack([even, odd], dim=-1).flatten(-2)


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] float32 -> [B, C, 2H, 2W]: zero-insert (values at even positions), blur x4 (as cv2.pyrUp).

    Computed per axis in polyphase form (4x fewer operations than blurring the zero-inserted image; the gain 4
    is 2 per axis); the tests compare it with the direct zero-insert + 5x5 mirror convolution.
    """
    x = _upsample_last_axis(x)  # columns
    return _upsample_last_axis(x.transpose(-1, -2)).transpose(-1, -2)  # rows


def pyramid_level(images: torch.Tensor, level: int, num_levels: int) -> torch.Tensor:
    """Level `level` (0 = finest) of the `num_levels`-level Laplacian pyramid of images [B, C, R, R] float32.

    Returns [B, C, R / 2^level, ...]: the band G_level - pyr_up(G_level+1), or G_level for the last level.
    """
    g = images
    for _ in range(level):
        g = pyr_down(g)
    if level == num_levels - 1:
        return g
    return g - pyr_up(pyr_down(g))


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """All levels of the Laplacian pyramid of images [B, C, R, R] float32 (values 0..255), finest first."""
    levels, g = [], images
    for _ in range(num_levels - 1):
        g_next = pyr_down(g)
        levels.append(g - pyr_up(g_next))
        g = g_next
    return levels + [g]


# ---------------------------------------------------------------------------------------------------------------
# Random draws (seeded; protocol steps 2 and 4).


def patch_centres(seed: int, level: int, stream: int, num_images: int, size: int, per_image: int) -> np.ndarray:
    """Neighbourhood centres int64 [num_images, per_image, 2] as (row, col), each uniform in [3, size - 4]."""
    half = NHOOD_SIZE // 2
    rng = np.random.default_rng([seed, level, stream])
    return rng.integers(half, size - half, size=(num_images, per_image, 2), dtype=np.int64)


def random_directions(
    seed: int, level: int, repeats: int = DIR_REPEATS, per_repeat: int = DIRS_PER_REPEAT, dim: int = 3 * NHOOD_SIZE**2
) -> np.ndarray:
    """Unit projection directions float32 [repeats, dim, per_repeat]: Gaussian columns scaled to L2 norm 1."""
    rng = np.random.default_rng([seed, level, STREAM_DIRECTIONS])
    dirs = rng.standard_normal((repeats, dim, per_repeat))
    return (dirs / np.sqrt(np.square(dirs).sum(axis=1, keepdims=True))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Descriptors and the distance (protocol steps 2-4).


def _descriptors(
    images: torch.Tensor, level: int, num_levels: int, centres: np.ndarray, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Raw descriptors float32 [N * P, 147] on `device`, (channel, row, col) layout, image-major row order.

    images: uint8 [N, 3, R, R] (any device); centres: [N, P, 2] from `patch_centres` at this level's size.
    """
    n, per_image = centres.shape[:2]
    offsets = torch.arange(NHOOD_SIZE, device=device) - NHOOD_SIZE // 2
    centres_t = torch.from_numpy(centres).to(device)
    desc = torch.empty(n * per_image, 3 * NHOOD_SIZE**2, dtype=torch.float32, device=device)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
        band = pyramid_level(batch, level, num_levels).permute(0, 2, 3, 1)  # [B, S, S, 3]
        c = centres_t[start : start + len(batch)]
        rows = (c[..., 0, None] + offsets)[..., :, None]  # [B, P, 7, 1]
        cols = (c[..., 1, None] + offsets)[..., None, :]  # [B, P, 1, 7]
        img = torch.arange(len(batch), device=device)[:, None, None, None]
        patches = band[img, rows, cols]  # [B, P, 7, 7, 3], one gather for the whole batch
        desc[start * per_image : (start + len(batch)) * per_image] = (
            patches.permute(0, 1, 4, 2, 3).flatten(2).flatten(0, 1)
        )
    return desc


def normalise_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """In place: per colour channel, (desc - mean) / std over all rows and 49 positions of this set (step 3).

    desc: float32 [M, 147] in (channel, row, col) layout. Statistics are reduced in float64 (population std).
    """
    view = desc.view(len(desc), 3, NHOOD_SIZE**2)
    count = view.shape[0] * view.shape[2]
    chunks = [view[i : i + _NORM_ROWS] for i in range(0, len(view), _NORM_ROWS)]
    mean = sum(ch.sum(dim=(0, 2), dtype=torch.float64) for ch in chunks) / count
    var = sum(((ch.double() - mean[:, None]) ** 2).sum(dim=(0, 2)) for ch in chunks) / count
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant set: avoid 0/0 (official code gives NaN)
    view.sub_(mean.float()[:, None]).div_(std.float()[:, None])
    return desc


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Sorts each row of x [k, M] float32 ascending; numpy's vectorised sort on the CPU (~4x torch's there)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def sliced_wasserstein(desc_a: torch.Tensor, desc_b: torch.Tensor, dirs: np.ndarray) -> float:
    """Mean over repeats of the mean |sorted(a . u) - sorted(b . u)| over descriptors and directions u (step 4).

    desc_a, desc_b: float32 [M, D] (same M, same device); dirs: float32 [repeats, D, K] unit columns.
    With equal counts the mean over repeats equals the mean over all repeats x K directions.
    """
    if desc_a.shape != desc_b.shape:
        raise ValueError(f"SWD needs equally many descriptors, got {list(desc_a.shape)} and {list(desc_b.shape)}")
    dirs_t = torch.from_numpy(dirs).to(desc_a.device)
    dirs_t = dirs_t.permute(1, 0, 2).reshape(dirs.shape[1], -1)  # [D, repeats * K]
    chunk = max(1, min(dirs_t.shape[1], _PROJ_ELEMENTS // len(desc_a)))
    total = torch.zeros((), dtype=torch.float64, device=desc_a.device)
    for start in range(0, dirs_t.shape[1], chunk):
        u = dirs_t[:, start : start + chunk]
        proj_a = _sort_rows((desc_a @ u).T)  # [k, M], one row per direction
        proj_b = _sort_rows((desc_b @ u).T)
        total += (proj_a - proj_b).abs().sum(dtype=torch.float64)
    return float(total) / (len(desc_a) * dirs_t.shape[1])


# ---------------------------------------------------------------------------------------------------------------
# Public entry points.


def _as_uint8_images(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Validates uint8 [N, 3, R, R] (numpy or torch) and returns a torch view without copying."""
    images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        shape = list(getattr(images, "shape", []))
        raise UserError(f"SWD takes uint8 images [N, 3, H, W] for {what}, got {getattr(images, 'dtype', '?')} {shape}")
    if images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise UserError(f"SWD takes square RGB images [N, 3, R, R] for {what}, got {list(images.shape)}")
    return images


def swd(
    reals: np.ndarray | torch.Tensor,
    fakes: np.ndarray | torch.Tensor,
    seed: int = 0,
    *,
    nhoods_per_image: int = NHOODS_PER_IMAGE,
    dir_repeats: int = DIR_REPEATS,
    dirs_per_repeat: int = DIRS_PER_REPEAT,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[int | str, float]:
    """SWD x1e3 between two image sets, Progressive GAN protocol (module docstring): {R: v, R/2: v, ..., "avg": v}.

    reals, fakes: uint8 [N, 3, R, R] in [0, 255], numpy or torch (any device), the same N and R; quantise fakes
    to uint8 first, as the protocol does ([-1, 1] -> x * 127.5 + 127.5). Keys are the level sizes as ints
    (64 px -> 64, 32, 16) plus "avg" (mean over levels). `seed` fixes the patch centres and directions; the
    defaults are the official 128 neighbourhoods per image and 4 x 128 directions. `batch_size` images are
    filtered at a time on `device` (default: 2^21 pixels per channel, e.g. 32 images at 256 px); the result does
    not depend on it (up to float rounding).
    """
    reals, fakes = _as_uint8_images(reals, "reals"), _as_uint8_images(fakes, "fakes")
    if reals.shape != fakes.shape:
        raise UserError(
            f"SWD compares equally many images of one size, got {list(reals.shape)} and {list(fakes.shape)}"
        )
    resolutions = swd_resolutions(reals.shape[-1])
    batch_size = batch_size or max(1, _BATCH_PIXELS // resolutions[0] ** 2)
    if min(nhoods_per_image, dir_repeats, dirs_per_repeat, batch_size, len(reals)) < 1:
        raise UserError("SWD needs at least one image, neighbourhood, direction and repeat, and batch_size >= 1")
    device = torch.device(device)
    result: dict[int | str, float] = {}
    for level, size in enumerate(resolutions):
        desc = []
        for stream, images in ((STREAM_CENTRES_A, reals), (STREAM_CENTRES_B, fakes)):
            centres = patch_centres(seed, level, stream, len(images), size, nhoods_per_image)
            raw = _descriptors(images, level, len(resolutions), centres, batch_size, device)
            desc.append(normalise_descriptors(raw))
        dirs = random_directions(seed, level, dir_repeats, dirs_per_repeat)
        result[size] = 1e3 * sliced_wasserstein(desc[0], desc[1], dirs)  # reported x1e3, as SWDx1e3_<res>
        del desc
    result["avg"] = float(np.mean([result[size] for size in resolutions]))
    return result


def swd_floor(reals: np.ndarray | torch.Tensor, num_images: int, seed: int = 0, **kwargs) -> dict[int | str, float]:
    """Real-vs-real SWD floor at `num_images` per side: `swd` of two disjoint random draws from `reals`.

    The counterpart of the official second real pass ("Reals2", real_passes=2): report it next to every
    swd(reals, fakes) computed with the same `num_images`. reals: uint8 [>= 2 * num_images, 3, R, R]; the draw
    is seeded by `seed` (which also seeds the SWD itself); kwargs go to `swd`.
    """
    if num_images < 1 or len(reals) < 2 * num_images:
        raise UserError(f"the SWD floor needs 2 x {num_images} distinct real images, have {len(reals)}")
    order = np.random.default_rng([seed, 1 << 20]).permutation(len(reals))[: 2 * num_images]
    first, second = np.sort(order[:num_images]), np.sort(order[num_images:])
    if isinstance(reals, torch.Tensor):
        first, second = torch.from_numpy(first).to(reals.device), torch.from_numpy(second).to(reals.device)
    return swd(reals[first], reals[second], seed, **kwargs)
