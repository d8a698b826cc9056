"""The registered weight-free metrics (swd*, rkid*): the right real and generated images reach metrics.swd and
metrics.random_features, in an order that does not depend on batching, with the floor from a disjoint real draw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics.features import images_to_uint8
from metrics.random_features import random_feature_scores
from metrics.registry import calc_metric, get_metric
from metrics.swd import swd
from metrics.weight_free import compute_random_feature_scores, compute_swd, generated_uint8, real_uint8
from torch_utils.errors import UserError
from training.condition import Condition


def _independent_sets(ctx, n: int):
    """Reals (draws A and B of a seeded permutation) and fakes generated one sample at a time, by hand."""
    order = np.random.default_rng([ctx.seed, 7]).permutation(len(ctx.dataset))
    reals = np.stack([ctx.dataset[int(i)][0] for i in order[:n]])
    floor = np.stack([ctx.dataset[int(i)][0] for i in order[n : 2 * n]]) if len(order) >= 2 * n else None
    fakes = []
    for i in range(n):
        rng = np.random.default_rng([ctx.seed, i])  # metrics.context.sample_latents_and_labels, one sample
        z = torch.as_tensor(rng.standard_normal(ctx.G.z_dim), dtype=torch.float32)[None]
        row = int(rng.integers(len(ctx.bank)))
        p = torch.as_tensor(ctx.bank.labels[[row]])
        img = ctx.G(z, Condition(p, ctx.bank.render(p)), noise_mode="random")
        fakes.append(images_to_uint8(img)[0].numpy())
    return reals, floor, np.stack(fakes)


def test_swd_metric_scores_generated_vs_draw_a_and_floor_vs_draw_b(make_ctx):
    ctx = make_ctx(num_images=40, batch_size=3)  # batches of 3: the gathered order is still by sample index
    reals, floor, fakes = _independent_sets(ctx, 16)
    got = compute_swd(ctx, 16)
    want, want_floor = swd(reals, fakes, seed=ctx.seed), swd(reals, floor, seed=ctx.seed)
    assert got == pytest.approx({**{f"swd_{k}": v for k, v in want.items()},
                                 **{f"swd_floor_{k}": v for k, v in want_floor.items()}}, rel=1e-5)  # fmt: skip
    assert got["swd_avg"] > got["swd_floor_avg"]  # random-code fakes are farther from the reals than reals are


def test_random_feature_metric_and_a_missing_floor_is_nan(make_ctx):
    ctx = make_ctx(num_images=24, batch_size=5)
    reals, floor, fakes = _independent_sets(ctx, 16)
    assert floor is None  # 24 < 2 x 16
    said = []
    ctx.log = said.append
    got = compute_random_feature_scores(ctx, 16)
    want = random_feature_scores(reals, fakes, seed=ctx.seed, max_subset_size=16)
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-6)
    assert all(math.isnan(got[f"{k}_floor"]) for k in want) and "fewer than 2 x 16" in said[0]


def test_generated_and_real_sets_do_not_depend_on_the_batch_size(make_ctx):
    a, b = make_ctx(num_images=40, batch_size=2), make_ctx(num_images=40, batch_size=7)
    np.testing.assert_array_equal(generated_uint8(a, 9), generated_uint8(b, 9))
    np.testing.assert_array_equal(real_uint8(a, 9)[0], real_uint8(b, 9)[0])
    draw_a, draw_b = real_uint8(a, 9)
    assert not any((draw_a[i] == draw_b[j]).all() for i in range(9) for j in range(9))  # disjoint draws


def test_registered_without_inception_and_too_few_reals_is_one_line(make_ctx):
    spec = get_metric("swd2k")
    assert spec.needs_real_images and not spec.needs_inception and get_metric("fid1k").needs_inception
    with pytest.raises(UserError, match="compares 2048 real images, the dataset has 40"):
        calc_metric("swd2k", make_ctx(num_images=40))


class _CountingDataset:
    """A dataset with a path (so the real side is cached) that counts the real images read."""

    def __init__(self, base, path: str):
        self.base, self.path, self.reads = base, path, 0
        self.name, self.resolution = base.name, base.resolution

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.base[i]


@pytest.mark.parametrize("metric", ["swd", "rkid"])
def test_the_real_side_cache_gives_the_uncached_numbers_and_reads_fewer_reals(make_ctx, tmp_path, metric):
    compute = compute_swd if metric == "swd" else compute_random_feature_scores
    uncached = compute(make_ctx(num_images=40, batch_size=4), 16)  # stand-in dataset without a path: no cache
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(b"version 1")
    ctx = make_ctx(num_images=40, batch_size=4)
    ctx.dataset = _CountingDataset(ctx.dataset, str(data_file))
    first = compute(ctx, 16)
    entries = list((tmp_path / "cache").glob(f"*-{'swd' if metric == 'swd' else 'randcnn-v1-s0-64px'}-*.npz"))
    assert first == uncached and len(entries) == 1 and ctx.dataset.reads == 32  # draws A and B
    ctx.dataset.reads = 0
    assert compute(ctx, 16) == uncached  # bit for bit, from the entry
    assert ctx.dataset.reads == (16 if metric == "swd" else 0)  # swd needs draw A's images, rkid its features
    # a planted entry of the right name but another shape is ignored and replaced
    entries[0].write_bytes(b"PK not a zip at all")
    ctx.dataset.reads = 0
    assert compute(ctx, 16) == uncached and ctx.dataset.reads == 32
    # an edited dataset is another entry; writing it removes the old one
    data_file.write_bytes(b"version 2")
    compute(ctx, 16)
    after = list((tmp_path / "cache").glob("*.npz"))
    assert len(after) == 1 and after[0] != entries[0]


def test_a_compressed_or_oversized_cache_entry_is_not_read(tmp_path):
    from metrics.weight_free import _read_entry

    good, packed = tmp_path / "good.npz", tmp_path / "packed.npz"
    np.savez(good, floor=np.arange(3.0))
    np.savez_compressed(packed, floor=np.arange(3.0))
    assert _read_entry(str(good), {"floor": (3,)})["floor"].tolist() == [0.0, 1.0, 2.0]
    assert _read_entry(str(packed), {"floor": (3,)}) is None  # deflated members could expand without bound
    assert _read_entry(str(good), {"floor": (2,)}) is None  # shape promised by the key, not by the file
    big = tmp_path / "big.npz"
    np.savez(big, floor=np.zeros(100_000))
    assert _read_entry(str(big), {"floor": (3,)}) is None  # larger than what the key needs: not read
