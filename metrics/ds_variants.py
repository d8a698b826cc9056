"""The three public definitions of the disentanglement score (DS), as data: factors, spread, normaliser, score.

All three share the experiment (section 3.2 of the paper, after DiscoFaceGAN): for a varied factor u_i, K sets of
N images in which every other factor, z and the noise are fixed and only u_i changes; FR re-estimates the
coefficients p_hat of every image, and for every measured factor u_j a spread statistic s of the N estimates
is averaged over the K sets and divided by a normaliser c_j:

    sigma_j^(i) = ((1/K) sum_k s(u_j(p_hat[k, 1..N]))) / c_j
    DS(u_i)     = prod_{j != i} sigma_i^(i) / (sigma_j^(i) + eps)                        (eq. 11)

(for n factors the product equals (sigma_i^(i))^(n-1) / prod_{j != i} (sigma_j^(i) + eps), the form cGOF writes).
They differ in the pieces (coefficient slices use this project's Deep3DFaceRecon layout: id 0:80, exp 80:144,
tex 144:224, angle 224:227, gamma 227:254):

variant     measured factors (dims)               spread s of u_1..u_N              normaliser c_j               eps
paper       id+tex 160, exp 64, gamma 27, angle 3  mean_n ||u_n - mean u||_2         ||dataset mean of u_j||_2    1e-8
cgof        id 80, exp 64, angle 3                 mean over dims of std (ddof 0)    0.5771492 / 0.2850049 / ...  1e-8
gancontrol  id 80, exp 64, gamma 27, angle 3       mean_{n<m} ||u_n - u_m||_2        same spread of dataset rows  0

- `paper`: the paper's text (eq. 11; DiscoFaceGAN's definition as the paper restates it). Identity is DFG's
  160-d shape+texture factor.
- `cgof`: KeqiangSun/cGOF's DS script (cal_DS.py), whose README credits DFG's author for the code: it loads
  per-image coefficient arrays of shape 1 x D, so its "std" is the per-dimension population std averaged over
  dimensions; identity is the 80 shape coefficients only; the normalisers are its hard-coded constants
  (named mean_<factor>_std there, derivation not published); three factors, so the exponent is 2.
- `gancontrol`: amazon-science/gan-control's DS (disentanglement_score.py): spread is the mean Euclidean distance
  over all unordered pairs of a set; normalisers are FFHQ constants in a csv whose computation is not public, so
  here the same statistic is taken over dataset vectors (all pairs of at most `BANK_PAIR_ROWS` rows, a fixed
  subset); no eps. GAN-Control measures identity with an ArcFace embedding; this project ships no face
  recogniser, so the 80-d 3DMM shape (their `id3d`, computed but unused there) stands in.

Every variant varies the same factors the same way (identity varies shape and texture together, as DFG's factor
and cGOF's "vary identity" do), so the images of a factor's sets are the same for all variants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.spatial.distance

from metrics.context import COEFF_SLICES, NUM_COEFFS
from torch_utils.errors import UserError

# Varied factor -> coefficient groups resampled in its sets. The order fixes the per-factor RNG streams.
DS_FACTORS: dict[str, tuple[str, ...]] = {
    "id": ("id", "tex"),
    "exp": ("exp",),
    "illum": ("gamma",),
    "angle": ("angle",),
}

# cGOF's hard-coded normalisers (cal_DS.py: mean_id_std, mean_exp_std, mean_angle_std).
CGOF_NORMALISERS: dict[str, float] = {"id": 0.5771492, "exp": 0.2850049, "angle": 0.15251215}

# The GAN-Control-style normaliser uses all pairs of at most this many dataset rows (a fixed random subset).
BANK_PAIR_ROWS = 2000


def group_columns(groups: tuple[str, ...]) -> np.ndarray:
    """Column indices of p [.., 257] for coefficient groups (COEFF_SLICES names), e.g. (id, tex) -> 0:80, 144:224."""
    return np.concatenate([np.arange(NUM_COEFFS)[COEFF_SLICES[group]] for group in groups])


def mean_distance_to_mean(u: np.ndarray) -> np.ndarray:
    """Mean L2 distance of each vector to its set mean: u [K, N, D] -> [K] float64 (the paper's statistic)."""
    u = np.asarray(u, np.float64)
    return np.linalg.norm(u - u.mean(axis=1, keepdims=True), axis=-1).mean(axis=1)


def mean_dimension_std(u: np.ndarray) -> np.ndarray:
    """Per-dimension population std (ddof 0) over the set, averaged over dimensions: u [K, N, D] -> [K] (cGOF)."""
    return np.asarray(u, np.float64).std(axis=1).mean(axis=-1)


def mean_pairwise_distance(u: np.ndarray) -> np.ndarray:
    """Mean L2 distance over the N (N - 1) / 2 unordered pairs of a set: u [K, N, D] -> [K] (GAN-Control)."""
    u = np.asarray(u, np.float64)
    n = u.shape[1]
    first, second = np.triu_indices(n, k=1)
    return np.linalg.norm(u[:, first] - u[:, second], axis=-1).mean(axis=1)


def norm_of_dataset_mean(p_bank: np.ndarray, columns: np.ndarray) -> float:
    """|| mean over the dataset of u_j ||_2: p_bank [M, 257] -> float (the paper's normaliser)."""
    return float(np.linalg.norm(np.asarray(p_bank, np.float64).mean(axis=0)[columns]))


def dataset_pairwise_distance(p_bank: np.ndarray, columns: np.ndarray, max_rows: int = BANK_PAIR_ROWS) -> float:
    """Mean pairwise L2 distance of u_j over dataset rows (all rows, or a fixed random subset of `max_rows`)."""
    bank = np.asarray(p_bank, np.float64)
    if len(bank) < 2:
        raise UserError("the GAN-Control-style DS normaliser needs at least 2 dataset coefficient vectors")
    if len(bank) > max_rows:
        bank = bank[np.sort(np.random.default_rng(0).choice(len(bank), max_rows, replace=False))]
    return float(scipy.spatial.distance.pdist(bank[:, columns]).mean())


@dataclass(frozen=True)
class DSVariant:
    """One DS definition: measured factor -> groups, the spread statistic, the normaliser and eps.

    spread: u [K, N, D] -> [K] float64. normaliser(p_bank [M, 257], factor, columns) -> c_j > 0.
    """

    name: str
    measured: Mapping[str, tuple[str, ...]]
    spread: Callable[[np.ndarray], np.ndarray]
    normaliser: Callable[[np.ndarray, str, np.ndarray], float]
    eps: float
    summary: str

    @property
    def factors(self) -> list[str]:
        """Factors that are varied and measured (a subset of DS_FACTORS, in its order)."""
        return [f for f in DS_FACTORS if f in self.measured]

    def columns(self, factor: str) -> np.ndarray:
        """Columns of p measured for `factor`."""
        return group_columns(self.measured[factor])

    def normalisers(self, p_bank: np.ndarray) -> np.ndarray:
        """c_j for every factor: [F] float64."""
        return np.array([self.normaliser(p_bank, f, self.columns(f)) for f in self.factors], np.float64)


DS_VARIANTS: dict[str, DSVariant] = {
    "paper": DSVariant(
        "paper",
        {"id": ("id", "tex"), "exp": ("exp",), "illum": ("gamma",), "angle": ("angle",)},
        mean_distance_to_mean,
        lambda bank, _factor, cols: norm_of_dataset_mean(bank, cols),
        1e-8,
        "paper eq. 11: mean L2 to the set mean, / ||dataset mean||, id = shape+texture, 4 factors",
    ),
    "cgof": DSVariant(
        "cgof",
        {"id": ("id",), "exp": ("exp",), "angle": ("angle",)},
        mean_dimension_std,
        lambda _bank, factor, _cols: CGOF_NORMALISERS[factor],
        1e-8,
        "cGOF: mean per-dimension std, / hard-coded constants, id = 80 shape dims, 3 factors (no illum)",
    ),
    "gancontrol": DSVariant(
        "gancontrol",
        {"id": ("id",), "exp": ("exp",), "illum": ("gamma",), "angle": ("angle",)},
        mean_pairwise_distance,
        lambda bank, _factor, cols: dataset_pairwise_distance(bank, cols),
        0.0,
        "GAN-Control: mean pairwise L2, / the same over dataset vectors, id = 80 shape dims, 4 factors, no eps",
    ),
}


def scores_from_spreads(
    mean_spreads: np.ndarray, normalisers: np.ndarray, names: list[str], eps: float
) -> dict[str, float]:
    """DS from set-averaged spreads [F, F] (row = varied factor i, column = measured factor j) and c_j [F].

    Returns ds_<i> for every factor and sigma_<i>_<j> (normalised spread of j when i varies) for diagnostics.
    """
    sigma = np.asarray(mean_spreads, np.float64) / np.asarray(normalisers, np.float64)[None, :]
    result: dict[str, float] = {}
    for i, name_i in enumerate(names):
        others = [j for j in range(len(names)) if j != i]
        with np.errstate(divide="ignore"):  # eps = 0 and a spread of exactly 0: the score is inf, by definition
            result[f"ds_{name_i}"] = float(np.prod([sigma[i, i] / (sigma[i, j] + eps) for j in others]))
    for i, name_i in enumerate(names):
        for j, name_j in enumerate(names):
            result[f"sigma_{name_i}_{name_j}"] = float(sigma[i, j])
    return result


def disentanglement_score(
    estimated: Mapping[str, np.ndarray], p_bank: np.ndarray, variant: DSVariant = DS_VARIANTS["paper"]
) -> dict[str, float]:
    """DS from re-estimated coefficients: estimated[i] = FR outputs [K, N, 257] of the sets where factor i varied.

    p_bank: dataset coefficients [M, 257] (used only by the normaliser). Returns ds_<factor> and
    sigma_<varied>_<measured> floats for the variant's factors (module docstring gives the definitions).
    """
    names = variant.factors
    spreads = np.array(
        [[variant.spread(np.asarray(estimated[i])[..., variant.columns(j)]).mean() for j in names] for i in names]
    )
    return scores_from_spreads(spreads, variant.normalisers(p_bank), names, variant.eps)
