"""The design table (training/designs.py): each ablation changes exactly the mechanism it names, each baseline's
conditioning path matches an independent transcription of its reference, the defaults stay as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deep3drecon.coeffs import COEFF_SLICES
from deep3drecon.face_model import FaceModel
from deep3drecon.render import Renderer
from deep3drecon.synthetic import make_synthetic_model
from tests.conftest import rep_cond
from training.condition import Condition
from training.config import TrainConfig
from training.consistency import ConsistencyLoss, coeff_distance, coeff_group_scales
from training.designs import COND_KINDS, DESIGNS, G_TERMS
from training.discriminator import Discriminator
from training.imitative import ABSENT_TERMS, ImitativeLoss, face_mask, render_distance, skin_distance
from training.networks import Generator, MappingNetwork, SynthesisLayer
from training.networks_config import discriminator_kwargs, generator_kwargs
from training.rep import make_rep

ISSUE_NAMES = ("method", "uncond", "sg2-cond", "dfg", "3dfm", "method-noblend", "method-coeffcons", "method-modulated",
               "method-mapping")  # fmt: skip
TINY_SYN = dict(channel_base=128, channel_max=8, num_fp16_res=0)
TINY_ENC = dict(channel_base=64, channel_max=8, feat_channels=3)


def fc_np(layer, x: np.ndarray, lrelu: bool = False) -> np.ndarray:
    """Independent numpy transcription of an equalized-lr linear layer (+ lrelu with gain sqrt 2)."""
    w = layer.weight.detach().double().numpy() * layer.weight_gain
    y = x @ w.T + layer.bias.detach().double().numpy() * layer.bias_gain
    return np.where(y >= 0, y, 0.2 * y) * np.sqrt(2) if lrelu else y


def norm2_np(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x**2).mean(axis=1, keepdims=True) + 1e-8)


def coeffs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(n, 257)
    p[:, :144] = torch.randn(n, 144, generator=g) * 0.5
    p[:, 224:227] = torch.randn(n, 3, generator=g) * 0.1
    p[:, 227] = 0.3
    return p


def generator(cond_kind: str, res: int = 16) -> Generator:
    torch.manual_seed(0)
    encoder = TINY_ENC if COND_KINDS[cond_kind].encoder else None
    G = Generator(z_dim=8, w_dim=16, img_resolution=res, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=TINY_SYN,
                  encoder_kwargs=encoder, cond_kind=cond_kind)  # fmt: skip
    for layer in G.synthesis.modules():  # trained injected-feature columns (they start at zero)
        if isinstance(layer, SynthesisLayer) and layer.feat_channels:
            layer.weight.data[:, layer.in_channels :].normal_()
    return G


# ---------------------------------------------------------------------------------------------------------------
# The table.


def test_the_issue_names_every_design_and_each_row_is_well_formed():
    assert set(ISSUE_NAMES) <= set(DESIGNS)
    for name, design in DESIGNS.items():
        assert design.name == name and design.cond_kind in COND_KINDS and design.g_term in G_TERMS
        assert design.summary and (not design.d_cond or design.conditional)


def test_defaults_build_the_same_networks_as_before():
    # method / uncond: no c_dim anywhere, the method's G has no new submodule (the interop equality tests cover
    # the numbers); only sg2-cond's D and the mapping designs' G grow.
    for name in ("method", "uncond"):
        config = TrainConfig(design=name)
        assert "c_dim" not in discriminator_kwargs(config, 16)
        G = Generator(**generator_kwargs(config, 16))
        assert not any("embed" in k or "feat_affine" in k for k in G.state_dict())
    assert discriminator_kwargs(TrainConfig(design="sg2-cond"), 16)["c_dim"] == 257


def test_unconditional_d_ignores_the_condition_bitwise():
    torch.manual_seed(0)
    D = Discriminator(16, **TINY_SYN, mbstd_group_size=2)
    img = torch.randn(2, 3, 16, 16)
    assert torch.equal(D(img), D(img, Condition(coeffs(2))))


# ---------------------------------------------------------------------------------------------------------------
# Ablations: each changes exactly its mechanism.


def modulated_seam_layer(feat_style: str) -> SynthesisLayer:
    torch.manual_seed(1)
    layer = SynthesisLayer(3, 4, w_dim=8, resolution=5, feat_channels=2, use_noise=False, activation="linear",
                           feat_style=feat_style)  # fmt: skip
    layer.affine.weight.data.normal_()
    layer.affine.bias.data.uniform_(0.2, 2.0)
    layer.weight.data[:, 3:].normal_()
    layer.weight.data[:, :3] = 0  # eq. 8's setting (no demodulation through z): see test_networks' eq. 8 test
    return layer


@pytest.mark.parametrize("feat_style", ["one", "affine"])
def test_modulated_injection_breaks_eq8_and_only_that(feat_style):
    layer = modulated_seam_layer(feat_style)
    torch.manual_seed(2)
    mapping = MappingNetwork(z_dim=6, w_dim=8, num_ws=1)
    z = torch.randn(1, 6, requires_grad=True)
    c = torch.randn(1, 2, 5, 5, requires_grad=True)
    out = layer(torch.randn(1, 3, 5, 5), mapping(z)[:, 0], c, noise_mode="none")
    (grad_c,) = torch.autograd.grad((torch.randn_like(out) * out).sum(), c, create_graph=True)
    (mixed,) = torch.autograd.grad((torch.randn_like(grad_c) * grad_c).sum(), z, allow_unused=True)
    mixed_norm = 0.0 if mixed is None else float(mixed.abs().sum())
    if feat_style == "one":
        assert mixed_norm == 0.0  # eq. 8: d^2 l / dz dc = 0
    else:
        assert mixed_norm > 1e-6  # style s(w) on c: eq. 8 no longer holds


def test_modulated_generator_differs_from_the_method_only_by_the_feat_affines():
    method, modulated = generator("inject"), generator("inject-modulated")
    extra = set(modulated.state_dict()) - set(method.state_dict())
    assert extra and all(".feat_affine." in k for k in extra)
    assert set(method.state_dict()) <= set(modulated.state_dict())
    # With every feat style at 1 (affine weight 0, bias 1), the modulated layer is the method's layer.
    modulated.load_state_dict(method.state_dict(), strict=False)
    for layer in modulated.synthesis.modules():
        if isinstance(layer, SynthesisLayer) and layer.feat_channels:
            layer.feat_affine.weight.data.zero_()
            layer.feat_affine.bias.data.fill_(1.0)
    z, cond = torch.randn(2, 8), rep_cond(torch.rand(2, 9, 16, 16) * 2 - 1)
    with torch.no_grad():
        torch.testing.assert_close(modulated(z, cond, noise_mode="const"), method(z, cond, noise_mode="const"))


def test_mapping_conditioning_changes_ws_with_p_and_the_method_does_not():
    z, p1, p2 = torch.randn(3, 8), coeffs(3, 1), coeffs(3, 2)
    rep = torch.rand(3, 9, 16, 16) * 2 - 1
    method = generator("inject")
    assert torch.equal(method.mapping(z, Condition(p1, rep)), method.mapping(z, Condition(p2, rep)))
    for kind in ("map-embed", "map-raw"):
        G = generator(kind)
        assert G.synthesis.encoder is None and G.needs == ("p",)
        assert not torch.allclose(G.mapping(z, Condition(p1)), G.mapping(z, Condition(p2)))
        with torch.no_grad():  # and the image follows p through ws alone
            img1, img2 = G(z, Condition(p1), noise_mode="const"), G(z, Condition(p2), noise_mode="const")
        assert not torch.allclose(img1, img2)


def oracle_fr(p_hat: torch.Tensor) -> torch.nn.Module:
    class FR(torch.nn.Module):
        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return p_hat + 0 * img.mean()

    return FR()


def test_coefficient_consistency_equals_a_numpy_transcription():
    labels = coeffs(20, 3).numpy()
    labels[:, 254:257] = 0.0  # a group with no spread in the bank: left out
    p, p_hat = coeffs(4, 4), coeffs(4, 5)
    scales = coeff_group_scales(labels)
    var = labels.astype(np.float64).var(axis=0)
    expected = np.zeros(4)
    used = 0
    for sl in COEFF_SLICES.values():
        group_var = var[sl].mean()
        if group_var > 1e-12:
            expected += ((p_hat.numpy()[:, sl] - p.numpy()[:, sl]) ** 2).mean(axis=1) / group_var
            used += 1
    expected /= used
    np.testing.assert_allclose(coeff_distance(p_hat, p, scales).numpy(), expected, rtol=1e-5)
    # Through the loss, with the blending and lambda of the paper's term: lambda * d_coeff, no render of p_hat.
    loss = ConsistencyLoss(None, oracle_fr(p_hat), lambda_cons=3.0, blend_kimg=0, space="coeff", group_scales=scales)
    cond = Condition(p, torch.zeros(4, 9, 8, 8))
    np.testing.assert_allclose(loss(torch.zeros(4, 3, 8, 8), cond, 0).numpy(), 3 * expected, rtol=1e-5)


def test_noblend_builds_alpha_one_and_the_method_blends(tmp_path):
    from training.training_loop import _g_term

    fr_path = str(tmp_path / "fr.pth")
    from deep3drecon.recon_net import ReconNet, save_recon_net

    save_recon_net(ReconNet(backbone="resnet18", input_size=64), fr_path)
    config = TrainConfig(blend_kimg=2.0)
    labels = coeffs(4).numpy()
    alphas = {}
    for name in ("method", "method-noblend", "method-coeffcons"):
        term = _g_term(DESIGNS[name], config, None, labels, fr_path, torch.device("cpu"))
        alphas[name] = (term.alpha(0), term.alpha(1000), term.space)
    assert alphas == {"method": (0.0, 0.5, "rep"), "method-noblend": (1.0, 1.0, "rep"),
                      "method-coeffcons": (0.0, 0.5, "coeff")}  # fmt: skip
    assert _g_term(DESIGNS["sg2-cond"], config, None, labels, fr_path, torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------------------------
# Baselines against independent transcriptions of their references.


def test_sg2_cond_mapping_is_stylegan2_ada_label_conditioning():
    G = generator("map-embed")
    z, p = torch.randn(3, 8), coeffs(3)
    x = np.concatenate([norm2_np(z.double().numpy()), norm2_np(fc_np(G.mapping.embed, p.double().numpy()))], axis=1)
    for i in range(G.mapping.num_layers):
        x = fc_np(getattr(G.mapping, f"fc{i}"), x, lrelu=True)
    ws = G.mapping(z, Condition(p))
    assert ws.shape == (3, G.num_ws, 16)
    np.testing.assert_allclose(ws[:, 0].detach().numpy(), x, rtol=1e-4, atol=1e-5)
    assert torch.equal(ws[:, 0], ws[:, -1])


def test_dfg_mapping_takes_raw_p_and_z():
    G = generator("map-raw")
    z, p = torch.randn(3, 8) * 3, coeffs(3)  # raw: the scale of z is not normalised away either
    x = np.concatenate([z.double().numpy(), p.double().numpy()], axis=1)
    for i in range(G.mapping.num_layers):
        x = fc_np(getattr(G.mapping, f"fc{i}"), x, lrelu=True)
    np.testing.assert_allclose(G.mapping(z, Condition(p))[:, 0].detach().numpy(), x, rtol=1e-4, atol=1e-5)


def test_sg2_cond_discriminator_is_a_projection_on_its_own_mapping_of_p():
    torch.manual_seed(0)
    D = Discriminator(16, **TINY_SYN, mbstd_group_size=2, c_dim=257, mapping_layers=3)
    cmap_dim = D.b4.out.out_features
    assert cmap_dim == 8  # channels at 4x4, StyleGAN2-ADA's default cmap_dim
    img, p = torch.randn(2, 3, 16, 16), coeffs(2)
    captured = {}
    D.b4.out.register_forward_hook(lambda module, args, out: captured.__setitem__("out", out))
    logits = D(img, Condition(p))
    cmap = norm2_np(fc_np(D.mapping.embed, p.double().numpy()))
    for i in range(3):
        cmap = fc_np(getattr(D.mapping, f"fc{i}"), cmap, lrelu=True)
    expected = (captured["out"].detach().double().numpy() * cmap).sum(axis=1, keepdims=True) / np.sqrt(cmap_dim)
    assert logits.shape == (2, 1)
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(D(img, Condition(coeffs(2, 9))), logits)  # D does see p


@pytest.fixture(scope="module")
def renderer():
    return Renderer(FaceModel(make_synthetic_model(seed=0)), backend="torch")


def test_dfg_render_and_skin_terms_equal_numpy(renderer):
    p = coeffs(2)
    rep = make_rep(renderer, p, 16)
    fake = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = face_mask(rep)
    assert torch.equal(mask, renderer(p, 16).mask)  # the mask read from rep is the renderer's
    f, r, m = fake.double().numpy(), rep[:, :3].double().numpy(), mask.double().numpy()
    dist = np.sqrt(((f - r) ** 2).sum(axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(render_distance(fake, rep[:, :3], mask).numpy(),
                               (dist * m).sum(axis=(1, 2, 3)) / m.sum(axis=(1, 2, 3)), rtol=1e-5)  # fmt: skip
    mean_f = (f * m).sum(axis=(2, 3)) / m.sum(axis=(1, 2, 3))[:, None]
    mean_r = (r * m).sum(axis=(2, 3)) / m.sum(axis=(1, 2, 3))[:, None]
    np.testing.assert_allclose(skin_distance(fake, rep[:, :3], mask).numpy(),
                               np.sqrt(((mean_f - mean_r) ** 2).sum(axis=1) + 1e-8), rtol=1e-5)  # fmt: skip


def test_dfg_term_by_resolution_and_through_fr(renderer):
    p, p_hat = coeffs(2), coeffs(2, 7)
    loss = ImitativeLoss(renderer, oracle_fr(p_hat))
    small = loss.terms(torch.zeros(2, 3, 16, 16), Condition(p, make_rep(renderer, p, 16)))
    assert set(small) == {"render"}  # DFG's low-resolution rule
    cond = Condition(p, make_rep(renderer, p, 64))
    terms = loss.terms(torch.zeros(2, 3, 64, 64), cond)
    assert set(terms) == {"landmark", "lighting", "skin"}
    lm_hat, lm = renderer.face_model.compute(p_hat).landmarks, renderer.face_model.compute(p).landmarks
    torch.testing.assert_close(terms["landmark"], ((lm_hat - lm) / 224).square().sum(2).mean(1))
    torch.testing.assert_close(terms["lighting"], (p_hat[:, 227:254] - p[:, 227:254]).abs().mean(1))
    exact = ImitativeLoss(renderer, oracle_fr(p)).terms(torch.zeros(2, 3, 64, 64), cond)
    assert float(exact["landmark"].abs().max()) == 0 and float(exact["lighting"].abs().max()) == 0
    assert any("FaceNet" in t for t in ABSENT_TERMS)


def test_3dfm_encoder_replaces_the_constant_and_co_modulates_every_w():
    G = generator("comod")
    syn = G.synthesis
    assert not hasattr(syn.b4, "const") and syn.encoder is None and G.needs == ("rep",)
    z, rep = torch.randn(2, 8), torch.rand(2, 9, 16, 16) * 2 - 1
    seen = []
    syn.b4.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[:2]))
    syn.b8.conv0.register_forward_pre_hook(lambda module, args: seen.append(args[:2]))
    ws = G.mapping(z, rep_cond(rep))
    syn(ws, rep_cond(rep), noise_mode="const")
    x4, scale = syn.comod(rep)
    torch.testing.assert_close(seen[0][0], x4)  # b4's input is E_Tsr(rep), not a learned constant
    torch.testing.assert_close(seen[0][1], ws[:, 0] * scale)  # style input = E_W(rep) * w (co-modulation)
    torch.testing.assert_close(seen[1][1], ws[:, 1] * scale)
    with torch.no_grad():  # the image follows rep at a fixed z
        other = rep_cond(torch.rand(2, 9, 16, 16) * 2 - 1)
        assert not torch.allclose(G(z, rep_cond(rep), noise_mode="const"), G(z, other, noise_mode="const"))


def test_3dfm_face_region_l2_equals_numpy_and_needs_no_fr(renderer):
    p = coeffs(2)
    rep = make_rep(renderer, p, 16)
    fake = torch.rand(2, 3, 16, 16) * 2 - 1
    terms = ImitativeLoss(renderer, None, style="3dfm").terms(fake, Condition(p, rep))
    f, r, m = fake.double().numpy(), rep[:, :3].double().numpy(), face_mask(rep).double().numpy()
    expected = (((f - r) ** 2).sum(axis=1, keepdims=True) * m).sum(axis=(1, 2, 3)) / m.sum(axis=(1, 2, 3))
    assert set(terms) == {"face_l2"}
    np.testing.assert_allclose(terms["face_l2"].numpy(), expected, rtol=1e-5)
    assert not DESIGNS["3dfm"].needs_fr and DESIGNS["dfg"].needs_fr


@pytest.mark.parametrize("design", ["method", "method-modulated"])
def test_injected_columns_start_like_the_paper_by_default_and_zero_on_request(design):
    layers = {}
    for init in ("paper", "zero"):
        torch.manual_seed(0)
        G = Generator(**generator_kwargs(TrainConfig(design=design, inject_init=init, channel_base=256,
                                                     channel_max=16, enc_channel_base=64, enc_channel_max=8,
                                                     enc_feat_channels=2), 16))  # fmt: skip
        layers[init] = [m for m in G.synthesis.modules() if isinstance(m, SynthesisLayer) and m.feat_channels]
    assert TrainConfig().inject_init == "paper"
    for paper, zero in zip(layers["paper"], layers["zero"]):
        c = paper.in_channels
        assert torch.equal(paper.weight[:, :c], zero.weight[:, :c])  # the same random draws for everything else
        assert paper.weight[:, c:].abs().sum() > 0 and not zero.weight[:, c:].any()
        torch.testing.assert_close(paper.weight[:, c:].std(), paper.weight[:, :c].std(), rtol=0.3, atol=0)


def test_a_config_from_before_inject_init_reads_as_zero_init():
    old = TrainConfig().to_dict()
    del old["inject_init"]
    assert TrainConfig.from_dict(old).inject_init == "zero"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).inject_init == "paper"
