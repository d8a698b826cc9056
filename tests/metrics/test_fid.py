"""FID: closed forms, streamed statistics vs one-shot numpy, the generator/real pipelines, determinism.

The real-statistics cache and the shared FID/KID passes are tested in test_feature_cache.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.context import sample_latents_and_labels
from metrics.feature_stats import FeatureStats, compute_generator_stats, compute_real_stats
from metrics.features import images_to_uint8
from metrics.fid import compute_fid, frechet_distance
from training.condition import Condition


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_commuting_full_covariances():
    # Same eigenvectors: sqrt(S1 S2) = Q sqrt(l1 l2) Q^T, so FID = |dmu|^2 + sum (l1 + l2 - 2 sqrt(l1 l2)).
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    l1, l2 = rng.uniform(0.2, 2, 4), rng.uniform(0.2, 2, 4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    got = frechet_distance(mu1, q @ np.diag(l1) @ q.T, mu2, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_handles_singular_covariances():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6))  # 3 samples in 6-D: rank-deficient covariance
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    value = frechet_distance(mu, cov, mu + 1, cov)
    assert np.isfinite(value) and value == pytest.approx(6.0, abs=1e-2)


def test_streamed_stats_equal_one_shot_numpy_for_any_batching_and_rank_split():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((103, 7)) * rng.uniform(0.5, 3, 7) + 5.0
    stats = FeatureStats(7, capture_all=True)
    for chunk in np.array_split(x, 9):
        stats.append(torch.as_tensor(chunk, dtype=torch.float64))
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    # Simulated ranks: each takes an interleaved share, the merged moments are the same.
    ranks = [FeatureStats(7) for _ in range(3)]
    for r, part in enumerate(ranks):
        part.append(x[r::3])
    merged = ranks[0].merge(ranks[1]).merge(ranks[2])
    np.testing.assert_allclose(merged.mean_cov()[1], cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.features(), x.astype(np.float32))


def test_stats_save_load_round_trip(tmp_path):
    stats = FeatureStats(3, capture_all=True)
    stats.append(np.arange(12.0).reshape(4, 3) ** 1.5)
    stats.save(str(tmp_path / "s.npz"))
    back = FeatureStats.load(str(tmp_path / "s.npz"), capture_all=True)
    assert back.n == 4
    np.testing.assert_array_equal(back.s2, stats.s2)
    np.testing.assert_array_equal(back.features(), stats.features())


def test_real_stats_equal_direct_extraction_and_split_across_ranks(make_ctx):
    ctx = make_ctx(num_images=21)
    extractor = ctx.feature_extractor_factory(ctx.device)
    images = torch.as_tensor(np.stack([ctx.dataset[i][0] for i in range(len(ctx.dataset))]))
    feats = extractor(images).numpy()
    mu, cov = compute_real_stats(ctx, extractor).mean_cov()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-10)
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-14)
    parts = [compute_real_stats(make_ctx(num_images=21, rank=r, num_gpus=2), extractor) for r in range(2)]
    assert [p.n for p in parts] == [11, 10]
    np.testing.assert_allclose(parts[0].merge(parts[1]).mean_cov()[1], cov, rtol=1e-8, atol=1e-14)


def test_generator_stats_match_per_sample_generation_for_any_batch_size_and_rank_split(make_ctx, standins):
    ctx = make_ctx(batch_size=5)
    extractor = ctx.feature_extractor_factory(ctx.device)
    z, idx = sample_latents_and_labels(range(13), ctx.G.z_dim, len(ctx.bank), ctx.seed)
    p = torch.as_tensor(ctx.bank.labels[idx])
    img = ctx.G(torch.as_tensor(z), Condition(p, standins["make_rep"](p)))
    feats = extractor(images_to_uint8(img)).numpy()
    stats = compute_generator_stats(ctx, extractor, 13)
    np.testing.assert_allclose(stats.s1 / stats.n, feats.mean(0), rtol=1e-10)
    parts = [compute_generator_stats(make_ctx(batch_size=3, rank=r, num_gpus=3), extractor, 13) for r in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    # Features themselves are float32 (the conv's rounding depends on the batch), hence the looser tolerance.
    np.testing.assert_allclose(merged.mean_cov()[1], np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-10)


def test_compute_fid_equals_frechet_distance_of_the_two_feature_sets(make_ctx):
    ctx = make_ctx(num_images=30)
    extractor = ctx.feature_extractor_factory(ctx.device)
    real = compute_real_stats(ctx, extractor).mean_cov()
    gen = compute_generator_stats(ctx, extractor, 24).mean_cov()
    assert compute_fid(ctx, num_gen=24)["fid"] == pytest.approx(frechet_distance(*gen, *real), rel=1e-9)


def test_fid_is_deterministic_with_generator_noise_and_leaves_the_global_rng_alone(make_ctx):
    # The stand-in adds torch.randn noise to its pixels for noise_mode="random", like StyleGAN's noise inputs.
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = compute_fid(make_ctx(num_images=30, noise_leak=0.5), num_gen=24, max_real=30)["fid"]
    second = compute_fid(make_ctx(num_images=30, noise_leak=0.5), num_gen=24, max_real=30)["fid"]
    torch.testing.assert_close(torch.rand(3), expected_next)  # metrics did not consume the caller's RNG
    assert first == second
    other_seed = compute_fid(make_ctx(num_images=30, noise_leak=0.5, seed=1), num_gen=24, max_real=30)["fid"]
    assert other_seed != first
