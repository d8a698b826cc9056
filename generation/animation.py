"""Animated attribute sweeps (`generate.py vary --video`): p moves from donor to donor and G's face follows.

The key frames are the cells of a `vary` grid (generation.controlled.vary_p): the base face, then the base with one
attribute group taken from each donor. Between two key frames p moves linearly in `tween` steps, and the last key
frame leads back to the first, so the animation loops. Each frame holds one row per seed, G's image beside the
shaded render r(p) of the p it was conditioned on, enlarged like every grid (nearest neighbour, cells >= 96 px).
z (and, with --noise-mode random, the noise) is the seed's in every frame: only p changes. Key frames stay on
screen KEY_HOLD frames long. Written as a GIF (Pillow, one palette for all frames so nothing flickers) or, with the
`video` extra (imageio-ffmpeg), as an H.264 MP4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from generation.controlled import Sampler, format_seeds, to_uint8, vary_p
from torch_utils.errors import UserError
from torch_utils.outputs import output_file, refuse_existing
from training.run.grids import enlarge

VIDEO_FORMATS: tuple[str, ...] = ("gif", "mp4")
KEY_HOLD = 4  # a key frame (a donor's exact p) is shown for this many frame durations
PALETTE_SAMPLE = 1 << 22  # pixels the GIF palette is computed from
VIDEO_HINT = 'MP4 needs imageio-ffmpeg: pip install -e ".[video]" (or write a GIF: --video gif)'


@dataclass
class Animation:
    """frames uint8 [F, H, W, 3] (enlarged), p [F, S, 257] of every frame and seed, is_key [F] (a vary cell's p)."""

    frames: np.ndarray
    p: torch.Tensor
    is_key: np.ndarray


def check_format(fmt: str) -> None:
    """Before any work: the format is known and its writer installed (UserError with the install line if not)."""
    if fmt not in VIDEO_FORMATS:
        raise UserError(f"unknown video format {fmt!r}; choose one of {', '.join(VIDEO_FORMATS)}")
    if fmt == "mp4":
        _imageio_ffmpeg()


def interpolate(keys: torch.Tensor, tween: int) -> torch.Tensor:
    """keys [K, D] -> [K * (tween + 1), D]: key k, then `tween` evenly spaced points towards key k + 1 (the last key
    towards key 0). Frame k * (tween + 1) is key k exactly; coefficients equal in both keys stay bit-identical."""
    if tween < 0:
        raise UserError(f"--tween must be >= 0, got {tween}")
    t = torch.arange(tween + 1, dtype=keys.dtype) / (tween + 1)
    step = keys.roll(-1, dims=0) - keys
    return (keys[:, None] + step[:, None] * t[None, :, None]).reshape(-1, keys.shape[-1])


def vary_animation(s: Sampler, seeds: Sequence[int], bank: torch.Tensor | None, attr: str, count: int,
                   sweep: bool = False, tween: int = 7) -> Animation:  # fmt: skip
    """Frames of `vary` for seeds (one row each): the base and `count` donors as key frames, p interpolated between."""
    if not s.G.needs or bank is None:
        raise UserError("'vary --video' edits the 3DMM coefficients p: it needs a 3DMM-conditional snapshot")
    rows, ps = [], []
    for seed in seeds:
        p = interpolate(vary_p(bank, seed, attr, count, sweep), tween)
        tiles = s.synthesize(s.mapping([seed] * len(p), p), p, [seed] * len(p), desc=f"video {attr} seed {seed}")
        rows.append(torch.cat([tiles.images, tiles.renders], dim=3))  # [F, 3, R, 2R]: G's image | r(p)
        ps.append(p)
    size = s.G.img_resolution
    frames = np.stack([enlarge(to_uint8(frame), size) for frame in torch.cat(rows, dim=2)])
    is_key = np.arange(len(frames)) % (tween + 1) == 0
    return Animation(frames, torch.stack(ps, dim=1), is_key)


def video_stems(outdir: str, seeds: Sequence[int], attrs: Sequence[str], fmt: str,
                overwrite: bool = False) -> dict[str, str]:  # fmt: skip
    """{attr: outdir/vary-<attr>-seeds<S>} for `vary --video`, after checking (before any work) that the format's
    writer is installed and that none of the outputs (<stem>.<fmt>, <stem>-p.npy) exists, unless overwrite."""
    check_format(fmt)
    stems = {attr: os.path.join(outdir, f"vary-{attr}-seeds{format_seeds(seeds)}") for attr in attrs}
    refuse_existing([f"{stem}{suffix}" for stem in stems.values() for suffix in (f".{fmt}", "-p.npy")], overwrite)
    return stems


def save_vary_videos(s: Sampler, bank: torch.Tensor | None, stems: dict[str, str], seeds: Sequence[int], count: int,
                     sweep: bool, fmt: str, tween: int, fps: float, log: Callable[[str], None] = print,
                     overwrite: bool = False) -> None:  # fmt: skip
    """Per attr of `stems` (from video_stems): <stem>.<fmt> and <stem>-p.npy (p [frames, seeds, 257] of each frame)."""
    for attr, stem in stems.items():
        anim = vary_animation(s, seeds, bank, attr, count, sweep, tween)
        path = write_video(anim, f"{stem}.{fmt}", fps, overwrite)
        with output_file(f"{stem}-p.npy", overwrite) as f:
            np.save(f, anim.p.cpu().numpy())
        h, w = anim.frames.shape[1:3]
        log(f"wrote {path} ({len(anim.frames)} frames of {w}x{h} px, {anim.is_key.sum()} donors held) + -p.npy")


def write_video(anim: Animation, path: str, fps: float, overwrite: bool = False) -> str:
    """anim -> path (.gif or .mp4), written to a temp file and renamed; an existing file is replaced only with
    overwrite (torch_utils.outputs, the rule of every output)."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    check_format(fmt)
    if fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    refuse_existing([path], overwrite)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.{fmt}")
    try:
        (_write_gif if fmt == "gif" else _write_mp4)(anim, tmp, fps)
        refuse_existing([path], overwrite)  # written meanwhile by someone else: keep theirs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_gif(anim: Animation, path: str, fps: float) -> None:
    # One palette (median cut over the pixels of every frame) for all frames: per-frame palettes make still regions
    # flicker. Large videos: an even sample of at most PALETTE_SAMPLE pixels.
    pixels = anim.frames.reshape(-1, 3)
    pixels = pixels[:: max(1, len(pixels) // PALETTE_SAMPLE)]
    palette = PIL.Image.fromarray(pixels[:, None]).quantize(256, PIL.Image.Quantize.MEDIANCUT)
    images = [PIL.Image.fromarray(f).quantize(palette=palette, dither=PIL.Image.Dither.NONE) for f in anim.frames]
    ms = 1000 / fps
    durations = [round(ms * (KEY_HOLD if key else 1)) for key in anim.is_key]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)


def _write_mp4(anim: Animation, path: str, fps: float) -> None:
    imageio_ffmpeg = _imageio_ffmpeg()
    h, w = anim.frames.shape[1:3]
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))  # H.264's 4:2:0 needs even sides
    frames = np.pad(anim.frames, pad)
    writer = imageio_ffmpeg.write_frames(path, (w + w % 2, h + h % 2), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8)  # fmt: skip
    writer.send(None)  # start ffmpeg
    for frame, key in zip(frames, anim.is_key):
        for _ in range(KEY_HOLD if key else 1):
            writer.send(np.ascontiguousarray(frame))
    writer.close()


def _imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError(VIDEO_HINT) from None
    return imageio_ffmpeg
