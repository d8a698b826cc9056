"""Designs: the one table that decides how a model is conditioned on p (`train.py --design NAME`).

A design decides (a) what the mapping network does with the condition, (b) what the synthesis network does with
it, (c) which extra loss terms the G phase adds, and (d) whether D sees it. Nothing else in the code branches on
the design: the generator reads `cond_kind` (training.networks), the loss reads `consistency`, and every other
consumer asks the built generator what it needs (`G.needs`).

    name     cond_kind  how p enters                                              G-phase terms
    method   inject     E(rep(p)) injected into every synthesis layer, style 1    consistency (eq. 6, 13)
    uncond   none       not at all: StyleGAN2                                     -
"""

from __future__ import annotations

from dataclasses import dataclass

from torch_utils.errors import UserError

# How the generator takes the condition, and which fields of it (training.condition.Condition) that reads.
COND_KIND_NEEDS: dict[str, tuple[str, ...]] = {
    "none": (),          # unconditional StyleGAN2
    "inject": ("rep",),  # the method: E(rep(p)) concatenated to each synthesis layer's input, style 1 (eq. 7)
}


@dataclass(frozen=True)
class Design:
    """One row of the design table: how p enters G, and which loss terms the G phase adds."""

    name: str
    cond_kind: str           # a key of COND_KIND_NEEDS: what the generator does with the condition
    consistency: bool        # the G phase adds lambda x the render-space consistency loss (eq. 13)
    summary: str             # one line for --help, --dry-run and the docs

    @property
    def conditional(self) -> bool:
        """True when G takes p at all (the run then needs 257-d labels and the face model)."""
        return self.cond_kind != "none"


DESIGNS: dict[str, Design] = {
    "method": Design("method", "inject", True,
                     "the paper: E(rep(p)) injected into each synthesis layer with style 1, consistency loss"),
    "uncond": Design("uncond", "none", False, "unconditional StyleGAN2 baseline (same G/D code; --no-cond)"),
}  # fmt: skip


def get_design(name: str) -> Design:
    """The Design called `name`; one line listing the valid names otherwise."""
    if name not in DESIGNS:
        raise UserError(f"unknown design '{name}'; choose one of: {', '.join(DESIGNS)}")
    return DESIGNS[name]


def design_from_cond(cond: bool) -> str:
    """The design name of the legacy `cond` flag (old snapshots and --cond/--no-cond): method or uncond."""
    return "method" if cond else "uncond"
