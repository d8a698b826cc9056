"""Weight-free global metrics on the features of a fixed, randomly initialised CNN: KID ("rKID"), density, coverage.

Why (shared/reference/tax_measurement.md section 2): SWD compares pooled 7x7 patches, so it sees spatial layout
only inside one patch; a CNN whose last units see almost the whole image sees global structure and mode
dropping. Naeem et al. (2020) argue for randomly initialised embeddings away from ImageNet-like data, and Lee
et al. (AAAI 2023) find them about as good as trained features and complementary to them; they need no
download. KID (Binkowski et al. 2018) is unbiased at small N, so it can be compared across sample sizes; density
and coverage (Naeem et al. 2020) say whether a gap is fidelity (density < 1) or missing modes (coverage < 1).

The network ("randcnn-v1"), fully specified so that anyone can rebuild it:
- input: uint8 RGB [N, 3, H, W] -> float32 x / 127.5 - 1, resized to 64 x 64 (bilinear, antialiased, no-op at
  64 px);
- four stages of two 3x3 convolutions (zero padding 1, no bias), each followed by ReLU; widths 32, 64, 128, 256;
  2x2 average pooling between stages (64 -> 32 -> 16 -> 8 px); receptive field of the last units 52 px;
- features: the last 8 x 8 x 256 map average-pooled to 2 x 2 (keeps coarse layout: top/bottom, left/right),
  flattened in (channel, row, col) order: D = 1024.
- weights: He-uniform, w ~ U(-b, b) with b = sqrt(6 / fan_in), fan_in = 9 x input channels, drawn layer by layer
  (conv order above, each in [out, in, 3, 3] C order) as (2 u - 1) b from numpy's legacy
  `RandomState(net_seed).random_sample` (MT19937, a stream NumPy keeps fixed) in float64, then cast to float32.
  Only exact IEEE operations are involved, so the weights are bit-identical on every machine; `weights_checksum`
  (SHA-256 of the float32 bytes) identifies them and the tests pin it for net_seed 0.
Values are comparable only within this fixed network (architecture, input size AND init seed): a different net
or seed gives a different scale. Report the mean and spread over a few net seeds (e.g. 0, 1, 2), and never
compare rKID with Inception KID.

Cost: 0.42 GFLOP (211 M multiply-adds) per image, ~10 ms per image on one CPU core; density/coverage need
N_real x (N_real + N_fake) x D float64 multiply-adds for the distances, in chunks of `_DIST_ROWS` rows
(memory ~ _DIST_ROWS x N_real x 8 B). rKID uses metrics.kid (100 subsets of up to 1000 per side by default).

Sensitivity (synthetic 64 px faces, 512 vs 512, net seed 0; rKID x1e3 / density / coverage): real vs real
-0.12 / 0.99 / 0.99; red +20 2.0 / 0.73 / 0.93; quadrant swap 2.0 / 0.25 / 0.37; one of four skin-colour modes
1.5 / 1.07 / 0.63 (fidelity kept, modes dropped). Blind to fine texture at 64 px input: a sigma-1 blur or added
pixel noise stays near the floor, which SWD's finest level sees. Use both metrics.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from metrics.kid import kernel_inception_distance
from torch_utils.errors import UserError

INPUT_SIZE = 64
WIDTHS = (32, 64, 128, 256)
CONVS_PER_STAGE = 2
POOL_GRID = 2  # last map pooled to POOL_GRID x POOL_GRID
FEATURE_DIM = WIDTHS[-1] * POOL_GRID**2
_DIST_ROWS = 1024  # rows of the distance matrix held at once in density_coverage


def random_cnn_weights(net_seed: int = 0) -> list[np.ndarray]:
    """The conv weights of randcnn-v1 for `net_seed`: float32 [out, in, 3, 3] per layer, input to output."""
    rng = np.random.RandomState(net_seed)  # legacy MT19937: stream fixed by NumPy's compatibility policy
    weights, channels = [], 3
    for width in WIDTHS:
        for _ in range(CONVS_PER_STAGE):
            bound = np.sqrt(6.0 / (channels * 9))  # He-uniform for ReLU: Var = 2 / fan_in
            weights.append(((2.0 * rng.random_sample((width, channels, 3, 3)) - 1.0) * bound).astype(np.float32))
            channels = width
    return weights


class RandomCNNFeatures(torch.nn.Module):
    """randcnn-v1 (module docstring): uint8 [N, 3, H, W] in [0, 255] -> float64 features [N, 1024].

    Follows metrics.features.FeatureExtractor (`name`, `feature_dim`, call on uint8 images), so it can also key a
    feature cache. Frozen: no parameters, the weights are buffers.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, net_seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__()
        self.net_seed = net_seed
        self.name = f"randcnn-v1-s{net_seed}-{INPUT_SIZE}px"
        for i, w in enumerate(random_cnn_weights(net_seed)):
            self.register_buffer(f"w{i}", torch.from_numpy(w))
        self.to(device)

    def weights(self) -> list[torch.Tensor]:
        """The conv weights, input to output."""
        return [getattr(self, f"w{i}") for i in range(len(WIDTHS) * CONVS_PER_STAGE)]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 [N, 3, H, W] in [0, 255] (any size) -> features float64 [N, 1024]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UserError(
                f"random features take uint8 RGB images [N, 3, H, W], got {images.dtype} {list(images.shape)}"
            )
        weights = self.weights()
        x = images.to(weights[0].device, torch.float32) / 127.5 - 1
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        for i, w in enumerate(weights):
            if i and i % CONVS_PER_STAGE == 0:
                x = F.avg_pool2d(x, 2)  # between stages
            x = F.relu(F.conv2d(x, w, padding=1))
        return F.adaptive_avg_pool2d(x, POOL_GRID).flatten(1).to(torch.float64)


def weights_checksum(net: RandomCNNFeatures) -> str:
    """SHA-256 hex digest of the float32 weight bytes (little-endian, layer order): identifies the network."""
    digest = hashlib.sha256()
    for w in net.weights():
        digest.update(w.detach().cpu().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def random_features(
    images: np.ndarray | torch.Tensor,
    net_seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    net: RandomCNNFeatures | None = None,
) -> np.ndarray:
    """randcnn-v1 features of uint8 images [N, 3, H, W] in [0, 255] (numpy or torch) -> float64 [N, 1024].

    `net` reuses a built network (its seed and device win over `net_seed` and `device`).
    """
    images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    net = net or RandomCNNFeatures(net_seed, device)
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM))
    return torch.cat([net(images[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)]).numpy()


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] in float64, clamped at 0 (|a|^2 + |b|^2 - 2 a.b)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def density_coverage(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) of fake features [M, D] against real features [N, D].

    A real sample's radius is the distance to its k-th nearest real neighbour (itself excluded: the (k+1)-th
    smallest distance, as clovaai/generative-evaluation-prdc). density = (1 / kM) sum_fakes #{real balls that
    strictly contain the fake} (1 for matching distributions on average, can exceed 1); coverage = share of real
    samples whose ball strictly contains at least one fake. Euclidean distances in float64.
    """
    real, fake = np.asarray(real_feats, np.float64), np.asarray(fake_feats, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {list(real.shape)} and {list(fake.shape)}")
    if k < 1 or len(real) <= k or len(fake) < 1:
        raise UserError(
            f"density/coverage with k={k} need more than k real and at least 1 fake sample, "
            f"have {len(real)} and {len(fake)}"
        )
    radii2 = np.concatenate(
        [
            np.partition(_squared_distances(real[i : i + _DIST_ROWS], real), k, axis=1)[:, k]
            for i in range(0, len(real), _DIST_ROWS)
        ]
    )  # squared k-NN radii [N] (index k: the row's own zero distance is index 0)
    inside = 0
    nearest_fake2 = np.full(len(real), np.inf)
    for i in range(0, len(fake), _DIST_ROWS):
        d2 = _squared_distances(fake[i : i + _DIST_ROWS], real)  # [m, N]
        inside += int((d2 < radii2[None, :]).sum())
        nearest_fake2 = np.minimum(nearest_fake2, d2.min(axis=0))
    return {"density": inside / (k * len(fake)), "coverage": float((nearest_fake2 < radii2).mean())}


def random_feature_scores(
    reals: np.ndarray | torch.Tensor,
    fakes: np.ndarray | torch.Tensor,
    seed: int = 0,
    *,
    net_seed: int = 0,
    k: int = 5,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """{"rkid", "density", "coverage"} of fakes vs reals on randcnn-v1 features (net `net_seed`).

    reals, fakes: uint8 [N, 3, H, W] / [M, 3, H, W] in [0, 255]; quantise fakes to uint8 first. rkid is
    metrics.kid.kernel_inception_distance on these features (`num_subsets` subsets of min(N, M,
    max_subset_size), drawn with `seed`); density/coverage use all features with k nearest neighbours.
    """
    net = RandomCNNFeatures(net_seed, device)
    real = random_features(reals, batch_size=batch_size, net=net)
    fake = random_features(fakes, batch_size=batch_size, net=net)
    return feature_scores(real, fake, seed, k=k, num_subsets=num_subsets, max_subset_size=max_subset_size)


def feature_scores(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    *,
    k: int = 5,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
) -> dict[str, float]:
    """{"rkid", "density", "coverage"} from features already extracted (float64 [N, D], [M, D]): KID with
    `num_subsets` subsets of up to `max_subset_size` drawn with `seed`, density/coverage with k neighbours."""
    rkid = kernel_inception_distance(real, fake, num_subsets, max_subset_size, seed)
    return {"rkid": rkid, **density_coverage(real, fake, k)}
