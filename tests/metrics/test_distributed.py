"""Two real gloo processes: reduced statistics and gathered features equal the one-shot numpy result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from metrics.context import all_reduce_sum, broadcast_flag, broadcast_scalar
    from metrics.feature_stats import FeatureStats

    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    cpu = torch.device("cpu")
    x = np.random.default_rng(0).standard_normal((23, 5)) * 3 + 2
    stats = FeatureStats(5, capture_all=True)
    stats.append(x[rank::world])  # interleaved shares of different sizes (12 and 11 rows)
    stats.all_reduce(cpu)
    mu, cov = stats.mean_cov()
    flag = broadcast_flag(rank == 0, cpu)
    total = all_reduce_sum(np.array([rank + 1.0]), cpu)
    feats = stats.features() if rank == 0 else np.zeros((0, 5), np.float32)
    scalar = broadcast_scalar(7.5 if rank == 0 else None, cpu)
    np.savez(out, mu=mu, cov=cov, feats=feats, n=stats.n, flag=flag, total=total, scalar=scalar,
             elsewhere=stats.features_on_rank0)
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_gloo_ranks_reduce_to_the_one_shot_statistics(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    outs = [tmp_path / f"rank{r}.npz" for r in range(2)]
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / "init"), str(outs[r])], env=env)
        for r in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    x = np.random.default_rng(0).standard_normal((23, 5)) * 3 + 2
    for rank, out in enumerate(outs):
        got = np.load(out)
        assert int(got["n"]) == 23 and bool(got["flag"]) and got["total"][0] == 3.0 and float(got["scalar"]) == 7.5
        np.testing.assert_allclose(got["mu"], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(got["cov"], np.cov(x, rowvar=False), rtol=1e-10)
        assert bool(got["elsewhere"]) == (rank == 1)  # features are gathered on rank 0 only
    # Gathered in rank order: rank 0's rows (0, 2, 4, ...) then rank 1's (1, 3, ...).
    feats = np.load(outs[0])["feats"]
    np.testing.assert_array_equal(feats, np.concatenate([x[0::2], x[1::2]]).astype(np.float32))
