"""calc_metrics.py: user mistakes are one-line errors raised before any model is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from calc_metrics import main


def test_unknown_metric_fails_with_one_line_before_loading(tmp_path):
    network = tmp_path / "network-snapshot-000000.pt"
    network.write_bytes(b"not a snapshot")  # never read: names are validated first
    result = CliRunner().invoke(main, ["--network", str(network), "--metrics", "fid50k_full,fid_typo"])
    assert result.exit_code != 0
    assert "unknown metric(s) fid_typo" in result.output and "Traceback" not in result.output


def test_missing_network_is_rejected(tmp_path):
    result = CliRunner().invoke(main, ["--network", str(tmp_path / "missing.pt")])
    assert result.exit_code != 0 and "does not exist" in result.output


@pytest.mark.slow
def test_calc_metrics_end_to_end_shares_passes_names_variants_and_prints_progress(tmp_path):
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from deep3drecon.synthetic import write_synthetic_mat
    from tests.conftest import write_image_dataset
    from training import snapshot
    from training.config import TrainConfig
    from training.networks import Generator

    res = 16
    data = str(tmp_path / "faces.zip")
    write_image_dataset(data, num=6, resolution=res)
    bfm = write_synthetic_mat(str(tmp_path / "face.mat"))
    ckpt = str(tmp_path / "fr.pth")
    torch.manual_seed(0)
    save_recon_net(ReconNet(backbone="resnet18", input_size=64), ckpt)
    config = TrainConfig(cfg="test", data=data, bfm=bfm, recon_ckpt=ckpt, render_backend="torch")
    g_kwargs = dict(z_dim=8, w_dim=16, img_resolution=res, mapping_kwargs=dict(num_layers=2),
                    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0),
                    encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=2))
    network = str(tmp_path / "network-snapshot-000000.pt")
    snapshot.save_network_snapshot(network, Generator(**g_kwargs).eval(), g_kwargs, config.to_dict(), 0)
    args = ["--network", network, "--metrics", "fid1k,kid1k,ds100_cgof", "--random-features", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--batch", "250"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("writing real statistics") == 1  # FID and KID: one real pass, one cache entry
    assert "img/s, ETA" in result.output
    record = json.loads((tmp_path / "run" / "metric-ds100_cgof.jsonl").read_text())
    assert record["variant"] == "cgof" and set(record["results"]) >= {"ds_id", "ds_exp", "ds_angle"}
    assert "kid" in json.loads((tmp_path / "run" / "metric-kid1k.jsonl").read_text())["results"]
