"""Designs: the one table that decides how a model is conditioned on p (`train.py --design NAME`).

A design decides (a) what the mapping network does with the condition, (b) what the synthesis network does with
it, (c) which extra loss terms the G phase adds, and (d) whether D sees it. Nothing else in the code branches on
the design: the generator reads `cond_kind` (training.networks, training.conditioning), the loss terms read
`g_term` and `blend` (training.consistency, training.imitative), D reads `d_cond` (training.discriminator), and
every other consumer asks the built generator what it needs (`G.needs`). docs/designs.md has the long table.

    name              cond_kind         how p enters G                                    G-phase term      D sees p
    method            inject            E(rep(p)) into every synthesis layer, style 1     rep consistency   no
    uncond            none              not at all: StyleGAN2                             -                 no
    method-noblend    inject            as method                                         rep, alpha = 1    no
    method-coeffcons  inject            as method                                         coeff consistency no
    method-modulated  inject-modulated  E(rep(p)) injected with style s(w) (breaks eq. 8)  rep consistency   no
    method-mapping    map-embed         embed(p) concatenated with z in the mapping       rep consistency   no
    sg2-cond          map-embed         as method-mapping (StyleGAN2-ADA label path)      -                 projection
    dfg               map-raw           raw p concatenated with z in the mapping          DFG imitative     no
    3dfm              comod             enc(rep) replaces the const input, scales all w   face-region L2    no
"""

from __future__ import annotations

from dataclasses import dataclass

from torch_utils.errors import UserError


@dataclass(frozen=True)
class CondKind:
    """How the generator takes the condition: the Condition fields it reads, and its three switches."""

    needs: tuple[str, ...]   # Condition fields read: () | ("rep",) | ("p",)
    encoder: bool            # the synthesis network owns E and injects E(rep(p)) per conv layer (eq. 7, 14)
    feat_style: str          # "one": injected channels get style 1 (eq. 7); "affine": a style s(w) (breaks eq. 8)
    mapping_input: str       # "z": the mapping sees z only; "embed": + normalise(embed(p)) (SG2-ADA); "raw": + p (DFG)
    comod: bool = False      # 3D-FM GAN: an encoder of rep(p) replaces the const input and multiplies every w


COND_KINDS: dict[str, CondKind] = {
    "none": CondKind((), False, "one", "z"),                        # unconditional StyleGAN2
    "inject": CondKind(("rep",), True, "one", "z"),                 # the method (eq. 7)
    "inject-modulated": CondKind(("rep",), True, "affine", "z"),    # injected channels scaled by s(w)
    "map-embed": CondKind(("p",), False, "one", "embed"),           # [normalise(z), normalise(embed(p))] -> mapping
    "map-raw": CondKind(("p",), False, "one", "raw"),               # [z, p] -> mapping, no normalisation (DFG)
    "comod": CondKind(("rep",), False, "one", "z", comod=True),      # 3D-FM GAN's input tensor + co-modulation
}  # fmt: skip

# Which fields of the Condition (training.condition.Condition) each kind reads.
COND_KIND_NEEDS: dict[str, tuple[str, ...]] = {name: kind.needs for name, kind in COND_KINDS.items()}

# The G phase's extra term: None, the paper's render-space consistency (eq. 6), its coefficient-space ablation, or
# DiscoFaceGAN's imitative losses, or 3D-FM GAN's face-region L2 to the render.
G_TERMS = (None, "rep", "coeff", "dfg", "3dfm")


@dataclass(frozen=True)
class Design:
    """One row of the design table: how p enters G, which loss term the G phase adds, whether D sees p."""

    name: str
    cond_kind: str           # a key of COND_KIND_NEEDS: what the generator does with the condition
    g_term: str | None       # one of G_TERMS: the term the G phase adds (lambda x consistency, or imitative)
    summary: str             # one line for --help, --dry-run and the docs
    blend: bool = True       # eq. 6's progressive blending of the consistency input (False: alpha = 1 throughout)
    d_cond: bool = False     # D conditioned on p by projection (StyleGAN2-ADA); False: D(img) as StyleGAN2

    @property
    def conditional(self) -> bool:
        """True when G takes p at all (the run then needs 257-d labels and the face model)."""
        return self.cond_kind != "none"

    @property
    def consistency(self) -> bool:
        """True when the G phase adds lambda x a consistency loss through FR (eq. 13 or its ablation)."""
        return self.g_term in ("rep", "coeff")

    @property
    def needs_fr(self) -> bool:
        """True when a G-phase term runs the frozen FR (consistency, DFG's landmark and lighting terms)."""
        return self.g_term in ("rep", "coeff", "dfg")


DESIGNS: dict[str, Design] = {
    "method": Design("method", "inject", "rep",
                     "the paper: E(rep(p)) injected into each synthesis layer with style 1, consistency loss"),
    "uncond": Design("uncond", "none", None, "unconditional StyleGAN2 baseline (same G/D code; --no-cond)"),
    "method-noblend": Design("method-noblend", "inject", "rep",
                             "ablation: the method without eq. 6's blending (alpha = 1 from the start)", blend=False),
    "method-coeffcons": Design("method-coeffcons", "inject", "coeff",
                               "ablation: consistency ||FR(x') - p||^2 in coefficient space, groups variance-scaled"),
    "method-modulated": Design("method-modulated", "inject-modulated", "rep",
                               "ablation: injected features scaled by a style s(w) (affine of w), breaking eq. 8"),
    "method-mapping": Design("method-mapping", "map-embed", "rep",
                             "ablation: p embedded into the mapping network (no E, no injection), consistency loss"),
    "sg2-cond": Design("sg2-cond", "map-embed", None,
                       "StyleGAN2-ADA label conditioning: embed(p) into the mapping, projection D, no consistency",
                       d_cond=True),
    "dfg": Design("dfg", "map-raw", "dfg",
                  "DiscoFaceGAN-style: raw p into the mapping, imitative losses (render, skin, landmarks, light); "
                  "absent: FaceNet identity, stage-2 contrastive terms"),
    "3dfm": Design("3dfm", "comod", "3dfm",
                   "3D-FM GAN-style: encoder of rep(p) replaces the const input and co-modulates w, face-region L2 "
                   "to the render; absent: LPIPS/L1/ArcFace (need paired photos)"),
}  # fmt: skip


def get_design(name: str) -> Design:
    """The Design called `name`; one line listing the valid names otherwise."""
    if name not in DESIGNS:
        raise UserError(f"unknown design '{name}'; choose one of: {', '.join(DESIGNS)}")
    return DESIGNS[name]


def design_from_cond(cond: bool) -> str:
    """The design name of the legacy `cond` flag (old snapshots and --cond/--no-cond): method or uncond."""
    return "method" if cond else "uncond"
