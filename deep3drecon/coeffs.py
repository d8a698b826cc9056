"""The one layout of Deep3DFaceRecon's 257-d coefficient vector p; every module imports it from here.

    p = [ id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3 ]      (float32, release order)
    index  0      80       144      224       227        254      257

id / exp / tex are PCA weights of the face model's shape, expression and albedo bases; angle is (pitch, yaw, roll)
in radians; gamma is 3 colours x 9 second-order SH bands (the release adds 0.8 to each DC band); trans is the
translation in the face model's units (dm). FR's heads emit trans as (tx, ty) then tz (`FR_HEAD_DIMS`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from torch_utils.errors import UserError

COEFF_DIMS: OrderedDict[str, int] = OrderedDict(
    [("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans", 3)]
)
COEFF_SLICES: OrderedDict[str, slice] = OrderedDict()
_start = 0
for _name, _dim in COEFF_DIMS.items():
    COEFF_SLICES[_name] = slice(_start, _start + _dim)
    _start += _dim
NUM_COEFFS = _start  # 257
del _start, _name, _dim

# FR's linear heads in release order: id, exp, tex, angle, gamma, (tx, ty), tz; concatenated they give p.
FR_HEAD_DIMS: tuple[int, ...] = (*tuple(COEFF_DIMS.values())[:-1], 2, 1)

# Attribute groups a user edits (fig. 3 of the paper): identity is shape and albedo together, illumination the SH
# bands, pose the three angles.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {"id": ("id", "tex"), "exp": ("exp",), "illum": ("gamma",),
                                                "angle": ("angle",)}  # fmt: skip


def split_coeffs(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split coeffs [N, 257] into views id [N,80], exp [N,64], tex [N,80], angle [N,3], gamma [N,27], trans [N,3]."""
    if coeffs.ndim != 2 or coeffs.shape[1] != NUM_COEFFS:
        raise UserError(f"expected coefficients of shape [N, {NUM_COEFFS}], got {list(coeffs.shape)}")
    return {name: coeffs[:, sl] for name, sl in COEFF_SLICES.items()}
