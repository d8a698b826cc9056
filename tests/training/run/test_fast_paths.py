"""Fast paths (training/fast_paths.py) against the plain path, and the two StyleGAN2-ADA options of the G step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet
from deep3drecon.reconstructor import FaceReconstructor
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model
from tests.conftest import rep_cond
from torch_utils.errors import UserError
from torch_utils.training_stats import StatsCollector
from training.condition import ConditionBank
from training.config import TrainConfig, validate
from training.consistency import ConsistencyLoss
from training.discriminator import Discriminator
from training.loss import GANLoss
from training.networks import Generator
from training.rep import make_rep
from training.run import fast_paths
from training.run.reporting import TickReporter

R = 16
G_KWARGS = dict(z_dim=8, w_dim=16, img_resolution=R, mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=2),
                encoder_kwargs=dict(channel_base=64, channel_max=8, feat_channels=2))
D_KWARGS = dict(img_resolution=R, channel_base=128, channel_max=16, num_fp16_res=2, mbstd_group_size=2)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(FaceModel(make_synthetic_model(seed=0, grid=17)), backend="torch")


def small_fr(seed: int = 0) -> FaceReconstructor:
    """ResNet-18 FR at 32 px with random (non-zero) heads, so d coeffs / d image is not zero."""
    torch.manual_seed(seed)
    net = ReconNet("resnet18", input_size=32)
    for head in net.final_layers:
        torch.nn.init.normal_(head.weight, std=0.05)
    return FaceReconstructor(net)


def coeff_batch(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    p = torch.zeros(n, 257)
    p[:, :80] = torch.randn(n, 80, generator=g) * 0.5
    p[:, 224:227] = torch.randn(n, 3, generator=g) * 0.1  # pose
    return p


# ---------------------------------------------------------------------------------------------------------------
# TF32, channels_last, Adam implementations.


def test_tf32_flag_sets_both_backends():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        fast_paths.set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        fast_paths.set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_channels_last_matches_plain_outputs_and_gradients():
    torch.manual_seed(0)
    G, D = Generator(**G_KWARGS), Discriminator(**D_KWARGS)
    G_cl, D_cl = Generator(**G_KWARGS), Discriminator(**D_KWARGS)
    G_cl.load_state_dict(G.state_dict())
    D_cl.load_state_dict(D.state_dict())
    assert fast_paths.apply_channels_last(G_cl, D_cl) == 4  # b8, b16 of G; b16, b8 of D
    assert G_cl.synthesis.b16.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not G_cl.synthesis.b4.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # not an fp16 block
    z, rep = torch.randn(4, 8), rep_cond(torch.rand(4, 9, R, R) * 2 - 1)
    outs = []
    for g, d in ((G, D), (G_cl, D_cl)):
        img = g(z, rep, noise_mode="const")
        logits = d(img)
        logits.square().sum().backward()
        outs.append((img, logits, [p.grad.clone() for p in list(g.parameters()) + list(d.parameters())]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_adam_implementations_match_the_for_loop(impl):
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (16, 5), ()]
    ref = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    alt = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    alt[0].data = alt[0].data.contiguous(memory_format=torch.channels_last)  # as with channels_last on
    opt_ref = fast_paths.make_adam(ref, 0.0025, (0.0, 0.99), "forloop", reg_interval=16)
    opt_alt = fast_paths.make_adam(alt, 0.0025, (0.0, 0.99), impl, reg_interval=16)
    for step in range(5):
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(step * 10 + i)) for i, s in enumerate(shapes)]
        for params, opt in ((ref, opt_ref), (alt, opt_alt)):
            for p, g in zip(params, grads):
                p.grad = torch.empty_like(p).copy_(g)  # layout contract: grad strides = param strides
            opt.step()
    for a, b in zip(alt, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_lazy_reg_scaling_gives_stylegan2_numbers():
    # Reference numbers of the StyleGAN2 correction for lr 0.0025, betas (0, 0.99): G at I=4, D at I=16.
    opt_g = fast_paths.make_adam([torch.nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), reg_interval=4)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.002)
    assert opt_g.param_groups[0]["betas"] == pytest.approx((0.0, 0.99**0.8))
    assert opt_g.param_groups[0]["betas"][1] == pytest.approx(0.991992, abs=1e-6)
    opt_d = fast_paths.make_adam([torch.nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), reg_interval=16)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.0023529, abs=1e-7)
    assert opt_d.param_groups[0]["betas"][1] == pytest.approx(0.990585, abs=1e-6)
    plain = fast_paths.make_adam([torch.nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), reg_interval=None)
    assert plain.param_groups[0]["lr"] == 0.0025 and plain.param_groups[0]["betas"] == (0.0, 0.99)
    assert plain.param_groups[0]["eps"] == 1e-8


def test_config_rejects_unknown_fast_path_values():
    base = dict(data=None, builtin_data={"count": 4, "resolution": 8, "seed": 0}, mbstd_group=4, batch=8)
    for bad in (dict(adam_impl="apex"), dict(fr_autocast="fp8"), dict(g_reg_interval=0)):
        with pytest.raises(UserError):
            validate(TrainConfig(**base, **bad))
    defaults = TrainConfig()
    assert (defaults.allow_tf32, defaults.channels_last, defaults.adam_impl, defaults.fr_autocast,
            defaults.compile_fr, defaults.g_reg_interval, defaults.w_avg_in_g_pass) == (
            False, False, "auto", "off", False, None, False)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The G step: w_avg updates, rep(p) reuse, FR under autocast and compiled.


def _count_w_avg_updates(G: Generator) -> list[int]:
    calls = [0]
    original = G.mapping.forward

    def counting(*args, **kwargs):
        calls[0] += bool(kwargs.get("update_emas", False))
        return original(*args, **kwargs)

    G.mapping.forward = counting
    return calls


@pytest.mark.parametrize("in_g_pass, expected", [(False, 1), (True, 2)])
def test_w_avg_update_count_per_iteration(in_g_pass, expected):
    torch.manual_seed(0)
    kwargs = dict(G_KWARGS, encoder_kwargs=None)
    G, D = Generator(**kwargs), Discriminator(**D_KWARGS)
    loss = GANLoss(G, D, StatsCollector(), w_avg_in_g_pass=in_g_pass)
    calls = _count_w_avg_updates(G)
    z, real = torch.randn(4, 8), torch.rand(4, 3, R, R) * 2 - 1
    w_before = G.mapping.w_avg.clone()
    with torch.no_grad():
        w_mean = G.mapping(z, None)[:, 0].mean(dim=0)  # what the Gmain pass will see (mapping is deterministic)
    loss.accumulate_gradients("Gmain", real, None, z, None, gain=1.0, cur_nimg=0)
    expected_after_g = w_mean.lerp(w_before, G.mapping.w_avg_beta) if in_g_pass else w_before
    torch.testing.assert_close(G.mapping.w_avg, expected_after_g, rtol=0, atol=0)
    loss.accumulate_gradients("Dmain", real, None, z, None, gain=1.0, cur_nimg=0)
    assert calls[0] == expected


class CountingRenderer(torch.nn.Module):
    """Wraps a renderer and counts its calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, coeffs, size):
        self.calls += 1
        return self.inner(coeffs, size)


def test_rep_of_p_is_rendered_once_per_g_step_and_reuse_is_exact(renderer):
    torch.manual_seed(0)
    G, D = Generator(**G_KWARGS), Discriminator(**D_KWARGS)
    counting = CountingRenderer(renderer)
    consistency = ConsistencyLoss(counting, small_fr(), lambda_cons=20.0, blend_kimg=0.008)
    loss = GANLoss(G, D, StatsCollector(), consistency=consistency)
    p = coeff_batch(4)
    cond = ConditionBank(p, counting, R).rows(torch.arange(4))  # the loop's condition of this round
    assert counting.calls == 0  # nothing rendered until the G step reads rep(p)
    z, real = torch.randn(4, 8), torch.rand(4, 3, R, R) * 2 - 1
    G.requires_grad_(True)
    loss.accumulate_gradients("Gmain", real, None, z, cond, gain=1.0, cur_nimg=4)
    assert counting.calls == 2  # rep(p) once (shared by E and the target), rep(FR(x)) once
    # Reusing the condition's rep(p) gives exactly what re-rendering p inside the loss would give.
    fake = torch.rand(4, 3, R, R) * 2 - 1
    with torch.no_grad():
        fresh = make_rep(renderer, p, R)
        assert torch.equal(consistency.distance(fake, cond.rep, 0.5), consistency.distance(fake, fresh, 0.5))


def _consistency_grad(renderer, fr, mode: str, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    p = coeff_batch(2)
    with torch.no_grad():
        rep = make_rep(renderer, p, R)
    fake = (torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(5)) * 2 - 1).requires_grad_(True)
    dist = ConsistencyLoss(renderer, fr, fr_autocast=mode, compile_backend=backend).distance(fake, rep, 0.7)
    dist.sum().backward()
    return dist.detach(), fake.grad


# Measured here (world v5 face model): bf16 gradient cosine 0.984 (relative error 0.18), distance off by up to 3.8%;
# fp16 0.997 (0.08), distance up to 1.8%: bf16 keeps 8 mantissa bits, fp16 11.
@pytest.mark.parametrize("mode, min_cosine, max_rel_err, dist_rtol", [("bf16", 0.95, 0.35, 0.06),
                                                                      ("fp16", 0.99, 0.15, 0.04)])
def test_fr_under_autocast_keeps_gradients_close_to_fp32(renderer, mode, min_cosine, max_rel_err, dist_rtol):
    fr = small_fr()
    dist32, grad32 = _consistency_grad(renderer, fr, "off")
    dist16, grad16 = _consistency_grad(renderer, fr, mode)
    assert dist16.dtype == torch.float32 and torch.isfinite(grad16).all() and grad16.abs().max() > 0
    assert grad32.abs().max() > 0 and not torch.equal(grad16, grad32)  # autocast really ran in low precision
    torch.testing.assert_close(dist16, dist32, rtol=dist_rtol, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)
    assert cosine > min_cosine, cosine
    assert (grad16 - grad32).norm() / grad32.norm() < max_rel_err


@pytest.mark.slow
def test_compiled_fr_matches_eager(renderer):
    fr = small_fr()
    dist_eager, grad_eager = _consistency_grad(renderer, fr, "off")
    dist_comp, grad_comp = _consistency_grad(renderer, fr, "off", backend="aot_eager")
    torch.testing.assert_close(dist_comp, dist_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_comp, grad_eager, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Loader wait in the status line and stats.jsonl.


def test_loader_wait_is_reported_per_tick(tmp_path, capsys):
    stats = StatsCollector()
    reporter = TickReporter(str(tmp_path), stats, torch.device("cpu"), rank=0)
    reporter.add_loader_wait(0.75)
    reporter.add_loader_wait(0.5)
    start = 0.0
    reporter.tick(cur_tick=0, cur_nimg=8, tick_start_nimg=0, tick_start_time=start, start_time=start,
                  maintenance_time=0.0)  # fmt: skip
    reporter.tick(cur_tick=1, cur_nimg=16, tick_start_nimg=8, tick_start_time=start, start_time=start,
                  maintenance_time=0.0)  # fmt: skip
    reporter.close()
    lines = [json.loads(line) for line in open(tmp_path / "stats.jsonl")]
    assert lines[0]["Timing/loader_wait_sec"]["mean"] == pytest.approx(1.25)
    assert lines[1]["Timing/loader_wait_sec"]["mean"] == 0.0  # reset at every tick
    frac = lines[0]["Timing/loader_wait_frac"]["mean"]
    assert 0 < frac and math.isclose(frac * lines[0]["Timing/sec_per_tick"]["mean"], 1.25, rel_tol=1e-6)
    status = capsys.readouterr().out.splitlines()
    assert "wait 1.2" in status[0] or "wait 1.3" in status[0]


# ---------------------------------------------------------------------------------------------------------------
# The loop wires the config values through (one tiny unconditional iteration, fast paths on).


@pytest.mark.slow
def test_loop_applies_g_reg_interval_and_fast_paths(tmp_path):
    from tests.conftest import run_training_loop, write_image_dataset
    from training.run import snapshot

    data = str(tmp_path / "tiny.zip")
    write_image_dataset(data, num=8, resolution=8)
    config = TrainConfig(cfg="test", data=data, z_dim=8, w_dim=16, map_layers=2, channel_base=128, channel_max=16,
                         num_fp16_res=1, mbstd_group=2, batch=4, ema_kimg=0.01, tick_kimg=1, snap=1, workers=0,
                         design="uncond", d_reg_interval=2, kimg=0.004, device="cpu", g_reg_interval=4,
                         w_avg_in_g_pass=True, channels_last=True, adam_impl="foreach")  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_training_loop(config, str(run_dir), torch.device("cpu"))
    state = snapshot.safe_load(snapshot.latest_training_state(str(run_dir)))
    group_G, group_D = state["opt_G"]["param_groups"][0], state["opt_D"]["param_groups"][0]
    assert group_G["lr"] == pytest.approx(0.0025 * 0.8) and group_G["betas"][1] == pytest.approx(0.99**0.8)
    assert group_G["foreach"] is True
    assert group_D["lr"] == pytest.approx(0.0025 * 2 / 3) and group_D["betas"][1] == pytest.approx(0.99 ** (2 / 3))
    assert not torch.equal(state["G"]["mapping.w_avg"], torch.zeros(16))
    assert "Timing/loader_wait_sec" in json.loads((run_dir / "stats.jsonl").read_text().splitlines()[0])
