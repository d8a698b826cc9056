"""DS driver: the set sampler, the generator-driven experiment with oracle stand-ins, and what a set holds fixed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from metrics.context import run_generator
from metrics.disentanglement import accumulate_ds_spreads, compute_ds, sample_ds_set
from metrics.ds_variants import DS_FACTORS, DS_VARIANTS, disentanglement_score, group_columns


def test_sampled_set_varies_only_the_chosen_factor():
    bank = np.random.default_rng(1).standard_normal((50, 257)).astype(np.float32)
    for name in DS_FACTORS:
        p, z = sample_ds_set(bank, name, set_index=7, samples_per_set=6, z_dim=3, seed=2)
        varied = group_columns(DS_FACTORS[name])
        fixed = np.setdiff1d(np.arange(257), varied)
        assert (p[:, fixed] == p[:1, fixed]).all()  # all other factors (and trans) from one real vector
        assert (p[:, varied].std(axis=0) > 0).any()
        assert any((bank[:, fixed] == p[0, fixed]).all(axis=1))  # fixed part is a real bank row
        assert all(any((bank[:, varied] == row).all(axis=1)) for row in p[:, varied])  # varied part: real rows
        again, z_again = sample_ds_set(bank, name, set_index=7, samples_per_set=6, z_dim=3, seed=2)
        np.testing.assert_array_equal(again, p)
        np.testing.assert_array_equal(z_again, z)


@pytest.mark.parametrize("variant", list(DS_VARIANTS))
def test_driver_equals_the_definition_on_the_sampled_sets_for_an_oracle_pipeline(make_ctx, variant):
    ctx = make_ctx(batch_size=7)
    spec = DS_VARIANTS[variant]
    estimated = {
        f: np.stack([sample_ds_set(ctx.bank.labels, f, k, 4, ctx.G.z_dim, ctx.seed)[0] for k in range(5)])
        for f in spec.factors
    }
    expected = disentanglement_score(estimated, ctx.bank.labels, spec)
    got = compute_ds(ctx, num_sets=5, samples_per_set=4, quantize=False, variant=variant)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_variants_share_the_images_of_a_factor(make_ctx):
    # cGOF's factors are a subset of the paper's: its exp row, measured on the same sets, has the same spreads
    # under the paper's statistic (the sets, z and images do not depend on the variant).
    paper = accumulate_ds_spreads(make_ctx(fr_noise=0.01), 4, 3, variant=DS_VARIANTS["paper"])
    cgof_with_paper_spread = dataclasses.replace(DS_VARIANTS["cgof"], spread=DS_VARIANTS["paper"].spread)
    cgof_sets_paper_stat = accumulate_ds_spreads(make_ctx(fr_noise=0.01), 4, 3, variant=cgof_with_paper_spread)
    # Rows/cols of cGOF (id, exp, angle) in the paper's order (id, exp, illum, angle); id is 80-d there.
    np.testing.assert_allclose(cgof_sets_paper_stat[1, 1], paper[1, 1], rtol=1e-12)
    np.testing.assert_allclose(cgof_sets_paper_stat[2, 2], paper[3, 3], rtol=1e-12)


def test_simulated_ranks_sum_to_the_single_rank_spreads(make_ctx):
    single = accumulate_ds_spreads(make_ctx(batch_size=8), num_sets=5, samples_per_set=3)
    parts = [accumulate_ds_spreads(make_ctx(batch_size=4, rank=r, num_gpus=2), 5, 3) for r in range(2)]
    np.testing.assert_allclose(parts[0] + parts[1], single, rtol=1e-6)


@pytest.mark.parametrize("leak", [{"z_leak": 0.5}, {"noise_leak": 0.5}])
@pytest.mark.parametrize("variant", list(DS_VARIANTS))
def test_z_and_noise_are_fixed_within_a_set(make_ctx, leak, variant):
    # The stand-in writes z (or the noise) into the identity code. With an exact FR, varying exp moves the
    # estimated identity only if z / noise change inside a set: the spread of id must be exactly 0.
    ctx = make_ctx(**leak)
    result = compute_ds(ctx, num_sets=4, samples_per_set=5, quantize=False, variant=variant)
    assert result["sigma_exp_id"] == 0.0 and result["sigma_angle_id"] == 0.0
    assert result["sigma_exp_exp"] > 0
    # Control: the same generator with z / noise resampled per image does move the identity.
    z = np.random.default_rng(0).standard_normal((5, ctx.G.z_dim)).astype(np.float32)
    p = np.repeat(ctx.bank.labels[:1], 5, axis=0)
    img = run_generator(ctx, z, ctx.condition_of(p), noise_mode="random")
    id_codes = ctx.reconstructor(img).detach().numpy()[:, :80]
    assert id_codes.std(axis=0).max() > 1e-3


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


def test_ds_reports_progress_in_images(make_ctx):
    seen = []
    ctx = make_ctx(batch_size=10, progress=lambda done, total: seen.append((done, total)))
    compute_ds(ctx, num_sets=3, samples_per_set=5, variant="cgof")
    assert seen[-1] == (3 * 5 * 3, 3 * 5 * 3)  # 3 factors x 3 sets x 5 images


def test_ds_rejects_unconditional_generators(make_ctx):
    ctx = make_ctx()
    ctx.G.needs = ()
    with pytest.raises(ValueError, match="conditioned"):
        compute_ds(ctx, num_sets=2, samples_per_set=2)
