"""Figure-2 derivative maps, the fig-2 script, and train.py's per-snapshot metric hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet, save_recon_net
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model, write_synthetic_mat
from generation.feature_derivatives import ATTRIBUTE_SLICES, derivative_sparsity, feature_derivative_maps
from tests.conftest import write_image_dataset
from training import snapshot
from training.config import TrainConfig
from training.networks import Generator
from training.rep import make_rep

R = 16
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
G_KWARGS = dict(z_dim=8, w_dim=16, img_resolution=R, mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0),
                encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=2))


@pytest.fixture(scope="module")
def renderer():
    return Renderer(FaceModel(make_synthetic_model(seed=0)), backend="torch")


def bank(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(n, 257)
    p[:, :144] = torch.randn(n, 144, generator=g) * 0.5
    p[:, 224:227] = torch.randn(n, 3, generator=g) * 0.1
    return p


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


@pytest.fixture(scope="module")
def conditional_snapshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap")
    data = str(tmp / "faces.zip")
    write_image_dataset(data, num=6, resolution=R)
    bfm = write_synthetic_mat(str(tmp / "face.mat"))
    ckpt = str(tmp / "fr.pth")
    torch.manual_seed(0)
    save_recon_net(ReconNet(backbone="resnet18", input_size=64), ckpt)
    config = TrainConfig(cfg="test", data=data, bfm=bfm, recon_ckpt=ckpt, render_backend="torch", metrics=["cons1k"])
    G = Generator(**G_KWARGS).eval()
    path = str(tmp / "network-snapshot-000000.pt")
    snapshot.save_network_snapshot(path, G, G_KWARGS, config.to_dict(), 0)
    return path, config


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
