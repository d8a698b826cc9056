"""Real-statistics cache (content fingerprint, slots, stale entries) and FID + KID sharing their passes."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from metrics.feature_stats import FeatureStats, compute_real_stats, dataset_fingerprint
from metrics.fid import compute_fid
from metrics.kid import compute_kid
from metrics.registry import calc_metric, plan_evaluation


class CountingDataset:
    """ListDataset-like: uint8 images, labels, a path for the fingerprint, and a count of image reads."""

    def __init__(self, images, labels, path):
        self.images, self.labels, self.path, self.name, self.reads = images, labels, path, "counted", 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return self.images[i], self.labels[i]


def _write_zip(path, image_bytes: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("img0.png", image_bytes)
        zf.writestr("dataset.json", '{"labels": []}')


def _counting_ctx(make_ctx, path, **overrides):
    ctx = make_ctx(num_images=12, **overrides)
    ctx.dataset = CountingDataset(ctx.dataset.images, ctx.dataset.labels, str(path))
    return ctx


def _restore_mtime(path, st):
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_zip_fingerprint_sees_a_same_size_edit_with_restored_mtime(tmp_path):
    data = tmp_path / "data.zip"
    _write_zip(data, b"abcd")
    dataset = CountingDataset(np.zeros((1, 3, 4, 4), np.uint8), np.zeros((1, 257)), str(data))
    before, st = dataset_fingerprint(dataset), os.stat(data)
    _write_zip(data, b"abce")  # one byte differs; same member and file sizes
    _restore_mtime(data, st)
    assert os.stat(data).st_size == st.st_size and os.stat(data).st_mtime_ns == st.st_mtime_ns
    assert dataset_fingerprint(dataset) != before
    _write_zip(data, b"abcd")  # the same content again: the same fingerprint (content, not file identity)
    assert dataset_fingerprint(dataset) == before


def test_folder_fingerprint_sees_a_same_size_edit_with_restored_mtime(tmp_path):
    (tmp_path / "a.png").write_bytes(b"1234")
    dataset = CountingDataset(np.zeros((1, 3, 4, 4), np.uint8), np.zeros((1, 257)), str(tmp_path))
    before, st = dataset_fingerprint(dataset), os.stat(tmp_path / "a.png")
    (tmp_path / "a.png").write_bytes(b"1235")
    _restore_mtime(tmp_path / "a.png", st)
    assert dataset_fingerprint(dataset) != before  # ctime moved, and utime cannot set it back
    (tmp_path / "b.png").write_bytes(b"2")
    assert dataset_fingerprint(CountingDataset([0, 1], None, str(tmp_path))) != before
    assert dataset_fingerprint(object()) is None


def test_full_dataset_cache_ignores_the_seed_and_replaces_stale_versions(make_ctx, tmp_path):
    data = tmp_path / "data.zip"
    _write_zip(data, b"abcd")
    ctx = _counting_ctx(make_ctx, data)
    cache = ctx.cache_dir
    legacy = os.path.join(cache, f"counted-{ctx.extractor().name}-{'0' * 32}.npz")  # the earlier naming scheme
    os.makedirs(cache)
    open(legacy, "wb").close()
    first = compute_real_stats(ctx, ctx.extractor())
    assert ctx.dataset.reads == 12 and not os.path.exists(legacy) and len(os.listdir(cache)) == 1
    reseeded = _counting_ctx(make_ctx, data, seed=5)  # every image is used: the seed does not matter
    np.testing.assert_array_equal(compute_real_stats(reseeded, reseeded.extractor()).s2, first.s2)
    assert reseeded.dataset.reads == 0
    _write_zip(data, b"abce")  # new content: recomputed, and the old version of this slot is removed
    edited = _counting_ctx(make_ctx, data)
    edited.dataset.images = edited.dataset.images // 2
    assert not np.array_equal(compute_real_stats(edited, edited.extractor()).s2, first.s2)
    assert edited.dataset.reads == 12 and len(os.listdir(cache)) == 1


def test_subsets_are_keyed_by_seed(make_ctx, tmp_path):
    data = tmp_path / "data.zip"
    _write_zip(data, b"abcd")
    for seed in (0, 1):
        ctx = _counting_ctx(make_ctx, data, seed=seed)
        compute_real_stats(ctx, ctx.extractor(), max_items=6)
    assert len(os.listdir(ctx.cache_dir)) == 2


def test_fid_and_kid_share_one_real_pass_and_one_generation_pass(make_ctx, tmp_path):
    data = tmp_path / "data.zip"
    _write_zip(data, b"abcd")
    ctx = _counting_ctx(make_ctx, data, noise_leak=0.3)
    calls = []
    forward = ctx.G.forward
    ctx.G.forward = lambda z, cond, **kw: calls.append(len(z)) or forward(z, cond, **kw)
    messages = []
    files_now = lambda: len(os.listdir(ctx.cache_dir)) if os.path.isdir(ctx.cache_dir) else 0
    ctx.log = lambda line: messages.append((line, files_now()))
    plan_evaluation(["fid1k", "kid1k"], ctx)
    fid = calc_metric("fid1k", ctx)["results"]["fid"]
    kid = calc_metric("kid1k", ctx)["results"]["kid"]
    assert ctx.dataset.reads == 12 and sum(calls) == 1000  # one pass over the reals, 1000 images generated once
    # The size is said before the file is written (no cache file existed at that moment).
    assert messages and "MB" in messages[0][0] and messages[0][1] == 0
    # Same values as separate, unshared evaluations (fresh contexts, fresh cache).
    alone = make_ctx(num_images=12, noise_leak=0.3, cache_dir=str(tmp_path / "other"))
    assert fid == pytest.approx(compute_fid(alone, num_gen=1000, max_real=1000)["fid"], rel=1e-12)
    alone = make_ctx(num_images=12, noise_leak=0.3, cache_dir=str(tmp_path / "other2"))
    assert kid == pytest.approx(compute_kid(alone, 1000, 1000, num_subsets=10, max_subset_size=100)["kid"], rel=1e-12)


def test_kid_features_in_the_cache_are_float32_and_fid_reads_only_the_moments(make_ctx, tmp_path):
    data = tmp_path / "data.zip"
    _write_zip(data, b"abcd")
    ctx = _counting_ctx(make_ctx, data)
    compute_kid(ctx, num_gen=10, max_real=12, num_subsets=2, max_subset_size=5)
    (entry,) = os.listdir(ctx.cache_dir)
    path = os.path.join(ctx.cache_dir, entry)
    assert FeatureStats.has_features(path)
    with np.load(path) as saved:
        assert saved["features"].dtype == np.float32 and saved["features"].shape == (12, 8)
        stored = sum(saved[key].nbytes for key in saved.files)
    assert FeatureStats.load(path, True).nbytes() == stored  # the size announced before writing
    fid_ctx = _counting_ctx(make_ctx, data)
    compute_fid(fid_ctx, num_gen=10)
    assert fid_ctx.dataset.reads == 0  # the KID entry also serves FID
