"""The built-in synthetic dataset: faces rendered from the synthetic face model, composited into simple scenes.

Each image shows the face of a coefficient vector p drawn from `sample_coeffs` (the label is that exact p), rendered
in the Deep3DFaceRecon framing at R, so render(p, size=R) lines up with the image pixel for pixel wherever the face
is visible. Around it, things p does not describe, drawn from an independent per-image RNG, so that the latent z
has something to model:

- background: solid colour, linear gradient, stripes, checkerboard or low-frequency colour blobs;
- hair (p = 0.85): short cap, long (down to the shoulders) or curly, drawn behind the face;
- neck in the face's mean skin colour and a clothing band (optionally striped) with shoulders;
- hat (p = 0.25): crown + brim drawn in front, never lower than the eyebrows.

Distribution of p (radians for angle, decimetres for trans; N(0, s) truncated at 2.5 s; gamma as [3 colour, 9 SH]):

    id [80]      N(0, 0.8) for the first ACTIVE["id"] = 5 (face width, length, nose, jaw, eye spacing of
                 deep3drecon.synthetic), 0 after
    exp [64]     N(0, 0.8) for the first ACTIVE["exp"] = 4 (mouth open, smile, eyes closed, brows raised), 0 after;
                 mouth open and brows raised as |N(0, 0.8)|: a negative jaw drop would push the lower lip into the
                 upper one, lowered brows would cover the eyes and look like closed eyes; eyes closed clipped at
                 1.6 (shut)
    tex [80]     N(0, 0.8) for the first ACTIVE["tex"] = 3 (skin tone, redness, lip colour), 0 after
    angle        pitch 0, yaw N(0, 0.35), roll N(0, 0.12)
    gamma        bands 1-3 (the light direction) N(0, 0.16), the same in the three colours; DC and bands 4-8 0
                 (white light: the model's ambient 0.8 plus one direction)
    trans        tx, ty N(0, 0.12) (about 2 px at 32 px); tz 0

Everything the world varies can be seen at 32 px; what cannot is not varied. Measured with the synthetic FR
(docs/benchmarks.md), a coefficient the images do not show keeps a held-out relative MAE of ~1.0, and those were:
pitch and tz (a pitch of 0.1 rad foreshortens the face like a shorter identity, tz scales it like identity width +
length), the light's brightness and colour (a darker or redder light is a darker or redder skin tone), the second
SH band, the chin length (the chin sits at the lower image edge) and the random tails of the bases.

Image i depends only on (seed, i): RNG streams are keyed by both, never by batch size or worker count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from dataprep.builder import (
    TOOL_NAME,
    TOOL_VERSION,
    DatasetWriter,
    SkipReport,
    archive_name,
    default_workers,
    encode_png,
    finish_report,
    framing_record,
    label_layout,
    label_row,
    ordered_map,
    sha256_file,
)
from deep3drecon.synthetic import ACTIVE
from torch_utils.misc import pick_device
from torch_utils.progress import progress as show_progress

P_DISTRIBUTION: dict[str, str] = {
    "id": f"first {ACTIVE['id']}: N(0, 0.8) truncated at 2.5 sigma; others 0",
    "exp": f"first {ACTIVE['exp']}: N(0, 0.8) truncated (mouth open, brows raised |N(0, 0.8)|; eyes closed <= 1.6); "
           "others 0",
    "tex": f"first {ACTIVE['tex']}: N(0, 0.8) truncated; others 0",
    "angle": "pitch 0, yaw N(0, 0.35), roll N(0, 0.12) rad, truncated",
    "gamma": "bands 1-3 N(0, 0.16), the same in every colour; DC and bands 4-8 0 (white light)",
    "trans": "tx, ty N(0, 0.12) dm truncated, tz 0",
}
HAIR_COLOURS = np.array(
    [[20, 16, 14], [60, 40, 25], [110, 75, 40], [200, 165, 100], [150, 60, 30], [170, 170, 165], [235, 225, 200]],
    dtype=np.float64,
)
SUPERSAMPLE = 2  # shapes are drawn at 2R and box-filtered to R, so their edges are not jagged
# Expression columns the world draws as |N(0, 0.8)|: mouth open (a negative jaw drop would push the lower lip into the
# upper one) and brows raised (lowered brows would cover the eyes and look like closed eyes).
ONE_SIDED_EXP: tuple[int, ...] = (0, 3)
# Eyes closed (exp column 2) is clipped at 1.6, where the eye is shut: beyond it the lids would cross.
EYES_CLOSED, EYES_CLOSED_MAX = 2, 1.6


def _trunc_normal(rng: np.random.Generator, std: float | np.ndarray, size: int | tuple) -> np.ndarray:
    """N(0, std) truncated (clipped) at 2.5 std: keeps rare extreme faces from turning into monsters."""
    return np.clip(rng.standard_normal(size), -2.5, 2.5) * std


def sample_coeffs(rng: np.random.Generator) -> np.ndarray:
    """One coefficient vector p: float32 [257] (id|exp|tex|angle|gamma|trans) from the module's distribution."""
    gamma = np.zeros((3, 9))
    gamma[:, 1:4] = _trunc_normal(rng, 0.16, 3)[None]  # one light direction, white
    active = lambda n, k: (np.arange(n) < k).astype(np.float64)  # noqa: E731 (the world's truncated prior)
    exp = _trunc_normal(rng, 0.8, 64) * active(64, ACTIVE["exp"])
    exp[list(ONE_SIDED_EXP)] = np.abs(exp[list(ONE_SIDED_EXP)])
    exp[EYES_CLOSED] = min(exp[EYES_CLOSED], EYES_CLOSED_MAX)
    p = np.concatenate(
        [
            _trunc_normal(rng, 0.8, 80) * active(80, ACTIVE["id"]),
            exp,
            _trunc_normal(rng, 0.8, 80) * active(80, ACTIVE["tex"]),
            _trunc_normal(rng, np.array([0.0, 0.35, 0.12]), 3),
            gamma.reshape(-1),  # channel-major [3, 9] as the model
            _trunc_normal(rng, np.array([0.12, 0.12, 0.0]), 3),
        ]
    )
    return p.astype(np.float32)


def image_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent RNG for (dataset seed, image index, stream): 0 = coefficients, 1 = scene."""
    return np.random.default_rng([seed, index, stream])


# ----------------------------------------------------------------------------------------------------------------
# Scene composition (numpy + PIL; runs in the worker pool).


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background float64 [size, size, 3] in [0, 255]: solid, gradient, stripes, checker or blobs."""
    kind = rng.choice(["solid", "gradient", "stripes", "checker", "blobs"])
    c0, c1 = np.array(_random_colour(rng), float), np.array(_random_colour(rng), float)
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = rng.uniform(0, np.pi)
    along = np.cos(theta) * xx + np.sin(theta) * yy  # coordinate along a random direction, ~[-1, 1.4]
    if kind == "solid":
        t = np.zeros_like(xx)
    elif kind == "gradient":
        t = (along - along.min()) / max(np.ptp(along), 1e-6)
    elif kind == "stripes":
        t = (np.floor(along * rng.uniform(4, 14)) % 2).astype(float)
    elif kind == "checker":
        n = rng.uniform(3, 10)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(float)
    else:  # low-frequency noise, bicubically upsampled from a 4x4..8x8 grid
        k = int(rng.integers(4, 9))
        grid = PIL.Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
        t = np.asarray(grid.resize((size, size), PIL.Image.Resampling.BICUBIC), float) / 255
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


@dataclass
class SceneJob:
    """Worker input: render uint8 [R, R, 3], face mask bool [R, R], landmarks [68, 2] y-down at R, RNG key."""

    render: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    seed: int
    index: int


def compose_scene(job: SceneJob) -> tuple[np.ndarray, np.ndarray]:
    """Composite one face into a random scene -> (image uint8 [R, R, 3], visible face mask bool [R, R]).

    Where the visible mask is True the image equals the render exactly (the hat is the only thing drawn over
    the face), so render(p) and the image agree there pixel for pixel.
    """
    rng, size = image_rng(job.seed, job.index, 1), job.render.shape[0]
    big = size * SUPERSAMPLE
    lm = (job.landmarks + 0.5) * SUPERSAMPLE  # pixel centres -> continuous coordinates of the 2R canvas
    jaw, eyes, brows, chin = lm[0:17], lm[36:48], lm[17:27], lm[8]
    cx = float(jaw[:, 0].mean())
    half_w = max(float(np.ptp(jaw[:, 0])) / 2, 2.0)
    eye_y, brow_y = float(eyes[:, 1].mean()), float(brows[:, 1].min())
    face_h = max(float(chin[1]) - eye_y, 2.0)  # eye line to chin: the unit every shape is sized in
    skin = job.render[job.mask].mean(axis=0) if job.mask.any() else np.array([200.0, 160, 140])

    canvas = PIL.Image.fromarray(draw_background(rng, big).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    # Clothing band with shoulders, then the neck (behind the face, in front of the clothes).
    cloth_top = chin[1] + face_h * rng.uniform(0.0, 0.35)
    cloth_layer = PIL.Image.new("RGB", (big, big), _random_colour(rng))
    if rng.random() < 0.4:  # horizontal stripes across the clothing
        step, stripe = max(face_h * rng.uniform(0.15, 0.3), 2.0), _random_colour(rng)
        stripes = PIL.ImageDraw.Draw(cloth_layer)
        for y in np.arange(cloth_top + step, big, 2 * step):
            stripes.rectangle([0, y, big, y + step / 2], fill=stripe)
    rx = half_w * rng.uniform(2.5, 3.5)  # shoulders: the top of a wide, flat ellipse
    canvas.paste(cloth_layer, (0, 0), _ellipse_mask(big, cx, cloth_top, rx, face_h * 2))
    neck_w = half_w * rng.uniform(0.45, 0.65)
    draw.rectangle(
        [cx - neck_w, eye_y + face_h * 0.5, cx + neck_w, cloth_top + face_h * 0.3],
        fill=tuple(int(v) for v in skin * 0.55),  # in the chin's shadow, so the chin line shows
    )
    # Hair behind the head.
    if rng.random() < 0.85:
        hair = np.clip(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.normal(0, 12, 3), 0, 255)
        hair_fill = tuple(int(v) for v in hair)
        top = eye_y - face_h * rng.uniform(1.2, 1.6)
        rx = half_w * rng.uniform(1.1, 1.35)
        style = rng.choice(["short", "long", "curly"])
        draw.ellipse([cx - rx, top, cx + rx, eye_y + face_h * 0.6], fill=hair_fill)
        if style == "long":
            draw.rectangle(
                [cx - rx, eye_y - face_h * 0.2, cx + rx, chin[1] + face_h * rng.uniform(0.5, 1.2)], fill=hair_fill
            )
        elif style == "curly":
            for _ in range(int(rng.integers(12, 25))):
                a = rng.uniform(np.pi * 0.9, np.pi * 2.1)
                r = face_h * rng.uniform(0.2, 0.35)
                px, py = cx + np.cos(a) * rx, eye_y - face_h * 0.2 + np.sin(a) * (eye_y - top)
                draw.ellipse([px - r, py - r, px + r, py + r], fill=hair_fill)
    canvas = np.asarray(canvas.resize((size, size), PIL.Image.Resampling.BOX), dtype=np.uint8)

    image = np.where(job.mask[..., None], job.render, canvas)
    visible = job.mask.copy()
    if rng.random() < 0.25:  # a hat over the top of the head: occludes forehead pixels of the render
        hat_layer = PIL.Image.new("L", (big, big), 0)
        hat_draw = PIL.ImageDraw.Draw(hat_layer)
        brim_y = brow_y - face_h * rng.uniform(0.1, 0.3)  # stays above the eyebrows
        crown_w, brim_w = half_w * rng.uniform(0.9, 1.1), half_w * rng.uniform(1.2, 1.7)
        hat_draw.ellipse(
            [cx - crown_w, brim_y - face_h * rng.uniform(0.9, 1.4), cx + crown_w, brim_y + face_h * 0.3], fill=255
        )
        hat_draw.rectangle([cx - brim_w, brim_y - face_h * 0.12, cx + brim_w, brim_y + face_h * 0.05], fill=255)
        hat_draw.rectangle([0, brim_y + face_h * 0.05, big, big], fill=0)  # flat bottom edge at the brim
        alpha = np.asarray(hat_layer.resize((size, size), PIL.Image.Resampling.BOX), np.float64)[..., None] / 255
        hat = np.array(_random_colour(rng), np.float64)
        image = np.rint(image * (1 - alpha) + hat * alpha).astype(np.uint8)
        visible &= alpha[..., 0] == 0
    return image, visible


def _ellipse_mask(size: int, cx: float, top: float, rx: float, height: float) -> PIL.Image.Image:
    """L-mode mask of the ellipse spanning [cx - rx, cx + rx] x [top, top + height]."""
    mask = PIL.Image.new("L", (size, size), 0)
    PIL.ImageDraw.Draw(mask).ellipse([cx - rx, top, cx + rx, top + height], fill=255)
    return mask


def _compose_and_encode(job: SceneJob) -> tuple[int, bytes]:
    """Worker entry point: (index, PNG bytes of the composited image)."""
    image, _ = compose_scene(job)
    return job.index, encode_png(image)


# ----------------------------------------------------------------------------------------------------------------
# Rendering + dataset.


def render_faces(
    renderer: Any, face_model: Any, coeffs: np.ndarray, resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """coeffs float32 [N, 257] -> (render uint8 [N, R, R, 3], mask bool [N, R, R], landmarks [N, 68, 2] y-down at R)."""
    import torch

    device = next(iter(face_model.buffers())).device
    with torch.inference_mode():
        geom = face_model.compute(torch.from_numpy(coeffs).to(device))  # once: for the landmarks and the render
        out = renderer.render_geometry(geom, resolution)
        lm224 = geom.landmarks.cpu().numpy().astype(np.float64)
        render = (out.render.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        mask = out.mask[:, 0].cpu().numpy() > 0.5
    # Landmarks are pixel-centre coordinates at 224; the same rays at R (FaceModel.project's convention).
    landmarks = (lm224 + 0.5) * (resolution / 224) - 0.5
    return render, mask, landmarks


def world_coeffs(count: int, seed: int) -> np.ndarray:
    """Labels float32 [count, 257] of images 0..count-1 of the synthetic world with this seed."""
    return np.stack([sample_coeffs(image_rng(seed, i, 0)) for i in range(count)]) if count else np.zeros((0, 257))


def _open_renderer(face_model_path: str | os.PathLike | None, device: str) -> tuple[Path, Any, Any]:
    """(face model path, FaceModel, Renderer) on `device` (auto = CUDA if available); default: the synthetic model."""
    from deep3drecon.assets import synthetic_face_model_path
    from deep3drecon.face_model import FaceModel
    from deep3drecon.render import Renderer

    fm_path = Path(face_model_path) if face_model_path is not None else synthetic_face_model_path()
    dev = pick_device(device)
    face_model = FaceModel.from_mat(fm_path).to(dev)
    return fm_path, face_model, Renderer(face_model).to(dev)


def _compose_only(job: SceneJob) -> tuple[int, np.ndarray]:
    """Worker entry point: (index, composited image uint8 [R, R, 3])."""
    return job.index, compose_scene(job)[0]


def render_scene_arrays(
    count: int,
    resolution: int,
    seed: int,
    progress: bool = True,
    *,
    face_model_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images 0..count-1 of the world `seed` in memory (what build_synthetic_dataset would write, unencoded).

    -> (scenes uint8 [N, R, R, 3], bare renders uint8 [N, R, R, 3] (black outside the face), labels float32 [N, 257]).
    Used to train the synthetic FR on the same world the built-in dataset shows.
    """
    _, face_model, renderer = _open_renderer(face_model_path, device)
    coeffs = world_coeffs(count, seed).astype(np.float32)
    scenes = np.zeros((count, resolution, resolution, 3), np.uint8)
    renders = np.zeros_like(scenes)

    def jobs():
        for b in range(0, count, batch_size):
            render, mask, landmarks = render_faces(renderer, face_model, coeffs[b : b + batch_size], resolution)
            renders[b : b + render.shape[0]] = render * mask[..., None]
            for k in range(render.shape[0]):
                yield SceneJob(render[k], mask[k], landmarks[k], seed, b + k)

    workers = default_workers() if workers is None else workers
    with show_progress(total=count, unit="img", disable=not progress, desc=f"  rendering scenes (seed {seed})") as bar:
        for index, image in ordered_map(_compose_only, jobs(), workers, max_inflight=2 * batch_size):
            scenes[index] = image
            bar.update(1)
    return scenes, renders, coeffs


def build_synthetic_dataset(
    dest: str | os.PathLike,
    count: int,
    resolution: int,
    seed: int = 0,
    progress: bool = True,
    *,
    face_model_path: str | os.PathLike | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render `count` synthetic faces at `resolution` into a labelled dataset zip/folder (atomic) -> report dict.

    report: {"dest", "num_images", "num_skipped", "skipped", "seconds", "images_per_sec"}. The face model defaults
    to deep3drecon.assets.synthetic_face_model_path(); labels are the ground-truth p of each image.
    """
    fm_path, face_model, renderer = _open_renderer(face_model_path, device)
    coeffs = world_coeffs(count, seed)
    workers = default_workers() if workers is None else workers
    start = time.time()

    def jobs():
        # Rendered lazily batch by batch in this process while the pool composites the previous batches.
        for b in range(0, count, batch_size):
            render, mask, landmarks = render_faces(renderer, face_model, coeffs[b : b + batch_size], resolution)
            for k in range(render.shape[0]):
                yield SceneJob(render[k], mask[k], landmarks[k], seed, b + k)

    labels = []
    with (
        DatasetWriter(dest, overwrite) as writer,
        show_progress(total=count, unit="img", disable=not progress, desc=f"synthetic -> {Path(dest).name}") as bar,
    ):
        for index, png in ordered_map(_compose_and_encode, jobs(), workers, max_inflight=2 * batch_size):
            name = archive_name(index)
            writer.write(name, png)
            labels.append([name, label_row(coeffs[index])])
            bar.update(1)
        meta = {
            "tool": TOOL_NAME,
            "tool_version": TOOL_VERSION,
            "mode": "synthetic",
            "seed": seed,
            "resolution": resolution,
            "framing": framing_record(resolution, 224),
            "face_model": {"file": fm_path.name, "sha256": sha256_file(fm_path)},
            "renderer_backend": str(getattr(renderer, "backend", "unknown")),
            "label_layout": label_layout(),
            "p_distribution": P_DISTRIBUTION,
            "created_unix": int(time.time()),
            "num_images": len(labels),
            "num_skipped": 0,
            "skipped": [],
        }
        writer.write_json("dataset.json", {"labels": labels, "meta": meta})
    return finish_report(dest, len(labels), SkipReport(), start)
