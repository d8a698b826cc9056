"""The frozen reconstructor FR: gradients reach the image and never the weights, range mapping, resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deep3drecon.recon_net import ReconNet
from deep3drecon.reconstructor import FaceReconstructor, resize_to_fr
from tests.deep3drecon.recon_fixtures import randomise


@pytest.fixture
def small_fr() -> FaceReconstructor:
    net = ReconNet("resnet18", input_size=32)
    randomise(net, seed=21)
    return FaceReconstructor(net)


def test_gradients_reach_image_never_weights(small_fr: FaceReconstructor) -> None:
    parent = torch.nn.ModuleDict({"fr": small_fr, "other": torch.nn.Linear(2, 2)})
    parent.train()  # must not flip FR's BatchNorm to batch statistics
    assert not small_fr.training and not any(m.training for m in small_fr.modules())
    parent.requires_grad_(True)  # even a careless unfreeze must not route gradients into FR
    img = (torch.rand(3, 3, 48, 48) * 2 - 1).requires_grad_(True)
    before = {k: v.clone() for k, v in small_fr.state_dict().items()}
    small_fr(img).square().sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in small_fr.parameters())
    for k, v in small_fr.state_dict().items():  # BN running stats untouched by the forward pass
        assert torch.equal(v, before[k]), k


def test_fresh_reconstructor_is_frozen() -> None:
    fr = FaceReconstructor(ReconNet("resnet18", input_size=32))
    assert not fr.training and all(not p.requires_grad for p in fr.parameters())


def test_input_gradient_matches_finite_differences(small_fr: FaceReconstructor) -> None:
    fr = small_fr.double()
    gen = torch.Generator().manual_seed(4)
    img = (torch.rand(1, 3, 40, 40, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    weights = torch.randn(1, 257, generator=gen, dtype=torch.float64)
    (fr(img) * weights).sum().backward()
    direction = torch.randn(img.shape, generator=gen, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        f_plus = (fr(img + eps * direction) * weights).sum()
        f_minus = (fr(img - eps * direction) * weights).sum()
    numeric = (f_plus - f_minus) / (2 * eps)
    torch.testing.assert_close((img.grad * direction).sum(), numeric, rtol=1e-4, atol=1e-8)


def test_range_mapping_and_identity_resize(small_fr: FaceReconstructor) -> None:
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(small_fr(img), small_fr.net((img + 1) / 2), rtol=0, atol=0)
    assert resize_to_fr(img, 32) is img


@pytest.mark.parametrize("src,dst", [(256, 224), (224, 64), (64, 224)])
def test_resize_matches_pil_bilinear(src: int, dst: int) -> None:
    # PIL's BILINEAR resize is antialiased when shrinking and plain bilinear (pixel centres) when growing: the
    # behaviour the FR resize promises; a non-antialiased downsample would differ by ~0.1 on noise.
    rng = np.random.default_rng(0)
    img = rng.random((3, src, src), dtype=np.float32)
    ref = np.stack([np.asarray(Image.fromarray(c).resize((dst, dst), Image.BILINEAR)) for c in img])
    out = resize_to_fr(torch.from_numpy(img)[None], dst)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4)
