"""torch_utils.distributed.average_gradients when ranks compute different sets of gradients (a skipped branch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Rank 0 uses both branches, rank 1 only `a`; `unused` gets a gradient on no rank.
SCRIPT = """
import sys, torch
from torch_utils import distributed

def net():
    torch.manual_seed(0)
    return torch.nn.ModuleDict(dict(a=torch.nn.Linear(3, 2), b=torch.nn.Linear(3, 2), unused=torch.nn.Linear(3, 1)))

def worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    distributed.init_process_group(rank, 2, torch.device("cpu"), "file://" + init_file)
    m = net()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 + rank))
    loss = m["a"](x).square().sum() + (m["b"](x).sin().sum() if rank == 0 else 0)
    loss.backward()
    num_nan = distributed.average_gradients(m.parameters())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}
    torch.save({"grads": grads, "num_nan": int(num_nan)}, out_file + f".{rank}")
    distributed.shutdown()

if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_average_gradients_with_a_branch_skipped_on_one_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    out = str(tmp_path / "grads.pt")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "init"), out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    # Independent reference: each rank's own gradients computed here in one process, then averaged by hand with
    # zeros for the branch rank 1 skipped.
    namespace: dict = {}
    exec(SCRIPT.split("def worker")[0], namespace)  # the same net() as the workers
    per_rank = []
    for rank in range(2):
        m = namespace["net"]()
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 + rank))
        (m["a"](x).square().sum() + (m["b"](x).sin().sum() if rank == 0 else 0)).backward()
        per_rank.append({n: p.grad for n, p in m.named_parameters()})
    for name in per_rank[0]:
        got = [r["grads"][name] for r in ranks]
        if name.startswith("unused"):
            assert got == [None, None]  # no rank computed it: stays None, the optimizer skips it
            continue
        parts = [g[name] if g[name] is not None else torch.zeros_like(per_rank[0][name]) for g in per_rank]
        expected = (parts[0] + parts[1]) / 2
        for g in got:
            torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-7, msg=name)
        assert torch.equal(got[0], got[1])  # replicas stay identical
    assert ranks[0]["num_nan"] == ranks[1]["num_nan"] == 0
