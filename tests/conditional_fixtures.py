"""Fixtures shared by the fig. 2 and metric-hook tests: a tiny conditional snapshot with its face model and FR."""

from __future__ import annotations

import os

import pytest
import torch

from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet, save_recon_net
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model, write_synthetic_mat
from tests.conftest import write_image_dataset
from training.config import TrainConfig
from training.networks import Generator
from training.run import snapshot

R = 16


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
