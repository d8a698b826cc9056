"""DS definitions: each variant against a naive transcription, and tests pinning spread, normaliser and slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.ds_variants import (
    BANK_PAIR_ROWS,
    DS_FACTORS,
    DS_VARIANTS,
    disentanglement_score,
    group_columns,
    mean_dimension_std,
    mean_distance_to_mean,
    mean_pairwise_distance,
)

# Coefficient columns written out by hand (Deep3DFaceRecon layout), independent of COEFF_SLICES.
SHAPE, EXP, TEX = list(range(0, 80)), list(range(80, 144)), list(range(144, 224))
ANGLE, GAMMA = list(range(224, 227)), list(range(227, 254))
HAND_MEASURED = {
    "paper": {"id": SHAPE + TEX, "exp": EXP, "illum": GAMMA, "angle": ANGLE},
    "cgof": {"id": SHAPE, "exp": EXP, "angle": ANGLE},
    "gancontrol": {"id": SHAPE, "exp": EXP, "illum": GAMMA, "angle": ANGLE},
}
HAND_VARIED = {"id": SHAPE + TEX, "exp": EXP, "illum": GAMMA, "angle": ANGLE}
CGOF_CONSTANTS = {"id": 0.5771492, "exp": 0.2850049, "angle": 0.15251215}  # cGOF cal_DS.py


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _naive_paper(estimated, bank):
    """The paper's text: mean L2 to the set mean, averaged over sets, / L2 norm of the dataset mean vector."""
    cols = HAND_MEASURED["paper"]
    mean_p = [sum(row[c] for row in bank) / len(bank) for c in range(257)]
    norm = {j: math.sqrt(sum(mean_p[c] ** 2 for c in cols[j])) for j in cols}
    sigma = {}
    for i in cols:
        for j in cols:
            per_set = []
            for s in estimated[i]:
                vecs = [[row[c] for c in cols[j]] for row in s]
                centre = [sum(v[t] for v in vecs) / len(vecs) for t in range(len(cols[j]))]
                per_set.append(sum(_dist(v, centre) for v in vecs) / len(vecs))
            sigma[i, j] = sum(per_set) / len(per_set) / norm[j]
    return {i: math.prod(sigma[i, i] / (sigma[i, j] + 1e-8) for j in cols if j != i) for i in cols}


def _naive_cgof(estimated):
    """cGOF: per-dim population std over the set, mean over dims, / constant; sigma_i^2 / prod (sigma_j + 1e-8)."""
    cols = HAND_MEASURED["cgof"]
    sigma = {}
    for i in cols:
        for j in cols:
            per_set = []
            for s in estimated[i]:
                stds = []
                for c in cols[j]:
                    values = [row[c] for row in s]
                    m = sum(values) / len(values)
                    stds.append(math.sqrt(sum((v - m) ** 2 for v in values) / len(values)))
                per_set.append(sum(stds) / len(stds) / CGOF_CONSTANTS[j])
            sigma[i, j] = sum(per_set) / len(per_set)
    result = {}
    for i in cols:
        score = sigma[i, i] ** (len(cols) - 1)
        for j in cols:
            if j != i:
                score /= sigma[i, j] + 1e-8
        result[i] = score
    return result


def _naive_gancontrol(estimated, bank):
    """GAN-Control: mean distance over unordered pairs, / the same over dataset rows; prod sigma_i / sigma_j."""
    cols = HAND_MEASURED["gancontrol"]

    def pairs(rows, c):
        d = [_dist([rows[a][k] for k in c], [rows[b][k] for k in c]) for a in range(len(rows)) for b in range(a)]
        return sum(d) / len(d)

    sigma = {}
    for i in cols:
        for j in cols:
            sigma[i, j] = sum(pairs(s, cols[j]) for s in estimated[i]) / len(estimated[i]) / pairs(bank, cols[j])
    return {i: math.prod(sigma[i, i] / sigma[i, j] for j in cols if j != i) for i in cols}


NAIVE = {
    "paper": _naive_paper,
    "cgof": lambda estimated, bank: _naive_cgof(estimated),
    "gancontrol": _naive_gancontrol,
}


def fixed_arrays():
    """The fixed test arrays: bank [20, 257] and per factor 3 sets x 4 estimates [3, 4, 257] (float64)."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((20, 257)) + 0.5
    estimated = {f: rng.standard_normal((3, 4, 257)) * rng.uniform(0.1, 2, 257) for f in DS_FACTORS}
    return bank, estimated


@pytest.mark.parametrize("name", list(DS_VARIANTS))
def test_each_variant_matches_its_naive_transcription(name):
    bank, estimated = fixed_arrays()
    got = disentanglement_score(estimated, bank, DS_VARIANTS[name])
    expected = NAIVE[name](estimated.copy(), bank)
    assert sorted(k[3:] for k in got if k.startswith("ds_")) == sorted(expected)
    for factor, value in expected.items():
        assert got[f"ds_{factor}"] == pytest.approx(value, rel=1e-9), factor


def test_the_variants_disagree_on_the_same_arrays():
    bank, estimated = fixed_arrays()
    scores = {name: disentanglement_score(estimated, bank, v) for name, v in DS_VARIANTS.items()}
    assert scores["paper"]["ds_exp"] != pytest.approx(scores["gancontrol"]["ds_exp"], rel=0.01)
    assert scores["paper"]["ds_exp"] != pytest.approx(scores["cgof"]["ds_exp"], rel=0.01)
    assert "ds_illum" not in scores["cgof"] and "sigma_id_illum" not in scores["cgof"]


def test_spread_statistics_have_their_closed_forms():
    # Three points (0,0), (3,0), (0,4): pair distances 3, 4, 5; mean (1, 4/3); per-dim std sqrt(2), sqrt(32)/3.
    u = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    assert mean_pairwise_distance(u)[0] == pytest.approx(4.0, rel=1e-12)
    assert mean_distance_to_mean(u)[0] == pytest.approx((5 + math.sqrt(52) + math.sqrt(73)) / 9, rel=1e-12)
    assert mean_dimension_std(u)[0] == pytest.approx((math.sqrt(2) + math.sqrt(32) / 3) / 2, rel=1e-12)
    # Two points 2 apart along one axis: the three statistics are 1, 0.5 (ddof 0, averaged over 2 dims), 2.
    v = np.array([[[0.0, 0.0], [2.0, 0.0]]])
    assert [mean_distance_to_mean(v)[0], mean_dimension_std(v)[0], mean_pairwise_distance(v)[0]] == [1.0, 0.5, 2.0]
    assert DS_VARIANTS["paper"].spread is mean_distance_to_mean
    assert DS_VARIANTS["cgof"].spread is mean_dimension_std
    assert DS_VARIANTS["gancontrol"].spread is mean_pairwise_distance


def test_normalisers_are_pinned():
    bank = np.zeros((4, 257))
    bank[:, 0] = [1.0, 3.0, 5.0, 7.0]  # shape dim 0: mean 4 -> paper's id normaliser 4 (tex is 0)
    bank[:, 144] = [3.0, 3.0, 3.0, 3.0]  # texture dim 0: mean 3 -> paper id normaliser sqrt(4^2 + 3^2) = 5
    paper = dict(zip(DS_VARIANTS["paper"].factors, DS_VARIANTS["paper"].normalisers(bank)))
    assert paper["id"] == pytest.approx(5.0) and paper["exp"] == 0.0
    cgof = dict(zip(DS_VARIANTS["cgof"].factors, DS_VARIANTS["cgof"].normalisers(bank)))
    assert cgof == CGOF_CONSTANTS
    # GAN-Control-style: mean over the 6 pairs of |x_a - x_b| for x = 1, 3, 5, 7 on the shape dims = 20 / 6.
    gan = dict(zip(DS_VARIANTS["gancontrol"].factors, DS_VARIANTS["gancontrol"].normalisers(bank)))
    assert gan["id"] == pytest.approx(20 / 6, rel=1e-12)
    # Large banks use a fixed subset of rows: deterministic, and close to the full value.
    big = np.random.default_rng(1).standard_normal((BANK_PAIR_ROWS + 500, 257))
    first = DS_VARIANTS["gancontrol"].normalisers(big)
    np.testing.assert_array_equal(first, DS_VARIANTS["gancontrol"].normalisers(big))
    assert first[0] == pytest.approx(math.sqrt(2 * 80), rel=0.02)  # E||x - y|| ~ sqrt(2D) for N(0, I)


def test_factor_slices_are_pinned():
    for name, measured in HAND_MEASURED.items():
        variant = DS_VARIANTS[name]
        assert variant.factors == list(measured)
        for factor, cols in measured.items():
            assert variant.columns(factor).tolist() == cols, (name, factor)
    for factor, cols in HAND_VARIED.items():
        assert group_columns(DS_FACTORS[factor]).tolist() == cols


def test_score_uses_eps_and_the_factor_count_as_documented():
    # sigma[i, j] = 0 off the diagonal: with eps 1e-8 the score is finite, without eps (GAN-Control) it is inf.
    bank = np.random.default_rng(2).standard_normal((6, 257)) + 1.0
    estimated = {f: np.zeros((2, 3, 257)) for f in DS_FACTORS}
    for f in DS_FACTORS:
        estimated[f][:, :, HAND_VARIED[f]] = np.random.default_rng(3).standard_normal((2, 3, len(HAND_VARIED[f])))
    cgof = disentanglement_score(estimated, bank, DS_VARIANTS["cgof"])
    assert cgof["ds_exp"] == pytest.approx(cgof["sigma_exp_exp"] ** 2 / 1e-16, rel=1e-9)  # two other factors
    with np.errstate(divide="ignore"):
        gan = disentanglement_score(estimated, bank, DS_VARIANTS["gancontrol"])
    assert math.isinf(gan["ds_exp"])
