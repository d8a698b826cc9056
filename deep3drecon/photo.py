"""The one photo reader: every path that reads a user's photo decodes it here (generate.py invert / edit
--from-image / reference, the studio's uploads, dataset_tool.py images / ffhq, deep3drecon.reconstruct).

- Pixel budget: a photo of more than PHOTO_MAX_PIXELS (40 megapixels, e.g. 8000 x 5000) is refused from its
  header, before anything is decoded: a 316 KB PNG can declare 10000 x 10000 px and then cost 6.5 GB and a minute
  of face detection. Downscale such photos first.
- EXIF orientation: a photo whose EXIF says it is stored rotated or mirrored is turned upright, as every viewer
  shows it; landmark files and detected landmarks refer to that upright image.
- Formats: PNG, JPEG (also the MPO variant phones write), WebP, BMP only; no other decoder ever sees the file.
- A missing, empty, truncated or foreign file is one UserError line naming it.
"""

from __future__ import annotations

import os
import warnings

import PIL.Image

from torch_utils.errors import UserError, first_line

PHOTO_MAX_PIXELS = 40_000_000
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # PIL opens the MPO files phones write as JPEG
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the photo upright (EXIF 2.3, as PIL.ImageOps.exif_transpose).
_UPRIGHT = {2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180,
            4: PIL.Image.Transpose.FLIP_TOP_BOTTOM, 5: PIL.Image.Transpose.TRANSPOSE,
            6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE,
            8: PIL.Image.Transpose.ROTATE_90}  # fmt: skip


def pixel_budget_problem(width: int, height: int) -> str | None:
    """Why a photo of width x height cannot be read (above the pixel budget), or None."""
    if width * height <= PHOTO_MAX_PIXELS:
        return None
    return (f"{width}x{height} px ({width * height / 1e6:.0f} megapixels) is above the photo budget of "
            f"{PHOTO_MAX_PIXELS / 1e6:.0f} megapixels; downscale it (e.g. to 4000 px on the long side) and try again")


def orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = stored upright; 1 when absent or unreadable)."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not make a readable photo unreadable
        return 1


def read_photo(path: str | os.PathLike, name: str | None = None) -> PIL.Image.Image:
    """Decode a photo to an upright RGB image; UserError naming the file (as `name` if given) if it cannot be read.

    The file is opened once; its size is checked from the header before it is decoded.
    """
    label = name or os.fspath(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise UserError(f"cannot read {label}: the file is empty (0 bytes)")
            with warnings.catch_warnings():  # PIL warns about large images itself; the budget below is ours
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                image = PIL.Image.open(f, formats=PHOTO_FORMATS)
            problem = pixel_budget_problem(*image.size)
            if problem is not None:
                raise UserError(f"cannot read {label}: {problem}")
            turn = _UPRIGHT.get(orientation(image))
            rgb = image.convert("RGB")
            return rgb.transpose(turn) if turn is not None else rgb
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"photo not found: {label}") from None
    except PIL.Image.DecompressionBombError:
        raise UserError(f"cannot read {label}: it declares more than {PHOTO_MAX_PIXELS / 1e6:.0f} megapixels, above "
                        "the photo budget; downscale it and try again") from None  # fmt: skip
    except Exception as exc:  # PIL raises many types for damaged / non-image files
        raise UserError(f"cannot read {label} as an image ({type(exc).__name__}: {first_line(exc)[:100]})") from None
