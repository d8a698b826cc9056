"""Every design through the loop: kill/resume bit-exact, and 2 gloo processes equal to 1 with the same total batch.

The method's and StyleGAN2's versions of these are in test_training_loop.py and test_method.py; here each other row
of training/designs.py, on a tiny 16 px config with the synthetic face model and a random-weight FR.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_training_loop, write_image_dataset
from training.config import TrainConfig
from training.run import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEW_DESIGNS = ["method-noblend", "method-coeffcons", "method-modulated", "method-mapping", "sg2-cond", "dfg", "3dfm"]
TINY = dict(cfg="test", render_backend="torch", z_dim=8, w_dim=16, channel_base=128, channel_max=16, num_fp16_res=0,
            mbstd_group=2, batch=4, tick_kimg=0.008, snap=1, workers=0, ema_kimg=0.01, enc_channel_base=64,
            enc_channel_max=8, enc_feat_channels=2, blend_kimg=0.016, lambda_cons=20.0, d_reg_interval=2,
            device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from deep3drecon.synthetic import write_synthetic_mat

    tmp = tmp_path_factory.mktemp("assets")
    data = str(tmp / "faces.zip")
    write_image_dataset(data, num=12, resolution=16)
    bfm = write_synthetic_mat(str(tmp / "face.mat"))
    ckpt = str(tmp / "fr.pth")
    torch.manual_seed(0)
    net = ReconNet(backbone="resnet18", input_size=64)
    for name, param in net.named_parameters():
        if name.startswith("final_layers"):  # zero-initialised heads would make FR's estimate constant
            torch.nn.init.normal_(param, std=1e-3)
    save_recon_net(net, ckpt)
    return dict(data=data, bfm=bfm, recon_ckpt=ckpt)


@pytest.mark.slow
@pytest.mark.parametrize("design", NEW_DESIGNS)
def test_kill_and_resume_is_bit_exact(tmp_path, assets, design):
    def config(kimg: float) -> TrainConfig:
        return TrainConfig(**TINY, **assets, design=design, kimg=kimg)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    run_training_loop(config(0.016), str(straight), torch.device("cpu"))
    run_training_loop(config(0.008), str(resumed), torch.device("cpu"))  # "killed" after its 8-image snapshot
    state_path = snapshot.latest_training_state(str(resumed))
    out = run_training_loop(config(0.016), str(resumed), torch.device("cpu"), resume_state=state_path)
    assert out["cur_nimg"] == 16
    a = torch.load(snapshot.latest_training_state(str(straight)), weights_only=True)
    b = torch.load(snapshot.latest_training_state(str(resumed)), weights_only=True)
    assert a["config"]["design"] == design
    for key in ("G", "D", "G_ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=f"{design} {key}.{name}")
    G = snapshot.load_network(snapshot.latest_training_state(str(straight)))
    kinds = {"method-modulated": "inject-modulated", "method-mapping": "map-embed", "sg2-cond": "map-embed",
             "dfg": "map-raw", "3dfm": "comod"}  # fmt: skip
    assert G.cond_kind == kinds.get(design, "inject")


# One Gmain + Dmain + Dreg accumulation of a design: 2 gloo ranks with half the batch each vs 1 process with all.
PHASE_SCRIPT = """
import sys, numpy as np, torch
from torch_utils import distributed
from torch_utils.training_stats import StatsCollector
from training.condition import ConditionBank
from training.config import TrainConfig
from training.discriminator import Discriminator
from training.loss import GANLoss
from training.networks import Generator
from training.networks_config import discriminator_kwargs, generator_kwargs
from training.resolve import build_renderer
from training.training_loop import _g_term

def grads(design, assets, rank, world):
    torch.set_num_threads(1)
    config = TrainConfig(**assets, design=design)
    labels = np.random.default_rng(0).normal(size=[8, 257]).astype(np.float32) * 0.1
    torch.manual_seed(0)
    G = Generator(**generator_kwargs(config, 16))
    D = Discriminator(**dict(discriminator_kwargs(config, 16), mbstd_group_size=1))  # samples independent
    renderer = build_renderer(assets["bfm"], "torch", torch.device("cpu"))
    term = _g_term(config.design_spec, config, renderer, labels, assets["recon_ckpt"], torch.device("cpu"))
    bank = ConditionBank(labels, renderer, 16)
    g = torch.Generator().manual_seed(1)
    z, reals = torch.randn(8, G.z_dim, generator=g), torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    gen_cond, real_cond = bank.rows(torch.arange(8).flip(0)), bank.condition(torch.as_tensor(labels))
    half = slice(rank * 8 // world, (rank + 1) * 8 // world)
    loss = GANLoss(G, D, StatsCollector(), consistency=term)
    out = {}
    for phase, net in (("Gmain", G), ("Dmain", D), ("Dreg", D)):
        net.requires_grad_(True)
        for p in net.parameters():
            p.grad = None
        loss.accumulate_gradients(phase, reals[half], real_cond[half], z[half], gen_cond[half], 1.0, 4)
        net.requires_grad_(False)
        distributed.average_gradients(net.parameters())
        out.update({f"{phase}.{n}": p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    return out

def worker(rank, design, assets, init_file, out_file):
    distributed.init_process_group(rank, 2, torch.device("cpu"), "file://" + init_file)
    result = grads(design, assets, rank, 2)
    if rank == 0:
        torch.save(result, out_file)
    distributed.shutdown()

if __name__ == "__main__":
    import json
    design, assets, init_file, out_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    if sys.argv[5] == "1":
        torch.save(grads(design, assets, 0, 1), out_file)
    else:
        torch.multiprocessing.spawn(worker, args=(design, assets, init_file, out_file), nprocs=2)
"""


@pytest.mark.slow
@pytest.mark.parametrize("design", NEW_DESIGNS)
def test_two_gloo_processes_equal_one_with_the_same_total_batch(tmp_path, assets, design):
    import json

    script = tmp_path / "phase_worker.py"
    script.write_text(PHASE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    results = {}
    for world in (1, 2):
        out = tmp_path / f"grads{world}.pt"
        args = [sys.executable, str(script), design, json.dumps(assets), str(tmp_path / f"init{world}"), str(out),
                str(world)]  # fmt: skip
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[world] = torch.load(out, weights_only=True)
    assert set(results[1]) == set(results[2]) and any(k.startswith("Gmain.") for k in results[1])
    for name, grad in results[1].items():
        if name.endswith("noise_strength"):  # d/d(strength) reads the noise maps, drawn per call (strength is 0)
            continue
        torch.testing.assert_close(results[2][name], grad, rtol=1e-4, atol=1e-6, msg=f"{design} {name}")
