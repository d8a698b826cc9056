"""generate.py vary --video: key frames are the vary grid's cells (same p, same pixels up to the GIF palette), frames
between them interpolate p linearly (checked against numpy), an existing file is never replaced, MP4 is optional."""

from __future__ import annotations

import sys

import numpy as np
import PIL.Image
import pytest
import torch

from generation import controlled as cg
from generation.animation import KEY_HOLD, interpolate, vary_animation
from tests.generation import test_generate
from tests.generation.test_generate import RES, K, grid_png, ok, run
from training.resolve import build_renderer
from training.run.snapshot import load_network

env = test_generate.env  # the tiny snapshots, face model and dataset of test_generate.py (module-scoped fixture)


def gif_frames(path) -> tuple[list[np.ndarray], list[int]]:
    """Every frame of a GIF as RGB uint8 and its duration in ms."""
    frames, durations = [], []
    with PIL.Image.open(path) as gif:
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info["duration"])
    return frames, durations


def test_interpolate_loops_through_the_keys() -> None:
    keys = torch.tensor([[0.0, 1.0], [4.0, 1.0], [8.0, 1.0]])
    frames = interpolate(keys, 3)
    expected = np.array([[0, 1], [1, 1], [2, 1], [3, 1], [4, 1], [5, 1], [6, 1], [7, 1], [8, 1], [6, 1], [4, 1],
                         [2, 1]], dtype=np.float32)  # fmt: skip
    np.testing.assert_array_equal(frames.numpy(), expected)
    assert torch.equal(interpolate(keys, 0), keys)


def test_vary_video_key_frames_are_the_grid_cells_and_p_is_interpolated(env, tmp_path) -> None:
    common = ["--network", env["cond"], "--outdir", tmp_path, "--attr", "exp", "--cols", "2", "--sweep"]
    ok("vary", *common, "--seeds", "5-6", "--video", "--tween", "3", "--fps", "10")
    ok("vary", *common, "--seeds", "5", "--show-rep")  # the grid of seed 5: [image | r(p)] per cell
    frames, durations = gif_frames(tmp_path / "vary-exp-seeds5-6.gif")
    assert len(frames) == 3 * 4  # (base + 2 donors) x (key + 3 between)
    assert durations == [100 * KEY_HOLD, 100, 100, 100] * 3  # 10 fps, donors held
    assert frames[0].shape == (2 * K * RES, 2 * K * RES, 3)  # a row per seed: [image | r(p)], enlarged K x
    # p: key frames are the grid's p exactly; between them the numpy interpolation, back to the base at the end.
    p = np.load(tmp_path / "vary-exp-seeds5-6-p.npy")
    keys = np.load(tmp_path / "vary-exp-seed0005-p.npy")[0]
    assert p.shape == (12, 2, 257)
    np.testing.assert_array_equal(p[::4, 0], keys)
    for k in range(3):
        for j in range(1, 4):
            np.testing.assert_allclose(p[4 * k + j, 0], keys[k] + (keys[(k + 1) % 3] - keys[k]) * j / 4, atol=1e-6)
    # The GIF's key frames show the grid's cells (up to its 256-colour palette; the random-weight G draws noise, the
    # worst case for a palette). The frames before encoding are compared exactly in the next test.
    grid = grid_png(tmp_path / "vary-exp-seed0005.png").astype(int)
    for k in range(3):
        row = frames[4 * k][: K * RES : K, ::K].astype(int)
        assert np.abs(row - grid[:, 2 * k * RES : 2 * (k + 1) * RES]).mean() < 6.0
    assert np.abs(frames[0].astype(int) - frames[4].astype(int)).mean() > 1.0  # the face changes between donors


def test_animation_key_frames_equal_the_grid_cells(env) -> None:
    G = load_network(env["cond"])
    sampler = cg.Sampler(G, build_renderer(env["bfm"], "torch", torch.device("cpu")), torch.device("cpu"),
                         truncation_psi=0.8, progress=False)  # fmt: skip
    bank = cg.load_p_bank(env["data"])
    anim = vary_animation(sampler, [3, 7], bank, "angle", 3, sweep=False, tween=2)
    assert anim.frames.shape == (12, 2 * K * RES, 2 * K * RES, 3) and anim.is_key.tolist() == [1, 0, 0] * 4
    for r, seed in enumerate([3, 7]):
        grid = cg.to_uint8(cg.compose_grid(cg.vary_grid(sampler, seed, bank, "angle", 3), show_rep=True))
        for k in range(4):
            row = anim.frames[3 * k, r * K * RES : (r + 1) * K * RES : K, ::K].astype(int)
            cell = grid[:, 2 * k * RES : 2 * (k + 1) * RES].astype(int)
            assert np.abs(row - cell).max() <= 1  # float reassociation across batches may flip one rounding step


def test_vary_video_never_replaces_a_file_and_mp4_is_optional(env, tmp_path, monkeypatch) -> None:
    args = ["vary", "--network", env["cond"], "--outdir", tmp_path, "--attr", "angle", "--cols", "1", "--tween", "1"]
    ok(*args, "--video")
    gif = tmp_path / "vary-angle-seeds0.gif"
    before = gif.read_bytes()
    result = run(*args, "--video")
    assert result.exit_code == 1 and f"{gif} already exists" in result.output and result.output.count("\n") == 1
    assert gif.read_bytes() == before
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if the video extra were not installed
    result = run(*args, "--video", "mp4")
    assert result.exit_code == 1 and 'pip install -e ".[video]"' in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "vary-angle-seeds0.mp4").exists()
    result = run("vary", "--network", env["uncond"], "--outdir", tmp_path / "u", "--video")
    assert result.exit_code == 1 and "unconditional" in result.output


def test_vary_video_mp4_with_the_video_extra(env, tmp_path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    ok("vary", "--network", env["cond"], "--outdir", tmp_path, "--attr", "illum", "--cols", "1", "--tween", "2",
       "--video", "mp4", "--fps", "8")  # fmt: skip
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "vary-illum-seeds0.mp4"))
    meta = reader.__next__()
    frames = list(reader)
    assert meta["size"] == (2 * K * RES, K * RES) and meta["fps"] == 8
    assert len(frames) == 2 * (KEY_HOLD + 2)  # 2 keys held KEY_HOLD frames, 2 frames between each
