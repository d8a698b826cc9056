"""Consistency metric: zero for an oracle pipeline, and the per-group MSE against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.consistency import CONSISTENCY_GROUPS, compute_consistency
from metrics.context import sample_latents_and_labels


def test_oracle_pipeline_is_perfectly_consistent(make_ctx):
    result = compute_consistency(make_ctx(), num_samples=20)
    assert set(result) == {f"cons_{g}" for g in CONSISTENCY_GROUPS} | {"cons_rep"}
    assert all(value == 0.0 for value in result.values())


def test_leaky_pipeline_errors_only_on_identity_and_match_direct_mse(make_ctx, standins):
    ctx = make_ctx(leak=0.25, batch_size=6)
    result = compute_consistency(ctx, num_samples=15)
    _z, idx = sample_latents_and_labels(range(15), ctx.G.z_dim, len(ctx.bank), ctx.seed)
    p = ctx.bank.labels[idx].astype(np.float64)
    id_hat = p[:, :80].copy()
    id_hat[:, :64] += 0.25 * p[:, 80:144]  # what the stand-in leaks into the identity code
    assert result["cons_id"] == pytest.approx(((id_hat - p[:, :80]) ** 2).mean(), rel=1e-5)
    assert result["cons_exp"] == 0.0 and result["cons_gamma"] == 0.0
    rep = standins["make_rep"](torch.as_tensor(p, dtype=torch.float32))
    rep_hat = rep.clone().flatten(1)
    rep_hat[:, :80] = torch.as_tensor(id_hat / 4, dtype=torch.float32)
    assert result["cons_rep"] == pytest.approx(((rep_hat - rep.flatten(1)) ** 2).mean().item(), rel=1e-5)


def test_simulated_ranks_give_the_same_consistency(make_ctx):
    single = compute_consistency(make_ctx(leak=0.3), num_samples=9)
    # Rank 0 of 1 covers everything; partial ranks do not reduce without torch.distributed, so compare shares.
    halves = [compute_consistency(make_ctx(leak=0.3, rank=r, num_gpus=2), num_samples=9) for r in range(2)]
    combined = (5 * halves[0]["cons_id"] + 4 * halves[1]["cons_id"]) / 9
    assert combined == pytest.approx(single["cons_id"], rel=1e-6)


def test_cached_bank_replaces_the_render_of_bank_rows(make_ctx, standins):
    """A bank with its rows pre-rendered (the training loop's rep_cache_mb) gives the same result, and only FR's
    estimates are rendered; a cache that holds other rows changes it, so the bank's rep is what G sees."""
    calls = []

    def counting_code(p: torch.Tensor) -> torch.Tensor:
        calls.append(len(p))
        return standins["make_rep"](p)

    labels = make_ctx().bank.labels
    plain = compute_consistency(make_ctx(leak=0.3, bank=standins["CodeBank"](labels, code=counting_code)),
                                num_samples=20)  # fmt: skip
    rendered_plain, calls[:] = sum(calls), []
    cached_bank = standins["CodeBank"](labels, cache_mb=10, code=counting_code)
    assert cached_bank.cached is not None and sum(calls) == len(labels)  # every bank row rendered once
    calls[:] = []
    hooked = compute_consistency(make_ctx(leak=0.3, bank=cached_bank), num_samples=20)
    assert hooked == pytest.approx(plain, rel=1e-6)
    assert rendered_plain == 40 and sum(calls) == 20  # p and p_hat per sample, then p_hat only
    cached_bank.cached = cached_bank.cached.roll(1, dims=0)  # the cache now holds the previous row's rep
    shifted = compute_consistency(make_ctx(leak=0.3, bank=cached_bank), num_samples=20)
    assert shifted["cons_id"] != pytest.approx(plain["cons_id"], rel=1e-3)
