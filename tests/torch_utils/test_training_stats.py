"""torch_utils.training_stats: the StatsCollector against numpy."""

from __future__ import annotations

import numpy as np
import pytest


def test_stats_collector_matches_numpy_and_resets():
    import torch

    from torch_utils.training_stats import StatsCollector

    values = np.array([1.0, 2.0, 3.0, 5.0, -4.5])
    stats = StatsCollector()
    stats.report("x", torch.tensor(values[:3]))
    stats.report("x", float(values[3]))
    stats.report("x", torch.tensor([[values[4]]]))
    stats.report("empty", torch.zeros(0))
    result = stats.collect()
    assert set(result) == {"x"} and result["x"]["num"] == 5
    assert result["x"]["mean"] == pytest.approx(values.mean()) and result["x"]["std"] == pytest.approx(values.std())
    assert stats.collect() == {}
