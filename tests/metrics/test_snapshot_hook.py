"""train.py --metrics: the per-snapshot metric hook appends metric-<name>.jsonl and leaves training RNG untouched."""

from __future__ import annotations

import json

import numpy as np
import torch

from training.run import snapshot


def test_snapshot_metrics_hook_appends_jsonl_and_keeps_rng(conditional_snapshot, tmp_path, monkeypatch, renderer):
    from metrics import registry
    from metrics.consistency import compute_consistency
    from metrics.snapshot_hook import snapshot_hook
    from training.condition import ConditionBank
    from training.dataset import ImageLabelDataset

    path, config = conditional_snapshot
    spec = registry._METRICS["cons1k"]
    monkeypatch.setitem(registry._METRICS, "cons1k", registry.MetricSpec(
        lambda ctx: compute_consistency(ctx, num_samples=4), needs_real_images=spec.needs_real_images,
        needs_reconstructor=spec.needs_reconstructor, description=spec.description))
    G = snapshot.load_network(path)
    dataset = ImageLabelDataset(config.data)
    bank = ConditionBank(dataset.labels, renderer, G.img_resolution)  # the loop's bank, handed to the hook
    hook = snapshot_hook(config, dataset, config.recon_ckpt, str(tmp_path), torch.device("cpu"), 0, 1)
    no_metrics = config.__class__(**{**config.to_dict(), "metrics": []})
    assert snapshot_hook(no_metrics, dataset, None, "", torch.device("cpu"), 0, 1) is None
    torch.manual_seed(123)
    before = torch.get_rng_state()
    hook(G, "network-snapshot-000000.pt", bank, None)
    assert torch.equal(torch.get_rng_state(), before)  # training continues as if metrics had not run
    (line,) = open(tmp_path / "metric-cons1k.jsonl").read().splitlines()
    record = json.loads(line)
    assert record["snapshot"] == "network-snapshot-000000.pt"
    assert set(record["results"]) >= {"cons_id", "cons_exp", "cons_angle", "cons_rep"}
    assert all(np.isfinite(v) for v in record["results"].values())
