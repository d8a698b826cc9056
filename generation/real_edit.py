"""3DMM edits of an inverted photo: change one coefficient group of p, keep w and the noise maps.

Given a latent (p, w, noise) from `generation.inversion`, each edit is p with exactly one group replaced
    angle   p[angle] (pitch x, yaw y, roll z): yaw / pitch in degrees (absolute; the other angles kept)
    illum   p[gamma] (27 SH): a directional light (x right, y up, z toward the viewer) over the photo's ambient
    exp     p[exp]: another photo's expression (--from-image), bank rows (seeds), or the photo's scaled
    id      p[id], p[tex]: another photo's shape + albedo (--from-image), bank rows (seeds), or scaled
and the image is G.synthesis(w, cond(p_edit), noise). `edited_coefficients` checks that nothing outside the
group changed, and `EditResult.changed` names what did.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from deep3drecon.coeffs import ATTRIBUTE_GROUPS, COEFF_SLICES, NUM_COEFFS
from deep3drecon.face_model import INIT_LIT
from deep3drecon.photo import read_photo  # the one photo reader (studio_state imports it from here too)
from generation.controlled import to_uint8
from generation.inversion import Latent, photo_condition, synthesize
from torch_utils.errors import UserError
from torch_utils.outputs import refuse_existing, save_image
from training.dataset import IMAGE_EXTENSIONS
from training.run.grids import enlarge

DEFAULT_YAWS = (-30.0, -15.0, 15.0, 30.0)
DEFAULT_LIGHTS = ((-1.0, 0.0, 0.6), (1.0, 0.0, 0.6), (0.0, 1.0, 0.6), (0.0, -1.0, 0.6))
DEFAULT_EXP_SCALES = (0.0, 0.5, 1.5, 2.0)


@dataclass
class EditResult:
    """Edited coefficient vectors p [K, 257], their images [K, 3, R, R] in [-1, 1], labels [K], changed groups."""

    p: torch.Tensor
    images: torch.Tensor
    labels: list[str]
    changed: tuple[str, ...]


def angle_edits(p: torch.Tensor, yaws: Sequence[float] = (),
                pitches: Sequence[float] = ()) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """p [257] -> [K, 257]: one row per yaw (pitch kept), then per pitch (yaw kept); angles in degrees."""
    rows, labels = [], []
    a = COEFF_SLICES["angle"].start  # (pitch about x, yaw about y, roll about z), radians
    for axis, values, name in ((1, yaws, "yaw"), (0, pitches, "pitch")):
        for v in values:
            q = p.clone()
            q[a + axis] = math.radians(v)
            rows.append(q)
            labels.append(f"{name} {v:+g} deg")
    return torch.stack(rows), labels


def light_edits(p: torch.Tensor, directions: Sequence[Sequence[float]], strength: float = 0.5) -> tuple[
        torch.Tensor, list[str]]:  # fmt: skip
    """p [257] -> [K, 257]: SH light = the photo's ambient (DC band) plus a directional term toward each direction.

    Irradiance of the release's SH basis is a0 c0 (g0 + 0.8) - a1 c1 (g1 n_y - g2 n_z + g3 n_x) + ...; setting
    (g1, g2, g3) = k (-d_y, d_z, -d_x) makes the first-order part k a1 c1 (n . d) (Lambertian light from d), with
    k = strength * (g0 + 0.8) / 2 so the directional part scales with the photo's own brightness per channel.
    """
    rows, labels = [], []
    g = COEFF_SLICES["gamma"]
    for d in directions:
        d = np.asarray(d, dtype=np.float64)
        if d.shape != (3,) or not np.isfinite(d).all() or np.linalg.norm(d) < 1e-6:
            raise UserError(f"a light direction is three numbers x,y,z (not all zero), got {list(d)}")
        d = d / np.linalg.norm(d)
        sh = p[g].reshape(3, 9).clone()
        k = strength * (sh[:, 0] + INIT_LIT) / 2
        sh[:, 1], sh[:, 2], sh[:, 3] = -k * d[1], k * d[2], -k * d[0]
        sh[:, 4:] = 0  # second-order bands off: one clean directional light
        q = p.clone()
        q[g] = sh.reshape(-1)
        rows.append(q)
        labels.append("light " + ",".join(f"{v:+.2f}" for v in d))
    return torch.stack(rows), labels


def donor_edits(p: torch.Tensor, attr: str, donors: torch.Tensor,
                names: Sequence[str]) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """p [257] with ATTRIBUTE_GROUPS[attr] copied from each donor [K, 257] (another photo's FR estimate, bank rows)."""
    out = p[None].repeat(len(donors), 1)
    for group in ATTRIBUTE_GROUPS[attr]:
        out[:, COEFF_SLICES[group]] = donors[:, COEFF_SLICES[group]].to(p.dtype)
    return out, [f"{attr} from {n}" for n in names]


def scale_edits(p: torch.Tensor, attr: str, scales: Sequence[float]) -> tuple[torch.Tensor, list[str]]:
    """p [257] with the attribute's groups multiplied by each scale (exp 0 = neutral face, 2 = exaggerated)."""
    rows = []
    for s in scales:
        q = p.clone()
        for group in ATTRIBUTE_GROUPS[attr]:
            q[COEFF_SLICES[group]] = q[COEFF_SLICES[group]] * s
        rows.append(q)
    return torch.stack(rows), [f"{attr} x{s:g}" for s in scales]


def changed_groups(p: torch.Tensor, edits: torch.Tensor) -> tuple[str, ...]:
    """Names of the coefficient groups in which any edit row [K, 257] differs from p [257]."""
    return tuple(name for name, sl in COEFF_SLICES.items() if not torch.equal(edits[:, sl], p[None, sl].expand_as(
        edits[:, sl])))  # fmt: skip


def edited_coefficients(p: torch.Tensor, edits: torch.Tensor, attr: str) -> tuple[str, ...]:
    """Check that edits [K, 257] differ from p [257] only inside ATTRIBUTE_GROUPS[attr]; returns the changed groups."""
    if edits.ndim != 2 or edits.shape[1] != NUM_COEFFS:
        raise UserError(f"edits must be [K, {NUM_COEFFS}], got {list(edits.shape)}")
    changed = changed_groups(p, edits)
    outside = [g for g in changed if g not in ATTRIBUTE_GROUPS[attr]]
    if outside:  # a bug, not a user error: an edit of one attribute must never touch another
        raise RuntimeError(f"edit of {attr} changed other coefficient groups: {outside}")
    return changed


@torch.no_grad()
def render_edits(G: torch.nn.Module, renderer: torch.nn.Module, latent: Latent, edits: torch.Tensor, attr: str,
                 labels: Sequence[str], batch: int = 8) -> EditResult:  # fmt: skip
    """Images of the latent's w and noise with each edited p [K, 257] -> EditResult (changed groups checked)."""
    changed = edited_coefficients(latent.p, edits, attr)
    device = G.mapping.w_avg.device
    noise = {k: v.to(device) for k, v in latent.noise.items()}
    images = []
    for i in range(0, len(edits), batch):
        p = edits[i : i + batch].to(device)
        ws = latent.ws[None].to(device).expand(len(p), -1, -1)
        images.append(synthesize(G, ws, photo_condition(p, renderer, G.img_resolution), noise).float().cpu())
    return EditResult(edits.cpu(), torch.cat(images), list(labels), changed)


def save_edit_grid(path: str, target: torch.Tensor | None, reconstruction: torch.Tensor, edits: EditResult,
                   overwrite: bool = False) -> str:  # fmt: skip
    """One row PNG: [target (if known), reconstruction, edit 1, ...], each [3, R, R] in [-1, 1]; returns the path.

    Tiles under 96 px are enlarged with nearest-neighbour upsampling, as every grid is (training.run.grids.enlarge).
    An existing file is refused unless overwrite (torch_utils.outputs).
    """
    tiles = ([target] if target is not None else []) + [reconstruction] + list(edits.images)
    row = torch.cat([t.float().cpu() for t in tiles], dim=2)
    return save_image(path, enlarge(to_uint8(row), reconstruction.shape[-1]), overwrite)


# ----------------------------------------------------------------------------------------------------------------
# Photos on disk: listing, reading, landmarks (given or detected), the invert driver.


def parse_floats(spec: str, what: str) -> list[float]:
    """'-30,-15,15' -> [-30.0, -15.0, 15.0]; UserError naming `what` on anything else."""
    try:
        values = [float(v) for v in spec.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers like -30,-15,15, got {spec[:80]!r}") from None
    if not all(map(math.isfinite, values)):
        raise UserError(f"{what}: {spec[:80]!r} holds NaN or inf; give finite numbers")
    return values


def list_photos(path: str) -> list[str]:
    """A photo path -> [path]; a folder -> its images (sorted, not recursive); UserError if there are none."""
    from training.dataset import IMAGE_EXTENSIONS

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"--images: no such file or folder: {path}")
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise UserError(f"--images: {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def inversion_outputs(path: str, outdir: str) -> list[str]:
    """The files `invert` writes for the photo at `path`: <stem>-target.png, -projected.png, -latent.npz."""
    base = os.path.join(outdir, os.path.splitext(os.path.basename(path))[0])
    return [f"{base}-target.png", f"{base}-projected.png", f"{base}-latent.npz"]


def invert_photos(G: torch.nn.Module, fr: torch.nn.Module, renderer: torch.nn.Module, paths: Sequence[str],
                  outdir: str, options, network_path: str, network_sha256: str, vgg_path: str | None = None,
                  log=print, progress: bool = True, overwrite: bool = False) -> list[tuple[str, float]]:  # fmt: skip
    """Invert each photo; writes <stem>-target.png, <stem>-projected.png, <stem>-latent.npz -> [(stem, PSNR dB)].

    A single photo that cannot be used (unreadable, no face, bad landmarks) is one UserError line; in a folder such
    photos are skipped and listed at the end. Existing outputs are refused before any work unless overwrite.
    """
    from deep3drecon.landmarks import find_or_detect_landmarks, load_face_detector
    from generation.inversion import PhotoLoss, invert_image, prepare_photo, save_latent

    options.check()
    refuse_existing([out for path in paths for out in inversion_outputs(path, outdir)], overwrite)
    loss = PhotoLoss(fr, vgg_path, pixel_weight=options.pixel_weight, feature_weight=options.feature_weight)
    detector = []  # built on first use only: photos with landmark files never need the faces extra

    def get_detector():
        if not detector:
            detector.append(load_face_detector(G.mapping.w_avg.device))
        return detector[0]

    os.makedirs(outdir, exist_ok=True)
    done, skipped = [], []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            image = read_photo(path)
            landmarks, how = find_or_detect_landmarks(path, image, get_detector, outdir)
        except UserError as exc:
            if len(paths) == 1:
                raise
            skipped.append(f"{os.path.basename(path)}: {exc}")
            continue
        target = prepare_photo(image, G.img_resolution, landmarks=landmarks).target
        result = invert_image(G, fr, renderer, target, options, loss, progress=progress, desc=stem)
        base = os.path.join(outdir, stem)
        target_png, projected_png, latent_npz = inversion_outputs(path, outdir)
        save_image(target_png, to_uint8(result.target), overwrite)
        save_image(projected_png, to_uint8(result.projected), overwrite)
        save_latent(latent_npz, result, network_path, network_sha256, overwrite=overwrite)
        log(f"{stem}: PSNR {result.psnr:.2f} dB ({how}); wrote {base}-{{target.png,projected.png,latent.npz}}")
        done.append((stem, result.psnr))
    if skipped:
        log(f"skipped {len(skipped)} photo(s):\n  " + "\n  ".join(skipped))
    if not done:
        raise UserError(f"no photo could be inverted ({len(skipped)} skipped)")
    return done


def photos_p(paths: Sequence[str], fr: torch.nn.Module, resolution: int,
             outdir: str | None = None) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """FR coefficients [K, 257] of photos (aligned at R) and their stems; detected landmarks go to outdir."""
    from deep3drecon.landmarks import find_or_detect_landmarks, load_face_detector
    from generation.inversion import prepare_photo

    detector: list = []
    get_detector = lambda: detector[0] if detector else (detector.append(load_face_detector()) or detector[0])
    device = next(fr.parameters()).device
    rows, names = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"--from-image: file not found: {path}")
        image = read_photo(path)
        landmarks, _ = find_or_detect_landmarks(path, image, get_detector, outdir)
        target = prepare_photo(image, resolution, landmarks=landmarks).target
        with torch.no_grad():
            rows.append(fr(target[None].to(device)).float()[0].cpu())
        names.append(os.path.splitext(os.path.basename(path))[0])
    return torch.stack(rows), names


def build_edits(p: torch.Tensor, attr: str, *, yaw: str | None = None, pitch: str | None = None,
                light_dirs: Sequence[str] = (), light_strength: float = 0.5, scale: str | None = None,
                seeds: Sequence[int] | None = None, bank: torch.Tensor | None = None,
                from_images: Sequence[str] = (), photo_p=None) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """The edited p rows [K, 257] and labels for one attribute from the CLI's values (strings as typed).

    angle: --yaw / --pitch degrees (default yaw sweep); illum: --light-dir x,y,z (default four directions);
    exp / id: --from-image photos (photo_p(paths) -> (p [K, 257], names)), --seeds (bank rows), --scale factors
    (exp default: 0, 0.5, 1.5, 2).
    """
    from generation.controlled import bank_p

    if attr == "angle":
        yaws = parse_floats(yaw, "--yaw") if yaw else ([] if pitch else list(DEFAULT_YAWS))
        return angle_edits(p, yaws, parse_floats(pitch, "--pitch") if pitch else [])
    if attr == "illum":
        dirs = [parse_floats(d, "--light-dir") for d in light_dirs] or [list(d) for d in DEFAULT_LIGHTS]
        return light_edits(p, dirs, light_strength)
    rows = []
    if from_images:
        donors, names = photo_p(list(from_images))
        rows.append(donor_edits(p, attr, donors, names))
    if seeds:
        if bank is None:
            raise UserError("--seeds needs a p bank (the snapshot's dataset, --data or --p-bank)")
        rows.append(donor_edits(p, attr, bank_p(bank, seeds), [f"seed {s}" for s in seeds]))
    if scale or not rows:
        if not scale and attr == "id":
            raise UserError("--attr id needs --from-image, --seeds or --scale")
        rows.append(scale_edits(p, attr, parse_floats(scale, "--scale") if scale else list(DEFAULT_EXP_SCALES)))
    return torch.cat([r[0] for r in rows]), [label for r in rows for label in r[1]]


def load_reference_images(folder: str, size: int, landmarks: bool = False, log=None,
                          landmarks_outdir: str | None = None) -> tuple[list[str], torch.Tensor]:  # fmt: skip
    """Photos in folder (sorted) -> (stems, images [C, 3, size, size] float32 in [-1, 1], row 0 = top).

    Without landmarks every image must already be an aligned square crop (any size; the crop framing is
    resolution independent, so it is resized). With landmarks, `<stem>.txt` beside the photo or in
    `detections/` (Deep3DFaceRecon's layout: 5 or 68 rows 'x y', y-down pixels) drives deep3drecon.align; a photo
    with neither is run through the face detector (deep3drecon.landmarks) and its points are written to
    <landmarks_outdir or folder>/<stem>_landmarks.txt; `log(message)` reports each detection.
    """
    from deep3drecon.align import align_face
    from deep3drecon.landmarks import find_or_detect_landmarks, load_face_detector

    detector: list = []
    get_detector = lambda: detector[0] if detector else (detector.append(load_face_detector()) or detector[0])

    if not os.path.isdir(folder):
        raise UserError(f"reference image folder not found: {folder}")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise UserError(f"{folder} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems, images = [], []
    for name in files:
        stem = os.path.splitext(name)[0]
        image = read_photo(os.path.join(folder, name), name)  # upright RGB, pixel budget, one line if unreadable
        if landmarks:
            candidates = [os.path.join(folder, f"{stem}{suffix}.txt") for suffix in ("", "_landmarks")]
            candidates.append(os.path.join(folder, "detections", f"{stem}.txt"))
            lm, note = find_or_detect_landmarks(os.path.join(folder, name), image, get_detector,
                                                landmarks_outdir, candidates)  # fmt: skip
            if log is not None and note.startswith("detected"):
                log(f"{name}: {note}")
            image = align_face(image, lm, size=size).image
        elif image.width != image.height:
            raise UserError(f"{name} is {image.width}x{image.height}: pass aligned square crops or use --landmarks")
        if image.size != (size, size):
            image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1))
        stems.append(stem)
    return stems, torch.stack(images)
