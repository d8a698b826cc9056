"""Stand-ins for the metric tests: an oracle generator/FR pair that encode p in pixels, and a list dataset.

rep(p) stores p / 4 in the first 257 entries of the flattened rep; the generator copies the first 768 rep entries
into its image (adding z-dependent pixels after the code, and optionally leaking exp into id); the oracle FR reads
the code back (x 4). Division by 4 is exact in binary, so the float pipeline reproduces p bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.context import COEFF_SLICES, MetricContext
from metrics.features import RandomFeatureExtractor
from training.condition import ConditionBank

RES = 16
SCALE = 4.0


def make_rep(p: torch.Tensor) -> torch.Tensor:
    """p [N, 257] -> rep [N, 9, RES, RES] with p / SCALE in the first 257 entries."""
    rep = torch.zeros(p.shape[0], 9 * RES * RES, dtype=torch.float32, device=p.device)
    rep[:, : p.shape[1]] = p / SCALE
    return rep.reshape(-1, 9, RES, RES)


class OracleGenerator(torch.nn.Module):
    """Conditioned stand-in G: image code = rep code (+ leak * exp added to the first 64 id entries).

    z_leak adds a z-dependent offset to the id code; noise_leak adds the per-pixel noise (torch.randn for
    noise_mode="random", a fixed buffer for "const") to the id code and to the pixels after the code, like
    StyleGAN's noise inputs. With either leak, DS sets only stay clean if z and noise are fixed within a set.
    """

    def __init__(self, leak: float = 0.0, z_dim: int = 4, z_leak: float = 0.0, noise_leak: float = 0.0):
        super().__init__()
        self.z_dim, self.img_resolution, self.needs, self.leak = z_dim, RES, ("rep",), leak
        self.z_leak, self.noise_leak = z_leak, noise_leak
        gen = torch.Generator().manual_seed(1)
        self.register_buffer("wz", torch.randn(z_dim, 3 * RES * RES - 257, generator=gen))
        self.register_buffer("wz_id", torch.randn(z_dim, 80, generator=gen))
        self.register_buffer("noise_const", torch.randn(3 * RES * RES, generator=gen))

    def forward(self, z, cond=None, truncation_psi=1, noise_mode="const"):
        flat = cond.rep.flatten(1)[:, : 3 * RES * RES].clone()
        ids, exps = COEFF_SLICES["id"], COEFF_SLICES["exp"]
        flat[:, ids.start : ids.start + 64] += self.leak * flat[:, exps]
        flat[:, ids] += self.z_leak * torch.tanh(z @ self.wz_id)
        flat[:, 257:] = torch.tanh(z @ self.wz) * 0.9
        if self.noise_leak:
            noise = torch.randn(flat.shape) if noise_mode == "random" else self.noise_const.expand_as(flat)
            flat[:, ids] += self.noise_leak * noise[:, ids]
            flat[:, 257:] += self.noise_leak * noise[:, 257:]
        return flat.reshape(-1, 3, RES, RES)


class OracleFR(torch.nn.Module):
    """Stand-in FR: img [N, 3, RES, RES] in [-1, 1] -> the coefficient code [N, 257] (+ optional estimation noise).

    The noise is a deterministic function of the whole image, like a real FR's error: it changes whenever any
    pixel changes, so factors that are held fixed still show a small spread.
    """

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.noise = noise
        self.register_buffer("mix", torch.randn(3 * RES * RES, 257, generator=torch.Generator().manual_seed(2)))

    def forward(self, img):
        return img.flatten(1)[:, :257] * SCALE + self.noise * torch.sin(30 * img.flatten(1) @ self.mix)


class CodeBank(ConditionBank):
    """ConditionBank whose rep(p) is the invertible code `make_rep` above (what the stand-in G and FR read)."""

    def __init__(self, p_bank: np.ndarray, cache_mb: float = 0.0, code=None) -> None:
        self.code = code or make_rep
        super().__init__(p_bank, torch.nn.Identity(), RES, cache_mb=cache_mb)  # Identity: "can render"

    def render(self, p: torch.Tensor) -> torch.Tensor:
        return self.code(p)


class ListDataset:
    """ImageLabelDataset stand-in: uint8 images [3, RES, RES] and float32 labels [257]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, path: str | None = None):
        self.images, self.labels, self.path = images, labels, path
        self.name, self.resolution = "standin", RES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def random_bank(num: int, seed: int = 0) -> np.ndarray:
    """Coefficient bank [num, 257] float32 in [-3, 3] with non-zero factor means (the DS normaliser)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, size=(num, 257)) + 0.8).clip(-3, 3).astype(np.float32)


@pytest.fixture
def standins():
    """Namespace-like dict of the stand-in classes and helpers."""
    return {
        "Generator": OracleGenerator,
        "FR": OracleFR,
        "Dataset": ListDataset,
        "make_rep": make_rep,
        "CodeBank": CodeBank,
        "bank": random_bank,
        "RES": RES,
    }


@pytest.fixture
def make_ctx(tmp_path):
    """Builds a MetricContext over the stand-ins (random feature extractor, no workers, tmp cache)."""

    def build(leak: float = 0.0, num_images: int = 40, fr_noise: float = 0.0, z_leak: float = 0.0,
              noise_leak: float = 0.0, **overrides) -> MetricContext:
        rng = np.random.default_rng(3)
        images = rng.integers(0, 256, size=(num_images, 3, RES, RES), dtype=np.uint8)
        bank = random_bank(64)
        kwargs = dict(
            G=OracleGenerator(leak, z_leak=z_leak, noise_leak=noise_leak),
            dataset=ListDataset(images, bank[:num_images] if num_images <= 64 else random_bank(num_images)),
            bank=CodeBank(bank),
            reconstructor=OracleFR(fr_noise),
            batch_size=8,
            cache_dir=str(tmp_path / "cache"),
            feature_extractor_factory=lambda device: RandomFeatureExtractor(8, seed=0, device=device),
            num_workers=0,
        )
        kwargs.update(overrides)
        return MetricContext(**kwargs)

    return build
