"""Image feature extractors for FID/KID: the TF-2015 Inception-v3 (via torch-fidelity) and a random stand-in.

Every extractor follows the `FeatureExtractor` protocol: uint8 images [N, 3, H, W] in [0, 255] go in, float64
features [N, D] come out on the same device. Weights are never downloaded while tests run: the Inception
weights come from a local file or from torch-fidelity's own torch-hub cache, downloaded at most once there.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from torch_utils.errors import UserError, first_line
from torch_utils.progress import is_terminal

# torch-fidelity's conversion of the TF graph "inception-2015-12-05" (pool3 = 2048-d, the FID features).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAME = os.path.basename(INCEPTION_URL)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 images [N, 3, H, W] in [0, 255] to float64 features [N, feature_dim] on the same device.

    `name` identifies the network and weights; it is part of the real-statistics cache key, so two extractors
    with different weights must have different names.
    """

    name: str
    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


FeatureExtractorFactory = Callable[[torch.device], FeatureExtractor]


def images_to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Quantises GAN images [N, C, H, W] float in [-1, 1] to uint8 [N, C, H, W] in [0, 255].

    Same mapping as the stylegan2-ada metrics (x * 127.5 + 128, clamped, truncated), i.e. x * 127.5 + 127.5
    rounded to nearest: images are quantised exactly once before the detector, as if saved to PNG.
    """
    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    """Validates uint8 [N, C, H, W]; repeats single-channel images to 3 channels (as the reference pipeline)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f"feature extractors take uint8 images [N, 3, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[1] != 3:
        raise UserError(f"feature extractors take 1- or 3-channel images, got {images.shape[1]} channels")
    return images


def resolve_inception_weights(path: str | None = None, download: bool = True) -> str:
    """Returns a local path to the Inception-v3 FID weights (torch-fidelity's .pth state dict).

    Order: an explicit `path` (must exist); torch-fidelity's own cache (torch hub `checkpoints/` folder,
    shared with torch-fidelity itself); else, if `download`, fetch torch-fidelity's release file into that cache
    once. Raises UserError naming the file and how to provide it when none is available.
    """
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(
                f"Inception weights not found at {path}; pass the {INCEPTION_FILENAME} file from {INCEPTION_URL}"
            )
        return path
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILENAME)
    if os.path.isfile(cached):
        return cached
    if not download:
        raise UserError(f"Inception weights not in {cached}; download {INCEPTION_URL} there or pass a local path")
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    try:
        bar = is_terminal(sys.stderr)  # torch.hub's tqdm bar only on a terminal; a log gets this one line
        if not bar:
            print(f"downloading {INCEPTION_URL} to {cached} ...", file=sys.stderr, flush=True)
        torch.hub.download_url_to_file(INCEPTION_URL, cached, progress=bar)
    except Exception as exc:  # network errors vary by platform; one clear line for the user
        raise UserError(f"could not download {INCEPTION_URL} ({exc}); place the file at {cached} by hand") from exc
    return cached


def load_inception_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Opens `path` once and reads it with torch's weights-only unpickler: name -> tensor, nothing else.

    Raises UserError (naming the file) for anything that is not a plain state dict of tensors.
    """
    try:
        with open(path, "rb") as f:
            state_dict = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused pickle, a truncated file, an unreadable path: one line for the user
        raise UserError(f"{path} is not a plain state dict of Inception weights ({first_line(exc)})") from exc
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise UserError(f"{path} is not a state dict of tensors (name -> tensor)")
    return state_dict


class InceptionV3Features(torch.nn.Module):
    """TF-2015 Inception-v3 pool3 features (2048-d) through torch-fidelity: uint8 [N, 3, H, W] -> float64 [N, 2048].

    torch-fidelity resizes to 299x299 with its re-implementation of TF1's bilinear resize and normalises with
    (x - 128) / 128 like the TF graph, so features match the reference FID network to float precision.
    """

    name = "inception-2015-12-05"
    feature_dim = 2048

    def __init__(self, weights_path: str | None = None, device: torch.device | str = "cpu", download: bool = True):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise UserError("FID/KID need torch-fidelity: pip install torch-fidelity") from exc
        path = resolve_inception_weights(weights_path, download=download)
        state_dict = load_inception_state_dict(path)
        # torch-fidelity would open a weights *path* again with full unpickling (a file swapped after our check
        # would run code). It gets an in-memory file instead, serialised here from the plain tensors just loaded:
        # the file on disk is opened once, by the weights-only loader, and nothing from it reaches a full unpickler.
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer)
        self.to(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 [N, 3, H, W] in [0, 255] -> features float64 [N, 2048]."""
        (features,) = self.net(_check_images(images))
        return features.to(torch.float64)


class RandomFeatureExtractor(torch.nn.Module):
    """Small random-weight conv net with the FeatureExtractor interface, for tests and smoke runs ONLY.

    uint8 [N, 3, H, W] -> float64 [N, feature_dim]. Deterministic for a given seed; its FID values are not
    comparable with Inception FIDs (the name says so and keys its own cache entries).
    """

    def __init__(self, feature_dim: int = 16, seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.feature_dim = feature_dim
        self.name = f"random-features-d{feature_dim}-s{seed}"
        self.register_buffer("w1", torch.randn(16, 3, 3, 3, generator=gen) / 3.0)
        self.register_buffer("w2", torch.randn(feature_dim, 16, 3, 3, generator=gen) / 12.0)
        self.to(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 [N, 3, H, W] in [0, 255] -> features float64 [N, feature_dim]."""
        x = _check_images(images).to(self.w1.device, torch.float32) / 127.5 - 1
        x = F.adaptive_avg_pool2d(x, 16)
        x = F.relu(F.conv2d(x, self.w1, padding=1))
        x = F.conv2d(x, self.w2, stride=2, padding=1)
        return x.mean(dim=(2, 3)).to(torch.float64)


def inception_factory(weights_path: str | None = None, download: bool = True) -> FeatureExtractorFactory:
    """Returns a factory device -> InceptionV3Features using `weights_path` (None = torch-fidelity's cache)."""
    return lambda device: InceptionV3Features(weights_path, device=device, download=download)
