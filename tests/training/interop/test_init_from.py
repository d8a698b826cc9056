"""--init-from: matching tensors copied into fresh G/D/G_ema, the rest listed; a conditional G started from an
unconditional one draws the source's image for every rep; counters and optimizers start from zero."""

from __future__ import annotations

import copy
import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import rep_cond, run_training_loop, write_image_dataset
from tests.training.interop.nvidia_fixtures import randomize, tiny_networks, write_nvidia_pickle
from tests.training.test_training_loop import tiny_config
from torch_utils.errors import UserError
from train import main as train_main
from training.config import TrainConfig
from training.discriminator import Discriminator
from training.interop.init_from import init_networks
from training.networks import Generator
from training.networks_config import discriminator_kwargs, generator_kwargs
from training.run import snapshot
from training.run.grids import upscale_factor

R = 16
COND = dict(cfg="test", render_backend="torch", design="method", z_dim=8, w_dim=16, channel_base=128, channel_max=16,
            num_fp16_res=0, mbstd_group=2, batch=4, tick_kimg=0.008, snap=1, workers=0, ema_kimg=0.01,
            enc_channel_base=64, enc_channel_max=8, enc_feat_channels=2, blend_kimg=0.016, lambda_cons=20.0,
            device="cpu")  # fmt: skip


def fresh_networks(config: TrainConfig) -> tuple[Generator, Discriminator, Generator]:
    G = Generator(**generator_kwargs(config, R))
    return G, Discriminator(**discriminator_kwargs(config, R)), copy.deepcopy(G)


def unconditional_snapshot(path: str, config: TrainConfig, seed: int = 5) -> Generator:
    """A trained-looking unconditional G_ema of the same backbone as `config`, saved as a network snapshot."""
    kwargs = generator_kwargs(dataclass_replace(config, design="uncond"), R)
    torch.manual_seed(seed)
    G = randomize(Generator(**kwargs), seed).eval()
    snapshot.save_network_snapshot(path, G, kwargs, {}, cur_nimg=1000)
    return G


def dataclass_replace(config: TrainConfig, **changes) -> TrainConfig:
    return TrainConfig(**dict(config.to_dict(), **changes))


def test_conditional_g_from_unconditional_snapshot_draws_the_source_image_for_any_rep(tmp_path):
    config = TrainConfig(**COND, data="unused")
    src = unconditional_snapshot(str(tmp_path / "uncond.pt"), config)
    G, D, G_ema = fresh_networks(config)
    params_before = [id(p) for p in G.parameters()]
    messages = []
    rows = init_networks(str(tmp_path / "uncond.pt"), G, D, G_ema, log=messages.append)
    status = {(r.network, r.name): r.status for r in rows}
    assert all(s == "new" for (net, name), s in status.items() if name.startswith("synthesis.encoder."))
    partial = sorted(name for (net, name), s in status.items() if net == "G" and s == "partial")
    assert partial == sorted(f"synthesis.b{r}.{conv}.weight" for r in (4, 8, 16) for conv in ("conv0", "conv1")
                             if (r, conv) != (4, "conv0"))  # every conv that takes injected features
    assert all(status[("D", name)] == "new" for name in D.state_dict())  # a network snapshot holds no D
    assert not any(s == "skipped" for s in status.values())
    report = messages[0]
    assert "new in G (not in the source; fresh initialisation): synthesis.encoder.*" in report
    assert "new in D (the source has none" in report and "G<-G_ema" in report

    z = torch.randn(4, config.z_dim, generator=torch.Generator().manual_seed(1))
    reps = [torch.rand(4, 9, R, R, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (2, 3)]
    expected = src(z, noise_mode="const")
    for net in (G_ema, G.eval()):
        images = [net(z, rep_cond(rep), noise_mode="const") for rep in reps]
        assert torch.equal(images[0], images[1])  # the injected features start switched off (zero columns)
        # Same sums plus exact zero terms: equal up to the conv's float32 summation order (CPU conv kernels sum
        # C_in and C_in + F channels in different blocks); in float64 the difference vanishes to rounding.
        torch.testing.assert_close(images[0], expected, rtol=1e-5, atol=1e-5)
    src64, G64 = copy.deepcopy(src).double(), copy.deepcopy(G_ema).double()
    torch.testing.assert_close(G64(z.double(), rep_cond(reps[0].double()), noise_mode="const"),
                               src64(z.double(), noise_mode="const"), rtol=0, atol=1e-12)
    assert torch.equal(G.mapping.fc0.weight, src.mapping.fc0.weight)
    assert [id(p) for p in G.parameters()] == params_before  # copied in place: optimizers built earlier stay valid


def test_skipped_and_unused_tensors_are_listed(tmp_path):
    # NVIDIA pickle with a 3-layer mapping and z_dim 4 into a 2-layer, z_dim 8 run: fc0 skipped, fc2 unused.
    G_src, D_src, G_ema_src, G_kwargs, D_kwargs = tiny_networks(resolution=R, z_dim=4, map_layers=3)
    pkl = str(tmp_path / "ffhq.pkl")
    write_nvidia_pickle(pkl, str(tmp_path / "marker"), dict(G=G_src, D=D_src, G_ema=G_ema_src), G_kwargs, D_kwargs)
    config = TrainConfig(**dict(COND, design="uncond", mbstd_group=2), data="unused")
    G, D, G_ema = fresh_networks(config)
    fc0_before = G.mapping.fc0.weight.detach().clone()
    messages = []
    rows = init_networks(pkl, G, D, G_ema, log=messages.append)
    report = messages[0]
    assert "skipped: G.mapping.fc0.weight [16, 8] <- source [16, 4]" in report
    assert "skipped: G_ema.mapping.fc0.weight" in report
    assert "unused from the source's G: mapping.fc2.* (2)" in report
    assert "NVIDIA StyleGAN2 pickle: G, D, G_ema" in report
    assert {r.status for r in rows if r.network == "D"} == {"copied"}
    assert torch.equal(D.b4.out.weight, D_src.b4.out.weight) and torch.equal(G.synthesis.b16.torgb.weight,
                                                                             G_src.synthesis.b16.torgb.weight)
    assert torch.equal(G_ema.synthesis.b16.torgb.weight, G_ema_src.synthesis.b16.torgb.weight)
    assert torch.equal(G.mapping.fc0.weight, fc0_before)  # skipped: the fresh init is kept
    assert torch.equal(G.mapping.fc0.bias, G_src.mapping.fc0.bias)  # name and shape match: copied
    assert not (tmp_path / "marker").exists()


def test_nothing_matching_is_an_error(tmp_path):
    config = TrainConfig(**COND, data="unused")
    other = dataclass_replace(config, w_dim=8, channel_base=64, channel_max=8)
    unconditional_snapshot(str(tmp_path / "other.pt"), other)
    G, D, G_ema = fresh_networks(config)
    with pytest.raises(UserError, match="no weight of the generator matches"):
        init_networks(str(tmp_path / "other.pt"), G, D, G_ema, log=None)


@pytest.mark.slow
def test_from_training_state_counters_start_at_zero(tmp_path):
    data = str(tmp_path / "d.zip")
    write_image_dataset(data, num=8, resolution=8)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    run_training_loop(tiny_config(data, kimg=0.004), str(first), torch.device("cpu"))
    state = snapshot.latest_training_state(str(first))
    out = run_training_loop(tiny_config(data, kimg=0.004, init_from=state), str(second), torch.device("cpu"))
    assert out == {"cur_nimg": 4, "cur_tick": 1, "batch_idx": 1}  # the source's 4 images are not counted
    # The new run's first grid is the source's last G_ema on the same grid latents (same seed).
    assert np.array_equal(np.asarray(PIL.Image.open(second / "fakes_init.png")),
                          np.asarray(PIL.Image.open(next(first.glob("fakes0*.png")))))  # fmt: skip
    saved = torch.load(snapshot.latest_training_state(str(second)), weights_only=True)
    first_saved = torch.load(state, weights_only=True)
    assert saved["opt_G"]["state"][0]["step"] == 1 == first_saved["opt_G"]["state"][0]["step"]  # fresh Adam


@pytest.fixture()
def face_assets(tmp_path):
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from deep3drecon.synthetic import write_synthetic_mat

    data = str(tmp_path / "faces.zip")
    write_image_dataset(data, num=8, resolution=R)
    bfm = write_synthetic_mat(str(tmp_path / "face.mat"))
    ckpt = str(tmp_path / "fr.pth")
    torch.manual_seed(0)
    save_recon_net(ReconNet(backbone="resnet18"), ckpt)
    return dict(data=data, bfm=bfm, recon_ckpt=ckpt)


@pytest.mark.slow
def test_train_cli_conditional_run_from_unconditional_snapshot(tmp_path, face_assets):
    config = TrainConfig(**COND, **face_assets)
    src_path = str(tmp_path / "uncond.pt")
    unconditional_snapshot(src_path, config)
    preset = tmp_path / "tiny.json"
    fast = dict(COND, lambda_cons=0.0)  # the consistency loss plays no part in the initialisation
    preset.write_text(json.dumps({k: v for k, v in fast.items() if k not in ("cfg", "device")}))
    args = ["--cfg", str(preset), "--data", face_assets["data"], "--bfm", face_assets["bfm"], "--recon-ckpt",
            face_assets["recon_ckpt"], "--kimg", "0.004", "--outdir", str(tmp_path / "runs"), "--device", "cpu",
            "--init-from", src_path]  # fmt: skip
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Initialising from" in result.output and "new in G (not in the source" in result.output
    run = next((tmp_path / "runs").glob("00000-*"))
    options = json.loads((run / "training_options.json").read_text())
    assert options["init_from"] == src_path
    # Step 0: every row of the grid (one p per row, the same z per column) shows the source's images.
    grid = np.asarray(PIL.Image.open(run / "fakes_init.png"))
    cell = R * upscale_factor(R)  # cells are nearest-upsampled to at least 96 px
    rows = grid.reshape(-1, cell, grid.shape[1], 3)
    assert all(np.array_equal(rows[0], row) for row in rows[1:])
    # After one step the injected-feature columns have left zero: the image now depends on rep.
    G = snapshot.load_network(str(next(run.glob("network-snapshot-*.pt"))))
    z = torch.randn(2, config.z_dim)
    rep1, rep2 = (torch.rand(2, 9, R, R, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2))
    assert not torch.equal(G(z, rep_cond(rep1), noise_mode="const"), G(z, rep_cond(rep2), noise_mode="const"))


def test_train_cli_init_from_errors_are_one_line(tmp_path, face_assets):
    base = ["--cfg", "paper256", "--data", face_assets["data"], "--no-cond", "--outdir", str(tmp_path), "-n"]
    for extra, message in (([" --init-from", str(tmp_path / "missing.pt")], "snapshot not found"),
                           (["--init-from", str(tmp_path / "missing.pkl")], "network pickle not found"),
                           (["--resume", "latest", "--init-from", "x.pt"], "--init-from starts a new run")):
        extra = [e.strip() for e in extra]
        result = CliRunner().invoke(train_main, base + extra)
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
    bad = tmp_path / "hostile.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")  # os.system payload
    result = CliRunner().invoke(train_main, base + ["--init-from", str(bad)])
    assert result.exit_code != 0 and "refusing" in result.output and "os.system" in result.output
    assert not (tmp_path / "ran").exists()
