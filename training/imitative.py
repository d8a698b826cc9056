"""Proxy losses that make G imitate the render of p: DiscoFaceGAN's (`dfg`) and 3D-FM GAN's (`3dfm`).

DiscoFaceGAN's imitative losses (Deng et al. 2020, `training/loss_control.py`) are the G-phase term of `dfg`;
3D-FM GAN's face-region L2 (adobe/3D-FM-GAN: squared difference between output and render inside the render mask,
weight 20 on its DFG pairs) is the term of `3dfm`; its LPIPS, L1 and ArcFace terms compare with a paired target
photo, which random generation does not have: absent.

DFG makes G imitate the render of its input coefficients p with proxy objectives, instead of the paper's
consistency through FR's posterior (eq. 5-6). Images and renders are [-1, 1]; mask = the face mask of rep(p)
(training.rep: the normals are unit vectors inside it and exactly 0 outside, so no second render is needed).

    render   (R <= 32 only; replaces every term below, as DFG at its low resolutions)
             sum_mask ||x - r(p)||_2 / sum_mask                        per-pixel colour-vector distance    x 20
    landmark mean ||lm(FR(x)) - lm(p)||^2 / 224^2                    68 projected landmarks (224 crop)    x 500
    lighting mean |gamma(FR(x)) - gamma(p)|                          SH coefficients (27)                 x 10
    skin     || mean_mask(x) - mean_mask(r(p)) ||_2                  mean face colour                     x 20
    identity ABSENT: DFG's FaceNet (InceptionResNetV1) cosine is a network we cannot load offline     (DFG: x 3)

The weights are DFG's stage-1 values (train.py of microsoft/DiscoFaceGAN). DFG's stage-2 contrastive losses
(expression flow warp, lighting pairs with a face parser and FaceNet) are absent too. FR is the frozen
reconstructor (gradients reach x only), playing R_Net's part; landmarks come from the face model's keypoints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deep3drecon.coeffs import COEFF_SLICES
from training.condition import Condition
from training.rep import rep_render

RENDER_ONLY_MAX_RES = 32  # DFG uses the render distance alone up to 32 px (FR cannot read smaller faces)
WEIGHTS = {"render": 20.0, "landmark": 500.0, "lighting": 10.0, "skin": 20.0, "face_l2": 20.0}
ABSENT_TERMS = ("identity (FaceNet)", "contrastive expression / lighting pairs (stage 2; face parser, FaceNet)")
CROP = 224  # landmark coordinates are pixels of the 224 crop; DFG divides them by 224


def face_mask(rep: torch.Tensor) -> torch.Tensor:
    """rep [N, 9, R, R] -> mask [N, 1, R, R] in {0, 1}: where the normals are non-zero (the face mesh)."""
    return (rep[:, 6:9].abs().sum(dim=1, keepdim=True) > 0).to(rep.dtype)


def render_distance(fake: torch.Tensor, render: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean per-pixel colour-vector distance [N] between fake and render [N, 3, R, R] (mask [N, 1, R, R])."""
    dist = (fake - render).square().sum(dim=1, keepdim=True).add(1e-8).sqrt()  # [N, 1, R, R]
    return (dist * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


def skin_distance(fake: torch.Tensor, render: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distance [N] between the masked mean colours of fake and render."""
    area = mask.flatten(1).sum(1).clamp(min=1)[:, None]  # [N, 1]
    mean_fake = (fake * mask).flatten(2).sum(2) / area  # [N, 3]
    mean_render = (render * mask).flatten(2).sum(2) / area
    return (mean_fake - mean_render).square().sum(1).add(1e-8).sqrt()


def face_region_l2(fake: torch.Tensor, render: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """3D-FM GAN's face-region L2 [N]: squared difference summed over channels, mean over the mask's pixels."""
    sq = (fake - render).square().sum(dim=1, keepdim=True)
    return (sq * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


class ImitativeLoss(torch.nn.Module):
    """Per-sample weighted sum [N] of the imitative terms of `style` ("dfg" | "3dfm") for fakes from cond.

    reconstructor: the frozen FR (DFG's landmark and lighting terms); None for "3dfm", which needs none.
    """

    def __init__(self, renderer: torch.nn.Module, reconstructor: torch.nn.Module | None, style: str = "dfg") -> None:
        super().__init__()
        if style not in ("dfg", "3dfm") or (style == "dfg" and reconstructor is None):
            raise ValueError(f"style {style!r}: 'dfg' (needs the reconstructor) or '3dfm'")
        self.renderer, self.reconstructor, self.style = renderer, reconstructor, style

    def terms(self, fake: torch.Tensor, cond: Condition) -> dict[str, torch.Tensor]:
        """Each present term's unweighted value [N] at fake's resolution."""
        rep = cond.rep
        render, mask = rep_render(rep), face_mask(rep)
        if self.style == "3dfm":
            return {"face_l2": face_region_l2(fake, render, mask)}
        if fake.shape[-1] <= RENDER_ONLY_MAX_RES:
            return {"render": render_distance(fake, render, mask)}
        coeffs_hat = self.reconstructor(fake).float()
        face_model = self.renderer.face_model
        lm_hat, lm = face_model.compute(coeffs_hat).landmarks, face_model.compute(cond.p).landmarks  # [N, 68, 2]
        gamma = COEFF_SLICES["gamma"]
        return {
            "landmark": ((lm_hat - lm) / CROP).square().sum(2).mean(1),
            "lighting": (coeffs_hat[:, gamma] - cond.p[:, gamma]).abs().mean(1),
            "skin": skin_distance(fake, render, mask),
        }

    def forward(self, fake: torch.Tensor, cond: Condition, cur_nimg: int,
                report: Callable[[str, object], None] | None = None) -> torch.Tensor:  # fmt: skip
        """fake [N, 3, R, R] generated from cond -> sum of weight x term [N]; reports each term."""
        del cur_nimg  # DFG's imitative weights have no schedule within a stage
        total = fake.new_zeros([fake.shape[0]])
        for name, value in self.terms(fake, cond).items():
            if report is not None:
                report(f"Loss/G/imitative_{name}", value)
            total = total + WEIGHTS[name] * value
        return total
