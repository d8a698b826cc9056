"""Offline 5-point face landmarks (Deep3DFaceRecon's convention) from an MTCNN cascade.

Deep3DFaceRecon aligns photos from MTCNN's five points, so this module runs the same kind of detector: a three-stage
cascade (P-Net proposals over an image pyramid, R-Net refinement on 24 x 24 crops, O-Net boxes + landmarks on
48 x 48 crops; Zhang et al. 2016). The network code here is this project's own; the weights are the
MTCNN weights that the MIT-licensed `facenet-pytorch` wheel ships as `facenet_pytorch/data/{pnet,rnet,onet}.pt`
(plain state dicts, read with `torch.load(weights_only=True)`; the package's code is never imported). Nothing is
downloaded, so an offline machine gets the same landmarks: `pip install -e ".[faces]"`.

Output convention (as `deep3drecon.align` expects): [5, 2] float64 (x, y) y-DOWN pixels of the source image, rows
eye on the image's left, eye on the image's right, nose tip, mouth corner image-left, mouth corner image-right.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from torch_utils.errors import UserError, first_line
from torch_utils.outputs import output_file

__all__ = [
    "FACES_EXTRA_HINT",
    "FaceDetection",
    "FaceDetector",
    "NoFaceError",
    "detect_landmarks",
    "find_or_detect_landmarks",
    "landmarks_path_for",
    "load_face_detector",
    "write_landmarks",
]

FACES_EXTRA_HINT = 'install the face detector with pip install -e ".[faces]" or pass landmark files'
_WEIGHT_PACKAGE = "facenet_pytorch"
# Cascade settings of the original MTCNN release: score thresholds per stage, pyramid factor, smallest face (px).
_THRESHOLDS = (0.6, 0.7, 0.7)
_PYRAMID_FACTOR = 0.709
_MIN_FACE = 20


class NoFaceError(UserError):
    """The detector found no face in an image."""


# ----------------------------------------------------------------------------------------------------------------
# The three networks (parameter names follow the shipped state dicts).


class _PNet(nn.Module):
    """Proposal net, fully convolutional: x [N, 3, H, W] normalised -> (reg [N, 4, h, w], face prob [N, h, w])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)[:, 1]


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, W * H * C]: the dense layers were trained (in Caffe) on this W-major order."""
    return x.permute(0, 3, 2, 1).reshape(len(x), -1)


class _RNet(nn.Module):
    """Refinement net: 24 x 24 crops [N, 3, 24, 24] -> (reg [N, 4], face prob [N])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)[:, 1]


class _ONet(nn.Module):
    """Output net: 48 x 48 crops -> (reg [N, 4], landmarks [N, 10] = x0..x4, y0..y4 in box units, prob [N])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)[:, 1]


# ----------------------------------------------------------------------------------------------------------------
# Box helpers. Boxes are [K, 4] (x0, y0, x1, y1) in continuous edge coordinates of the source image.


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by_min: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression -> kept indices (highest score first); overlap = IoU, or over the smaller box."""
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lo = torch.maximum(boxes[i, :2], boxes[rest, :2])
        hi = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (hi - lo).clamp(min=0).prod(dim=1)
        denom = torch.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / denom.clamp(min=1e-9) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply the networks' box offsets reg [K, 4] (fractions of the box width/height) to boxes [K, 4]."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + reg * size


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square of side max(w, h) about its centre (the cascade's crops are square)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample boxes [K, 4] of image [1, 3, H, W] to [K, 3, size, size]; zeros outside the image (as MTCNN pads).

    roi_align averages a grid of bilinear samples per output pixel, i.e. an area-like resampling of the box.
    """
    from torchvision.ops import roi_align

    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=boxes.dtype), boxes], dim=1)
    return roi_align(image, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-range pixels -> the cascade's input range (x - 127.5) / 128."""
    return (pixels - 127.5) / 128.0


# ----------------------------------------------------------------------------------------------------------------
# The detector.


@dataclass(frozen=True)
class FaceDetection:
    """One face: box (x0, y0, x1, y1) source pixels, O-Net score in [0, 1], landmarks [5, 2] (x, y) y-down."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        """Box area in source pixels squared (faces are ranked by it)."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class FaceDetector(nn.Module):
    """The MTCNN cascade; `detect(image)` -> list of FaceDetection, largest face first."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = _PNet(), _RNet(), _ONet()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def detect(self, image: Image.Image, min_face: int = _MIN_FACE) -> list[FaceDetection]:
        """All faces in a PIL image (any mode; converted to RGB), sorted by box area, largest first."""
        device = next(self.parameters()).device
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)  # [1, 3, H, W] in [0, 255]
        boxes, scores = self._propose(pixels, min_face)
        if len(boxes):
            boxes, scores = self._refine(pixels, boxes)
        if not len(boxes):
            return []
        # Stage 3: O-Net boxes, scores and landmarks (landmarks are fractions of the square box it saw).
        reg, marks, prob = self.onet(_normalise(_crops(pixels, boxes.to(device), 48)))
        reg, marks, prob = reg.cpu(), marks.cpu(), prob.cpu()
        ok = prob > _THRESHOLDS[2]
        boxes, reg, marks, prob = boxes[ok], reg[ok], marks[ok], prob[ok]
        size = boxes[:, 2:] - boxes[:, :2]
        points = torch.stack([boxes[:, :1] + marks[:, :5] * size[:, :1],
                              boxes[:, 1:2] + marks[:, 5:] * size[:, 1:]], dim=2)  # fmt: skip
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, prob, 0.7, by_min=True)
        found = [FaceDetection(tuple(float(v) for v in boxes[k]), float(prob[k]), points[k].double().numpy())
                 for k in keep]  # fmt: skip
        return sorted(found, key=lambda f: f.area, reverse=True)

    def _propose(self, pixels: torch.Tensor, min_face: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over a pyramid; a 12 x 12 window at stride 2 per output cell -> boxes [K, 4], scores [K]."""
        height, width = pixels.shape[-2:]
        scale = 12.0 / min_face  # a min_face face becomes P-Net's 12 px window
        all_boxes, all_scores, all_reg = [], [], []
        while min(height, width) * scale >= 12:
            size = (max(12, int(np.ceil(height * scale))), max(12, int(np.ceil(width * scale))))
            reg, prob = self.pnet(_normalise(F.interpolate(pixels, size=size, mode="area")))
            iy, ix = torch.nonzero(prob[0] >= _THRESHOLDS[0], as_tuple=True)
            if len(iy):
                # Window edges in resized pixels -> source pixels (per-axis scale of the actual resize).
                sx, sy = size[1] / width, size[0] / height
                cell = torch.stack([2 * ix, 2 * iy, 2 * ix + 12, 2 * iy + 12], dim=1).float().cpu()
                boxes = cell / torch.tensor([sx, sy, sx, sy])
                scores = prob[0, iy, ix].cpu()
                keep = _nms(boxes, scores, 0.5)
                all_boxes.append(boxes[keep])
                all_scores.append(scores[keep])
                all_reg.append(reg[0][:, iy, ix].T.cpu()[keep])
            scale *= _PYRAMID_FACTOR
        if not all_boxes:
            return torch.zeros(0, 4), torch.zeros(0)
        boxes, scores, reg = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_reg)
        keep = _nms(boxes, scores, 0.7)  # across scales, on the raw windows; then the offsets
        return _square(_regress(boxes[keep], reg[keep])), scores[keep]

    def _refine(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net rescoring and box regression on 24 x 24 crops -> square boxes [K, 4], scores [K]."""
        reg, prob = self.rnet(_normalise(_crops(pixels, boxes.to(pixels.device), 24)))
        reg, prob = reg.cpu(), prob.cpu()
        ok = prob > _THRESHOLDS[1]
        boxes, reg, prob = boxes[ok], reg[ok], prob[ok]
        keep = _nms(boxes, prob, 0.7)
        return _square(_regress(boxes[keep], reg[keep])), prob[keep]


def _weights_dir() -> Path:
    """Folder holding the shipped pnet/rnet/onet.pt, found without importing their package."""
    spec = importlib.util.find_spec(_WEIGHT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"no face detector available: {FACES_EXTRA_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_face_detector(device: torch.device | str = "cpu",
                       weights_dir: str | os.PathLike | None = None) -> FaceDetector:  # fmt: skip
    """The MTCNN cascade with the shipped weights (or pnet/rnet/onet.pt from weights_dir), in eval mode."""
    folder = Path(weights_dir) if weights_dir is not None else _weights_dir()
    detector = FaceDetector()
    for name in ("pnet", "rnet", "onet"):
        path = folder / f"{name}.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            getattr(detector, name).load_state_dict(state)
        except (OSError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"cannot load face detector weights {path}: {str(exc).splitlines()[0]}") from exc
    return detector.to(device)


def detect_landmarks(image: Image.Image, detector: FaceDetector, name: str = "image") -> tuple[np.ndarray, int]:
    """Landmarks [5, 2] (y-down pixels) of the largest face in image, and how many faces were found.

    NoFaceError (one line naming `name`) when there is none.
    """
    faces = detector.detect(image)
    if not faces:
        raise NoFaceError(f"no face found in {name}")
    return faces[0].landmarks, len(faces)


def landmarks_path_for(image_path: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Where detected landmarks of image_path are written: <outdir or the image's folder>/<stem>_landmarks.txt."""
    image_path = Path(image_path)
    return Path(outdir if outdir is not None else image_path.parent) / f"{image_path.stem}_landmarks.txt"


def write_landmarks(path: str | os.PathLike, landmarks: np.ndarray) -> Path:
    """Write landmarks [5, 2] as 5 rows `x y` (y-down pixels); returns the path.

    Written whole or not at all (torch_utils.outputs; a full disk is one line). A file there is replaced: it is only
    ever written where no landmark file was found, and the detector gives the same points again."""
    path = Path(path)
    with output_file(path, overwrite=True) as f:
        np.savetxt(f, np.asarray(landmarks, dtype=np.float64).reshape(-1, 2), fmt="%.2f")
    return path


def check_landmarks(lm: np.ndarray) -> np.ndarray:
    """Validate landmarks: shape [5|68, 2], finite, not all on one point -> float64 [K, 2]; UserError if not."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68):
        raise UserError(f"landmarks must be 5 or 68 rows of 'x y', got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise UserError("landmarks contain NaN/inf")
    if np.ptp(lm, axis=0).max() < 1e-3:
        raise UserError("landmarks are degenerate (all at one point)")
    return lm


def load_landmarks(path: str | os.PathLike) -> np.ndarray:
    """The one reader of landmark files: 5 or 68 rows 'x y' (y-down pixels; space, tab or comma separated, '#'
    comments) -> float64 [K, 2]; UserError naming the file on anything else."""
    try:
        text = Path(path).read_text().replace(",", " ")
        rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return check_landmarks(np.array(rows, dtype=np.float64))
    except (OSError, ValueError) as exc:  # unreadable, ragged or non-numeric rows, bad shape (UserError)
        raise UserError(f"landmarks file {path}: {first_line(exc)}") from None


def find_or_detect_landmarks(image_path: str | os.PathLike, image: Image.Image, detector_factory,
                             outdir: str | os.PathLike | None = None,
                             candidates: list[str | os.PathLike] | None = None) -> tuple[np.ndarray, str]:  # fmt: skip
    """Landmarks [K, 2] (y-down pixels) of a photo and a note on where they came from.

    The first existing file of `candidates` (default `<stem>.txt`, `<stem>_landmarks.txt` beside the photo; 5 or 68
    rows `x y`) is used; otherwise the largest face is detected (detector_factory() -> FaceDetector, called only
    then) and written to <outdir or the photo's folder>/<stem>_landmarks.txt. One-line UserError on a bad file,
    NoFaceError when no face is found, and the faces-extra hint when the detector is not installed.
    """

    image_path = Path(image_path)
    stem = image_path.with_suffix("")
    for candidate in candidates or [f"{stem}.txt", f"{stem}_landmarks.txt"]:
        if os.path.isfile(candidate):
            return load_landmarks(candidate), f"landmarks from {candidate}"
    landmarks, count = detect_landmarks(image, detector_factory(), image_path.name)
    written = write_landmarks(landmarks_path_for(image_path, outdir), landmarks)
    x, y = np.asarray(landmarks).mean(axis=0)
    note = f"; {count} faces found, using the largest (centred at x={x:.0f}, y={y:.0f})" if count > 1 else ""
    return landmarks, f"detected landmarks written to {written}{note}"
