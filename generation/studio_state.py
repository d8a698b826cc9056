"""The studio's edit logic, free of any web library: slider values <-> p, faces, rendering a view, saving it.

p is the 257-d coefficient vector (id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3, deep3drecon.face_model).
The sliders speak the user's units and are read back from p, so a face loaded from the bank shows its own values:
  pose        yaw / pitch / roll in degrees = angle[1] / angle[0] / angle[2] in radians (R = Rz Ry Rx); + yaw turns
              the face toward the image's right, + pitch tilts it down, + roll turns it counter-clockwise
  expression  the first NUM_EXP_SLIDERS expression coefficients, as they are
  lighting    gamma as [3 colour, 9 SH bands]; the first-order bands 1-3 of colour c shade with n . L_c where
              L_c = (-g[c,3], -g[c,1], g[c,2]) (camera frame: x right, y up, z toward the viewer). The sliders show
              the colour-mean light L as strength |L|, azimuth (0 = frontal, +90 = from the image's right) and
              elevation (+ = from above), and the ambient term mean_c g[c,0] + INIT_LIT (the model adds INIT_LIT).
              Editing shifts every colour by the same amount, so the light keeps its tint.
A slider left at the value it shows for the base p leaves that part of p untouched to the bit: the studio's image of
an unedited face is generate.py's image of the same p (both go through generation.controlled.Sampler).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch

from deep3drecon.coeffs import COEFF_SLICES, NUM_COEFFS
from deep3drecon.face_model import INIT_LIT
from generation import controlled as cg
from generation.real_edit import read_photo
from torch_utils.checks import check_number
from torch_utils.errors import UserError
from torch_utils.outputs import output_file, save_image, write_bytes
from training.dataset_checks import check_coeffs
from training.rep import rep_distance, rep_render

NUM_EXP_SLIDERS = 8
# Slider (low, high, step) per control; values read from p are clipped to the range and rounded to the step.
ANGLE_RANGES = {"yaw": (-90.0, 90.0), "pitch": (-60.0, 60.0), "roll": (-60.0, 60.0)}
ANGLE_INDEX = {"pitch": 0, "yaw": 1, "roll": 2}  # rotation about x, y, z
ANGLE_STEP = 0.5
EXP_RANGE, EXP_STEP = (-3.0, 3.0), 0.01
AMBIENT_RANGE, STRENGTH_RANGE, LIGHT_STEP = (0.0, 2.0), (0.0, 1.5), 0.01
AZIMUTH_RANGE, ELEVATION_RANGE, LIGHT_ANGLE_STEP = (-180.0, 180.0), (-90.0, 90.0), 1.0
NOISE_MODES = ("const", "random", "none")
FACE_SOURCES = ("seed", "dataset row")


def _snap(value: float, bounds: tuple[float, float], step: float) -> float:
    """value clipped to bounds and rounded to the slider step (what a slider showing it would send back)."""
    value = min(max(float(value), bounds[0]), bounds[1])
    return round(round(value / step) * step, 6)


def _moved(value: float, shown: float, step: float) -> bool:
    """Whether a slider was moved off the value it showed (a quarter step of slack for float transport)."""
    return abs(float(value) - shown) > step / 4


@dataclasses.dataclass(frozen=True)
class Controls:
    """Slider values: pose in degrees, NUM_EXP_SLIDERS expression coefficients, ambient / strength in SH units,
    light azimuth / elevation in degrees."""

    yaw: float
    pitch: float
    roll: float
    exp: tuple[float, ...]
    ambient: float
    light_strength: float
    light_azimuth: float
    light_elevation: float

    def as_list(self) -> list[float]:
        """[yaw, pitch, roll, exp_0..exp_K-1, ambient, strength, azimuth, elevation]: the studio's slider order."""
        return [self.yaw, self.pitch, self.roll, *self.exp, self.ambient, self.light_strength, self.light_azimuth,
                self.light_elevation]  # fmt: skip

    @classmethod
    def from_list(cls, values: list[float]) -> Controls:
        """Inverse of `as_list`."""
        values = [float(v) for v in values]
        if len(values) != 7 + NUM_EXP_SLIDERS:
            raise UserError(f"expected {7 + NUM_EXP_SLIDERS} slider values, got {len(values)}")
        k = 3 + NUM_EXP_SLIDERS
        return cls(*values[:3], tuple(values[3:k]), *values[k:])


def light_vectors(gamma: np.ndarray) -> np.ndarray:
    """Per-colour first-order light L_c [3, 3] (x, y, z) from gamma [27] (channel-major [3 colour, 9 bands])."""
    g = np.asarray(gamma, dtype=np.float64).reshape(3, 9)
    return np.stack([-g[:, 3], -g[:, 1], g[:, 2]], axis=1)


def controls_from_p(p: np.ndarray) -> Controls:
    """The slider values that show p [257] (clipped to the slider ranges, rounded to their steps)."""
    p = np.asarray(p, dtype=np.float64)
    angle = p[COEFF_SLICES["angle"]]
    pose = {name: _snap(math.degrees(angle[i]), ANGLE_RANGES[name], ANGLE_STEP) for name, i in ANGLE_INDEX.items()}
    exp = tuple(_snap(v, EXP_RANGE, EXP_STEP) for v in p[COEFF_SLICES["exp"]][:NUM_EXP_SLIDERS])
    gamma = p[COEFF_SLICES["gamma"]]
    light = light_vectors(gamma).mean(axis=0)
    strength = float(np.linalg.norm(light))
    azimuth = math.degrees(math.atan2(light[0], light[2])) if strength > 0 else 0.0
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, light[1] / strength)))) if strength > 0 else 0.0
    ambient = float(gamma.reshape(3, 9)[:, 0].mean()) + INIT_LIT
    return Controls(pose["yaw"], pose["pitch"], pose["roll"], exp, _snap(ambient, AMBIENT_RANGE, LIGHT_STEP),
                    _snap(strength, STRENGTH_RANGE, LIGHT_STEP), _snap(azimuth, AZIMUTH_RANGE, LIGHT_ANGLE_STEP),
                    _snap(elevation, ELEVATION_RANGE, LIGHT_ANGLE_STEP))  # fmt: skip


def apply_controls(base: np.ndarray, controls: Controls) -> np.ndarray:
    """p [257] float32: base [257] with every moved slider written in; unmoved parts stay base's exact values."""
    base = np.asarray(base, dtype=np.float32)
    if base.shape != (NUM_COEFFS,):
        raise UserError(f"a face is a p of {NUM_COEFFS} coefficients, got shape {list(base.shape)}")
    shown, p = controls_from_p(base), base.copy()
    angle = p[COEFF_SLICES["angle"]]  # views: writing them writes p
    for name, i in ANGLE_INDEX.items():
        if _moved(getattr(controls, name), getattr(shown, name), ANGLE_STEP):
            angle[i] = math.radians(getattr(controls, name))
    exp = p[COEFF_SLICES["exp"]]
    for k, (value, old) in enumerate(zip(controls.exp, shown.exp)):
        if _moved(value, old, EXP_STEP):
            exp[k] = value
    gamma = p[COEFF_SLICES["gamma"]].reshape(3, 9)
    if _moved(controls.ambient, shown.ambient, LIGHT_STEP):
        gamma[:, 0] += np.float32(controls.ambient - (gamma[:, 0].astype(np.float64).mean() + INIT_LIT))
    if (_moved(controls.light_strength, shown.light_strength, LIGHT_STEP)
            or _moved(controls.light_azimuth, shown.light_azimuth, LIGHT_ANGLE_STEP)
            or _moved(controls.light_elevation, shown.light_elevation, LIGHT_ANGLE_STEP)):  # fmt: skip
        az, el = math.radians(controls.light_azimuth), math.radians(controls.light_elevation)
        target = controls.light_strength * np.array([math.cos(el) * math.sin(az), math.sin(el),
                                                     math.cos(el) * math.cos(az)])  # fmt: skip
        dx, dy, dz = (target - light_vectors(gamma).mean(axis=0)).astype(np.float32)
        gamma[:, 3] -= dx  # L_c = (-g3, -g1, g2): shift every colour's light by the same vector
        gamma[:, 1] -= dy
        gamma[:, 2] += dz
    return p


# ------------------------------------------------------------------------------------------------------------------
# Faces: the base p the sliders edit, and where it came from.


@dataclasses.dataclass
class Face:
    """The face being edited: base p [257] float32 (None for an unconditional G), optionally a photo's own latent
    ws [num_ws, w_dim] (then z seed and truncation do not apply), and a label saying where it came from."""

    p: np.ndarray | None
    label: str
    ws: np.ndarray | None = None


@dataclasses.dataclass
class Inverted:
    """What a photo inversion returns: p [257] float32 and, if it fits the latent too, ws [num_ws, w_dim]."""

    p: np.ndarray
    ws: np.ndarray | None = None
    note: str = ""  # e.g. which face of several was used


Inverter = Callable[[PIL.Image.Image], Inverted]  # an aligned RGB photo -> its p (and latent)


def read_p_file(path: str) -> np.ndarray:
    """p [257] float32 from a .npy holding exactly one p ([257], [1, 257], [1, 1, 257]); UserError otherwise."""
    name = os.path.basename(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # any reason numpy cannot parse it: say so in one line
        raise UserError(f"cannot read {name} as a .npy array of 3DMM coefficients ({type(e).__name__})") from e
    if not isinstance(array, np.ndarray) or array.size != NUM_COEFFS or array.dtype.kind not in "fiu":
        raise UserError(f"{name}: expected one p of {NUM_COEFFS} numbers, got shape {list(np.shape(array))}")
    return check_coeffs(array.reshape(NUM_COEFFS), name)  # finite, each group in the dataset labels' range


def fr_inverter(reconstructor: torch.nn.Module, resolution: int, device: torch.device) -> Inverter:
    """Inverter estimating p of an aligned square crop with FR (as `generate.py reference`); the latent stays z's."""

    def invert(photo: PIL.Image.Image) -> Inverted:
        if photo.width != photo.height:
            raise UserError(f"the photo is {photo.width}x{photo.height}: upload an aligned square face crop")
        photo = photo.resize((resolution, resolution), PIL.Image.Resampling.BICUBIC)
        image = torch.from_numpy(np.asarray(photo, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)
        return Inverted(cg.reconstruct(reconstructor, image[None], device)[0].numpy())

    return invert


def inversion_inverter(G: torch.nn.Module, reconstructor: Callable[[], torch.nn.Module], renderer: torch.nn.Module,
                       device: torch.device, steps: int) -> Inverter:  # fmt: skip
    """Inverter running `generate.py invert`'s pipeline on an uploaded photo: p and ws, both fitted to the photo.

    The photo is detected and aligned to G's framing (the faces extra; without it, or when a square image shows no
    detectable face, it is taken as an aligned crop and resized), p starts at FR's estimate, then `steps` Adam steps
    fit w (W space) and the noise maps. The studio then renders (p, ws) with the page's noise mode, so sliders edit
    p of the photo while its latent stays fitted.
    """
    from deep3drecon.landmarks import NoFaceError
    from generation.inversion import InversionOptions, image_to_target, invert_image, prepare_photo

    detector: list = []  # built on the first photo, then reused

    def invert(photo: PIL.Image.Image) -> Inverted:
        res = G.img_resolution
        if not detector:
            from deep3drecon.landmarks import load_face_detector

            try:
                detector.append(load_face_detector(device))
            except UserError:
                detector.append(None)  # no faces extra: only aligned crops can be used
        target, note = None, ""
        if detector[0] is not None:
            try:
                prepared = prepare_photo(photo, res, detector=detector[0])
                target = prepared.target
                if (prepared.num_faces or 0) > 1:
                    x, y = np.asarray(prepared.landmarks).mean(axis=0)
                    note = f"{prepared.num_faces} faces found, used the largest, centred at x={x:.0f}, y={y:.0f}"
            except NoFaceError:
                if photo.width != photo.height:
                    raise
        if target is None:  # no detector, or a square image with no face found: take it as an aligned crop
            if photo.width != photo.height:
                raise UserError(f"the photo is {photo.width}x{photo.height}: upload an aligned square face crop, or "
                                'install the face detector (pip install -e ".[faces]") to align raw photos')
            target = image_to_target(photo.resize((res, res), PIL.Image.Resampling.BICUBIC))
        result = invert_image(G, reconstructor(), renderer, target, InversionOptions(steps=steps), progress=False)
        return Inverted(result.p.numpy().astype(np.float32), result.ws.numpy().astype(np.float32), note)

    return invert


# ------------------------------------------------------------------------------------------------------------------
# Rendering and saving.


@dataclasses.dataclass
class View:
    """One rendered state. image / render / fr_render: uint8 [R, R, 3] (render: rep(p)'s shaded part; fr_render:
    rep(FR(image)), None unless asked); p [257] (None if unconditional); z [z_dim] (None for a photo latent);
    ws [num_ws, w_dim] as used; consistency = mean (rep(FR(image)) - rep(p))^2 (the eq. 6 distance) or None."""

    image: np.ndarray
    render: np.ndarray | None
    fr_render: np.ndarray | None
    p: np.ndarray | None
    z: np.ndarray | None
    ws: np.ndarray
    z_seed: int
    psi: float
    noise_mode: str
    consistency: float | None = None


class Studio:
    """What the page works with: G, the renderer and p bank, an optional FR (built on first use) and inverter.

    `renderer` and `bank` [M, 257] are None for an unconditional G. `reconstructor` is a zero-argument factory of
    the frozen FR (FaceReconstructor), called once when the FR view or a photo first needs it; `inverter` is an
    `Inverter`, or None to estimate a photo's p with FR (`fr_inverter`).
    """

    def __init__(self, G: torch.nn.Module, renderer: torch.nn.Module | None, bank: torch.Tensor | None,
                 device: torch.device, network: str, outdir: str,
                 reconstructor: Callable[[], torch.nn.Module] | None = None,
                 inverter: Inverter | None = None) -> None:  # fmt: skip
        if G.needs and (renderer is None or bank is None):
            raise UserError("a 3DMM-conditional snapshot needs a renderer and a p bank")
        self.G, self.renderer, self.bank, self.device = G, renderer, bank, device
        self.network, self.outdir = network, outdir
        self._make_reconstructor, self._reconstructor, self._inverter = reconstructor, None, inverter

    @property
    def conditional(self) -> bool:
        """Whether G takes p (else only z, truncation and noise can be edited)."""
        return bool(self.G.needs)

    @property
    def has_fr(self) -> bool:
        """Whether an FR is available for the re-estimate view and for photos."""
        return self.conditional and self._make_reconstructor is not None

    @property
    def can_invert(self) -> bool:
        """Whether uploading a photo can give a face (a plugged-in inverter, or FR)."""
        return self.conditional and (self._inverter is not None or self.has_fr)

    def reconstructor(self) -> torch.nn.Module:
        """The frozen FR, built on first call."""
        if not self.has_fr:
            raise UserError("no face reconstructor (FR) is available for this snapshot")
        if self._reconstructor is None:
            self._reconstructor = self._make_reconstructor()
        return self._reconstructor

    # ---------------------------------------------------------------- faces
    def bank_row(self, source: str, index: int) -> int:
        """Bank row of a face source: 'seed' s picks generate.py's row for seed s, 'dataset row' i is row i."""
        if not self.conditional:
            raise UserError("this snapshot is unconditional: there is no p to load")
        index, size = int(index), len(self.bank)
        if source == "seed":
            if not 0 <= index < 2**32:
                raise UserError(f"seed {index} must be in 0..2**32-1")
            return cg.p_index(index, size)
        if source == "dataset row":
            if not 0 <= index < size:
                raise UserError(f"dataset row {index} is out of range: the p bank has rows 0..{size - 1}")
            return index
        raise UserError(f"face source must be one of {', '.join(FACE_SOURCES)}, not {source!r}")

    def face_from_bank(self, source: str, index: int) -> Face:
        """The whole p of a bank row (identity, texture, expression, pose, light, translation)."""
        row = self.bank_row(source, index)
        return Face(self.bank[row].numpy().copy(), f"{source} {int(index)} (bank row {row})")

    def with_identity(self, face: Face, source: str, index: int) -> Face:
        """face with identity (shape + albedo: id and tex) from a bank row; expression, pose and light stay."""
        row = self.bank_row(source, index)
        p = face.p.copy()
        for name in cg.ATTR_GROUPS["id"]:
            p[COEFF_SLICES[name]] = self.bank[row, COEFF_SLICES[name]].numpy()
        return Face(p, f"{face.label}, identity of {source} {int(index)} (bank row {row})", face.ws)

    def face_from_p_file(self, path: str) -> Face:
        """A face from an uploaded .npy p (e.g. one the studio saved)."""
        if not self.conditional:
            raise UserError("this snapshot is unconditional: it takes no p")
        return Face(read_p_file(path), os.path.basename(path))

    def face_from_photo(self, path: str) -> Face:
        """A face from an uploaded photo: the inverter's p (and latent), or FR's estimate of p."""
        if not self.can_invert:
            raise UserError("photos need a face reconstructor or an inversion, which this snapshot has not")
        photo = read_photo(path, os.path.basename(path))
        inverter = self._inverter or fr_inverter(self.reconstructor(), self.G.img_resolution, self.device)
        result = inverter(photo)
        ws = None if result.ws is None else np.asarray(result.ws, dtype=np.float32)
        if ws is not None and ws.shape != (self.G.num_ws, self.G.w_dim):
            expected = [self.G.num_ws, self.G.w_dim]
            raise UserError(f"the inversion gave ws of shape {list(ws.shape)}, expected {expected}")
        label = os.path.basename(path) + (f" ({result.note})" if result.note else "")
        return Face(np.asarray(result.p, dtype=np.float32).reshape(NUM_COEFFS), label, ws)

    # ---------------------------------------------------------------- rendering
    @torch.no_grad()
    def render(self, face: Face, controls: Controls | None, z_seed: int, psi: float, noise_mode: str,
               with_fr: bool = False) -> View:  # fmt: skip
        """G(z(z_seed) or the face's ws, rep(p)) with p = the face edited by controls, through cg.Sampler."""
        if noise_mode not in NOISE_MODES:
            raise UserError(f"noise mode must be one of {', '.join(NOISE_MODES)}, not {noise_mode!r}")
        psi = check_number(psi, "truncation psi", -2, 2)  # the API takes any number; NaN/inf would render garbage
        z_seed = int(check_number(z_seed, "z seed", 0, 2**32 - 1))
        if not 0 <= z_seed < 2**32:
            raise UserError(f"z seed {z_seed} must be in 0..2**32-1")
        sampler = cg.Sampler(self.G, self.renderer, self.device, truncation_psi=float(psi), noise_mode=noise_mode,
                             batch=1, progress=False)  # fmt: skip
        p = None
        if self.conditional:
            p = face.p if controls is None else apply_controls(face.p, controls)
            p = check_coeffs(p, f"the p of {face.label}")  # as the dataset's labels: finite, plausible per group
        p_batch = None if p is None else torch.from_numpy(p)[None]
        if face.ws is not None:
            ws, z = torch.from_numpy(face.ws)[None], None
        else:
            ws, z = sampler.mapping([z_seed], p_batch), cg.seed_z([z_seed], self.G.z_dim)[0].numpy()
        tiles = sampler.synthesize(ws, p_batch, [z_seed])  # the noise seed is the z seed, as in generate.py
        view = View(cg.to_uint8(tiles.images[0]), None if tiles.renders is None else cg.to_uint8(tiles.renders[0]),
                    None, p, z, ws[0].cpu().numpy(), z_seed, float(psi), noise_mode)  # fmt: skip
        if with_fr and self.has_fr:
            p_hat = self.reconstructor()(tiles.images[:1].to(self.device)).float()
            rep_hat, rep = sampler.render(p_hat), sampler.render(p_batch)
            view.fr_render = cg.to_uint8(rep_render(rep_hat)[0].cpu())
            view.consistency = float(rep_distance(rep_hat, rep).mean())  # eq. 5's distance, as the loss
        return view

    def save(self, view: View, face: Face) -> list[str]:
        """Write studio-NNNN.png (the image), -p.npy ([1, 257]: a p bank for generate.py), -z.npy ([1, z_dim]) or,
        for a photo latent, -ws.npy ([1, num_ws, w_dim]), and .json (settings, the generate.py command)."""
        os.makedirs(self.outdir, exist_ok=True)
        taken = {name.split(".")[0].split("-")[1] for name in os.listdir(self.outdir) if name.startswith("studio-")}
        number = next(k for k in range(len(taken) + 1) if f"{k:04d}" not in taken)
        stem = os.path.join(self.outdir, f"studio-{number:04d}")  # a new number: nothing is ever replaced
        written = [save_image(f"{stem}.png", view.image, overwrite=False)]
        meta = dict(network=self.network, face=face.label, z_seed=view.z_seed, truncation_psi=view.psi,
                    noise_mode=view.noise_mode)  # fmt: skip
        if view.p is not None:
            written.append(_save_npy(f"{stem}-p.npy", view.p.reshape(1, NUM_COEFFS)))
        if view.z is not None:
            written.append(_save_npy(f"{stem}-z.npy", view.z.reshape(1, -1)))
            bank = f" --p-bank {stem}-p.npy" if view.p is not None else ""
            meta["generate_command"] = (f"python generate.py images --network {self.network}{bank} --seeds "
                                        f"{view.z_seed} --trunc {view.psi} --noise-mode {view.noise_mode} "
                                        f"--save-images --outdir OUT")  # fmt: skip
        else:
            written.append(_save_npy(f"{stem}-ws.npy", view.ws[None]))
        written.append(write_bytes(f"{stem}.json", json.dumps(meta, indent=2).encode(), overwrite=False))
        return written


def _save_npy(path: str, array: np.ndarray) -> str:
    with output_file(path, overwrite=False) as f:
        np.save(f, array)
    return path
