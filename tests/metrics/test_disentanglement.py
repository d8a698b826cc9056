"""DS: the formula against naive loops, the set sampler, and the generator-driven driver with oracle stand-ins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.disentanglement import (
    DS_FACTORS,
    accumulate_ds_spreads,
    compute_ds,
    disentanglement_score,
    factor_columns,
    sample_ds_set,
)

# Columns of each factor written out by hand (id = shape + texture), independent of factor_columns().
HAND_COLUMNS = {
    "id": list(range(0, 80)) + list(range(144, 224)),
    "exp": list(range(80, 144)),
    "illum": list(range(227, 254)),
    "angle": list(range(224, 227)),
}


def _naive_ds(estimated, p_bank):
    names = list(HAND_COLUMNS)
    p_mean = [sum(p_bank[m][c] for m in range(len(p_bank))) / len(p_bank) for c in range(257)]
    norm = {j: math.sqrt(sum(p_mean[c] ** 2 for c in HAND_COLUMNS[j])) for j in names}
    sigma = {}
    for i in names:
        sets = estimated[i]
        for j in names:
            cols = HAND_COLUMNS[j]
            per_set = []
            for s in sets:
                mean = [sum(s[n][c] for n in range(len(s))) / len(s) for c in cols]
                dists = [math.sqrt(sum((s[n][c] - mean[t]) ** 2 for t, c in enumerate(cols))) for n in range(len(s))]
                per_set.append(sum(dists) / len(dists))
            sigma[i, j] = sum(per_set) / len(per_set) / norm[j]
    return {i: math.prod(sigma[i, i] / (sigma[i, j] + 1e-8) for j in names if j != i) for i in names}


def test_factor_columns_match_the_documented_layout():
    for name, cols in HAND_COLUMNS.items():
        assert factor_columns(name).tolist() == cols


def test_disentanglement_score_matches_naive_formula():
    rng = np.random.default_rng(0)
    p_bank = rng.standard_normal((20, 257)) + 0.5
    estimated = {f: rng.standard_normal((3, 4, 257)) * rng.uniform(0.1, 2, 257) for f in DS_FACTORS}
    got = disentanglement_score(estimated, p_bank)
    for name, value in _naive_ds(estimated, p_bank).items():
        assert got[f"ds_{name}"] == pytest.approx(value, rel=1e-9)


def test_sampled_set_varies_only_the_chosen_factor():
    bank = np.random.default_rng(1).standard_normal((50, 257)).astype(np.float32)
    for name in DS_FACTORS:
        p, z = sample_ds_set(bank, name, set_index=7, samples_per_set=6, z_dim=3, seed=2)
        varied = factor_columns(name)
        fixed = np.setdiff1d(np.arange(257), varied)
        assert (p[:, fixed] == p[:1, fixed]).all()  # all other factors (and trans) from one real vector
        assert (p[:, varied].std(axis=0) > 0).any()
        assert any((bank[:, fixed] == p[0, fixed]).all(axis=1))  # fixed part is a real bank row
        again, z_again = sample_ds_set(bank, name, set_index=7, samples_per_set=6, z_dim=3, seed=2)
        np.testing.assert_array_equal(again, p)
        np.testing.assert_array_equal(z_again, z)


def test_driver_equals_formula_on_the_sampled_sets_for_an_oracle_pipeline(make_ctx):
    ctx = make_ctx(batch_size=7)
    names = list(DS_FACTORS)
    estimated = {
        f: np.stack([sample_ds_set(ctx.p_bank, f, k, 4, ctx.G.z_dim, ctx.seed)[0] for k in range(5)]) for f in names
    }
    expected = disentanglement_score(estimated, ctx.p_bank)
    got = compute_ds(ctx, num_sets=5, samples_per_set=4, quantize=False)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_simulated_ranks_sum_to_the_single_rank_spreads(make_ctx):
    single = accumulate_ds_spreads(make_ctx(batch_size=8), num_sets=5, samples_per_set=3)
    parts = [accumulate_ds_spreads(make_ctx(batch_size=4, rank=r, num_gpus=2), 5, 3) for r in range(2)]
    np.testing.assert_allclose(parts[0] + parts[1], single, rtol=1e-6)


def test_leaky_generator_scores_lower_on_the_leaking_factor(make_ctx):
    follow = compute_ds(make_ctx(leak=0.0, fr_noise=0.01), num_sets=6, samples_per_set=5)
    leak = compute_ds(make_ctx(leak=0.5, fr_noise=0.01), num_sets=6, samples_per_set=5)
    assert all(np.isfinite(v) and v > 0 for v in follow.values())  # FR noise: every factor spreads a little
    # Varying exp moves the estimated id only for the leaky generator: its exp score must drop, a lot.
    assert leak["sigma_exp_id"] > 10 * follow["sigma_exp_id"]
    assert leak["ds_exp"] < follow["ds_exp"] / 10
    # Varying illumination moves id in neither generator: similar illumination scores (only FR noise differs).
    assert leak["ds_illum"] == pytest.approx(follow["ds_illum"], rel=0.5)
    # A perfect FR on a follower: nothing but the varied factor moves at all.
    exact = compute_ds(make_ctx(leak=0.0), num_sets=6, samples_per_set=5)
    assert exact["sigma_exp_id"] == 0.0 and exact["sigma_exp_exp"] > 0


def test_ds_rejects_unconditional_generators(make_ctx):
    ctx = make_ctx()
    ctx.G.is_conditional = False
    with pytest.raises(ValueError, match="conditioned"):
        compute_ds(ctx, num_sets=2, samples_per_set=2)
