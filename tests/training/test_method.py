"""The paper's method pieces: rep(p), the blending schedule, the consistency loss, and the conditioned loop."""

from __future__ import annotations

import pytest
import torch

from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import ReconNet
from deep3drecon.reconstructor import FaceReconstructor
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model
from training.condition import Condition, ConditionBank
from training.consistency import ConsistencyLoss, blend_alpha
from training.rep import make_rep, rep_distance

R = 32


@pytest.fixture(scope="module")
def renderer():
    return Renderer(FaceModel(make_synthetic_model(seed=0)), backend="torch")


def face_coeffs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(n, 257)
    p[:, :80] = torch.randn(n, 80, generator=g) * 0.5
    p[:, 80:144] = torch.randn(n, 64, generator=g) * 0.5
    p[:, 224:227] = torch.randn(n, 3, generator=g) * 0.1
    p[:, 227] = 0.3  # some ambient light on top of the release's 0.8
    return p


def test_blend_alpha_schedule():
    assert blend_alpha(0, 2000) == 0.0
    assert blend_alpha(1_000_000, 2000) == pytest.approx(0.5)
    assert blend_alpha(500_000, 2000) == pytest.approx(0.25)
    assert blend_alpha(2_000_000, 2000) == 1.0 and blend_alpha(9_000_000, 2000) == 1.0
    assert blend_alpha(123, 0) == 1.0  # no blending phase


def test_rep_layout_and_range(renderer):
    p = face_coeffs(2)
    rep = make_rep(renderer, p, R)
    out = renderer(p, R)
    assert rep.shape == (2, 9, R, R) and rep.min() >= -1 and rep.max() <= 1
    torch.testing.assert_close(rep[:, :3], out.render.clamp(0, 1) * 2 - 1)
    torch.testing.assert_close(rep[:, 3:6], out.albedo.clamp(0, 1) * 2 - 1)
    torch.testing.assert_close(rep[:, 6:], out.normals)
    background = out.mask[:, 0] == 0
    assert background.any() and (~background).any()
    assert (rep[:, :6].permute(1, 0, 2, 3)[:, background] == -1).all()  # black r and a outside the face


def test_condition_bank_cache_equals_rendering_each_batch(renderer):
    bank = face_coeffs(10, seed=3)
    idx = torch.tensor([7, 0, 7, 3])
    direct = make_rep(renderer, bank[idx], R)
    cached = ConditionBank(bank, renderer, R, cache_mb=1, batch=4)  # 10 x 9 x 32 x 32 x 4 B = 0.35 MB: fits
    on_demand = ConditionBank(bank, renderer, R, cache_mb=0.1)  # does not fit: rendered when read
    assert cached.cached is not None and on_demand.cached is None and ConditionBank(bank, renderer, R).cached is None
    for cond_bank in (cached, on_demand):
        cond = cond_bank.rows(idx)
        assert torch.equal(cond.p, bank[idx])
        rep = cond.rep
        assert not rep.requires_grad and cond.rep is rep  # rendered once, then kept
        torch.testing.assert_close(rep, direct, rtol=0, atol=1e-6)  # batches of 4 vs 10 rows: float noise at most
    assert "pre-rendered once" in cached.describe() and "rendered per batch" in on_demand.describe()


def test_condition_renders_lazily_once_and_slices_what_it_has(renderer):
    p = face_coeffs(4, seed=1)
    calls = []

    def render(coeffs: torch.Tensor) -> torch.Tensor:
        calls.append(len(coeffs))
        return make_rep(renderer, coeffs, R)

    cond = Condition(p, render=render)
    assert not cond.has_rep and calls == []  # nothing rendered until someone reads rep
    half = cond[:2]
    torch.testing.assert_close(half.rep, make_rep(renderer, p[:2], R))
    assert calls == [2] and not cond.has_rep  # a slice renders its own rows only
    rep = cond.rep
    assert calls == [2, 4] and cond.rep is rep and torch.equal(cond[1:3].rep, rep[1:3]) and calls == [2, 4]
    grid = cond.repeat_interleave(3)  # rendered rows are repeated, not rendered again
    assert calls == [2, 4] and torch.equal(grid.rep, rep.repeat_interleave(3, dim=0))
    assert torch.equal(grid.p, p.repeat_interleave(3, dim=0))
    p_only = Condition(p)
    with pytest.raises(ValueError):
        p_only.rep  # noqa: B018 - reading it is the test


def test_rep_distance_is_the_per_entry_mean_square():
    a, b = torch.randn(3, 9, 4, 4), torch.randn(3, 9, 4, 4)
    expected = torch.tensor([float(((a[n] - b[n]) ** 2).sum()) / (9 * 16) for n in range(3)])
    torch.testing.assert_close(rep_distance(a, b), expected)


class OracleFR(torch.nn.Module):
    """An exact FR for known pairs: returns p for r(p), and a p that drifts with any deviation from r(p)."""

    def __init__(self, p: torch.Tensor, render: torch.Tensor) -> None:
        super().__init__()
        self.p, self.render = p, render

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        drift = (img - self.render).mean(dim=[1, 2, 3])
        p_hat = self.p.clone()
        p_hat[:, 224] = p_hat[:, 224] + 5 * drift  # deviation rotates the estimated face (yaw)
        return p_hat


def test_consistency_is_zero_for_exact_generator_and_fr(renderer):
    p = face_coeffs(2)
    rep = make_rep(renderer, p, R)
    loss = ConsistencyLoss(renderer, OracleFR(p, rep[:, :3]))
    for alpha in (0.0, 0.3, 1.0):
        dist = loss.distance(rep[:, :3].clone(), rep, alpha)  # G outputs exactly r(p)
        assert dist.shape == (2,)
        torch.testing.assert_close(dist, torch.zeros(2), rtol=0, atol=1e-10)
    # A generator that does not match r(p) is penalised once alpha lets its image through (eq. 6).
    wrong = rep[:, :3] + 0.2
    assert (loss.distance(wrong, rep, 0.0) == 0).all()  # alpha = 0: FR sees only r(p)
    assert (loss.distance(wrong, rep, 1.0) > 1e-4).all()


def test_consistency_term_owns_lambda_and_the_blending_schedule(renderer):
    """term(fake, cond, nimg) = lambda x d(alpha(nimg)) (eq. 6, 13), and it reports d and the alpha it used."""
    p = face_coeffs(2)
    rep = make_rep(renderer, p, R)
    loss = ConsistencyLoss(renderer, OracleFR(p, rep[:, :3]), lambda_cons=7.0, blend_kimg=0.1)
    wrong, reported = rep[:, :3] + 0.2, {}
    for nimg, alpha in ((0, 0.0), (50, 0.5), (400, 1.0)):
        term = loss(wrong, Condition(p, rep), nimg, report=reported.__setitem__)
        torch.testing.assert_close(term, 7.0 * loss.distance(wrong, rep, alpha))
        assert reported["Progress/alpha"] == alpha and torch.equal(reported["Loss/G/consistency"], term / 7.0)


def test_gradients_reach_the_image_never_fr(renderer):
    torch.manual_seed(0)
    net = ReconNet(backbone="resnet18")
    for name, param in net.named_parameters():
        if name.startswith("final_layers"):  # the release zero-initialises the heads: make them informative
            torch.nn.init.normal_(param, std=1e-3)
    fr = FaceReconstructor(net)
    p = face_coeffs(2)
    rep = make_rep(renderer, p, R)
    fake = (rep[:, :3] + 0.1 * torch.randn_like(rep[:, :3])).requires_grad_(True)
    dist = ConsistencyLoss(renderer, fr).distance(fake, rep, 0.5)
    dist.sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(param.grad is None and not param.requires_grad for param in fr.parameters())


def test_conditioned_loop_trains_and_resumes_blending(tmp_path):
    import json

    from deep3drecon.recon_net import save_recon_net
    from deep3drecon.synthetic import write_synthetic_mat
    from tests.conftest import run_training_loop, write_image_dataset
    from training.config import TrainConfig
    from training.run import snapshot

    data = str(tmp_path / "faces.zip")
    write_image_dataset(data, num=8, resolution=16)
    bfm = write_synthetic_mat(str(tmp_path / "face.mat"))
    ckpt = str(tmp_path / "fr.pth")
    torch.manual_seed(0)
    save_recon_net(ReconNet(backbone="resnet18"), ckpt)
    common = dict(cfg="test", data=data, bfm=bfm, recon_ckpt=ckpt, render_backend="torch", design="method", z_dim=8,
                  w_dim=16, channel_base=128, channel_max=16, num_fp16_res=0, mbstd_group=2, batch=4, tick_kimg=0.008,
                  snap=1, workers=0, ema_kimg=0.01, enc_channel_base=64, enc_channel_max=8, enc_feat_channels=2,
                  blend_kimg=0.016, lambda_cons=20.0, device="cpu")
    run_training_loop(TrainConfig(**common, kimg=0.008), str(tmp_path), torch.device("cpu"))
    state = snapshot.latest_training_state(str(tmp_path))
    run_training_loop(TrainConfig(**common, kimg=0.016), str(tmp_path), torch.device("cpu"), resume_state=state)
    ticks = [json.loads(line) for line in open(tmp_path / "stats.jsonl")]
    alphas = [t["Progress/alpha"]["mean"] for t in ticks]
    nimgs = [0] + [round(t["Progress/kimg"]["mean"] * 1000) for t in ticks]
    # Each tick reports the mean alpha of its G steps, one per batch of 4 at the images shown before the step:
    # linear in images shown (eq. 6), across the resume.
    expected = [sum(n / 16 for n in range(a, b, 4)) / len(range(a, b, 4)) for a, b in zip(nimgs, nimgs[1:])]
    assert alphas == pytest.approx(expected) and expected[-1] > expected[0]
    assert all("Loss/G/consistency" in t for t in ticks)
    G = snapshot.load_network(snapshot.latest_training_state(str(tmp_path)))
    assert G.needs == ("rep",) and G.cond_kind == "inject"
    for name in ("reps.png", "fakes_init.png", "fakes000000.008.png", "fakes000000.016.png"):
        assert (tmp_path / name).is_file()
