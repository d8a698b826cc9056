"""Figure 2: derivative maps of the injected features per attribute, and `generate.py feature-derivatives`."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import torch

from generation.feature_derivatives import ATTRIBUTE_SLICES, derivative_sparsity, feature_derivative_maps
from tests.conditional_fixtures import G_KWARGS, REPO, R, bank
from training.networks import Generator
from training.rep import make_rep


def test_derivative_maps_are_local_and_shaped_like_the_feats(renderer):
    torch.manual_seed(0)
    G = Generator(**G_KWARGS).eval()
    p = bank()
    maps = feature_derivative_maps(G, renderer, p[0], p.std(dim=0).clamp(min=1e-3), eps=0.5, seed=1)
    assert list(maps) == list(ATTRIBUTE_SLICES)
    for layer_maps in maps.values():
        assert [m.shape[-1] for m in layer_maps] == G.synthesis.feat_resolutions
        assert all((m >= 0).all() for m in layer_maps)
    assert all(0 <= v <= 1 for v in derivative_sparsity(maps).values())
    # At initialisation every residual branch is zero, so the top feature map is a per-pixel function of rep:
    # its derivative must vanish exactly wherever rep(p) did not change (outside the face, for instance).
    gen = torch.Generator().manual_seed(1)
    for attr, sl in ATTRIBUTE_SLICES.items():  # replay the directions drawn by feature_derivative_maps
        u = torch.randn(sl.stop - sl.start, generator=gen)
        p1 = p[0].clone()
        p1[sl] += 0.5 * p.std(dim=0).clamp(min=1e-3)[sl] * u / u.norm() * (sl.stop - sl.start) ** 0.5
        rep0, rep1 = make_rep(renderer, p[:1], R), make_rep(renderer, p1[None], R)
        unchanged = (rep0 == rep1).all(dim=1)[0]
        assert unchanged.any() and (~unchanged).any(), attr
        top = maps[attr][-1]
        assert (top[unchanged] == 0).all(), attr
        assert top[~unchanged].max() > 0, attr




def test_fig2_script_writes_one_row_per_layer(conditional_snapshot, tmp_path):
    path, _ = conditional_snapshot
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "generate.py"), "feature-derivatives", "--network", path,
                           "--outdir", str(tmp_path), "--cell", "8", "--render-backend", "torch", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = np.array(PIL.Image.open(tmp_path / "fig2-seed0000.png"))
    num_layers = Generator(**G_KWARGS).synthesis.num_conv_layers
    assert image.shape == (num_layers * 8, 4 * 8)
    assert "active fraction id" in proc.stdout


