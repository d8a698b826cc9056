"""train.py --metrics: the per-snapshot metric hook appends metric-<name>.jsonl and leaves training RNG untouched."""

from __future__ import annotations

import json

import numpy as np
import torch

from training.run import snapshot


def test_snapshot_metrics_hook_appends_jsonl_and_keeps_rng(conditional_snapshot, tmp_path, monkeypatch, renderer):
    from metrics import registry
    from metrics.consistency import compute_consistency
    from training.dataset import ImageLabelDataset
    from training.metrics_hook import run_snapshot_metrics

    path, config = conditional_snapshot
    spec = registry._METRICS["cons1k"]
    monkeypatch.setitem(registry._METRICS, "cons1k",
                        registry.MetricSpec(lambda ctx: compute_consistency(ctx, num_samples=4), spec.needs_real_images,
                                            spec.needs_reconstructor, spec.description))
    G = snapshot.load_network(path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run_snapshot_metrics(config, G, ImageLabelDataset(config.data), renderer, None, config.recon_ckpt, str(tmp_path),
                         "000000",
                         torch.device("cpu"), 0, 1)
    assert torch.equal(torch.get_rng_state(), before)  # training continues as if metrics had not run
    (line,) = open(tmp_path / "metric-cons1k.jsonl").read().splitlines()
    record = json.loads(line)
    assert record["snapshot"] == "network-snapshot-000000.pt"
    assert set(record["results"]) >= {"cons_id", "cons_exp", "cons_angle", "cons_rep"}
    assert all(np.isfinite(v) for v in record["results"].values())
