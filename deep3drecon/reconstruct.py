"""Reconstruct 3DMM coefficients for one image: align, run FR, render the fit over the crop.

    python -m deep3drecon.reconstruct --image IMG [--landmarks TXT] --bfm BFM_model_front.mat \
        --checkpoint epoch_20.pth --outdir DIR [--backend auto|torch|nvdiffrast] [--device auto|cpu|cuda]

`--landmarks`: text file with 5 (MTCNN order: eye on the image's left, eye on the image's right, nose tip, left and
right mouth corners) or 68 rows `x y`, y-DOWN pixel coordinates of the original image. Without it, `<stem>.txt` or
`<stem>_landmarks.txt` beside the image is used, else the face detector (`deep3drecon.landmarks`, the `faces` extra)
finds the largest face and its five points are written to DIR/<stem>_landmarks.txt.
Writes DIR/<stem>_crop.png (aligned 224 crop, Deep3DFaceRecon framing), DIR/<stem>_coeffs.npy (257 float32:
id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3) and DIR/<stem>_overlay.png (the render pasted on the crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from deep3drecon.assets import resolve_bfm, resolve_recon_checkpoint
from deep3drecon.face_model import FaceModel
from deep3drecon.landmarks import load_landmarks
from deep3drecon.photo import read_photo
from deep3drecon.recon_net import FR_INPUT_SIZE, load_recon_net
from deep3drecon.reconstructor import FaceReconstructor
from torch_utils.errors import Command, UserError
from torch_utils.misc import pick_device, quantize_uint8
from torch_utils.outputs import output_file, refuse_existing, save_image


@dataclass
class Reconstruction:
    """Result for one image: crop (PIL 224x224 RGB), coeffs [257] float32, overlay (PIL 224x224 RGB)."""

    crop: Image.Image
    coeffs: np.ndarray
    overlay: Image.Image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> [1, 3, H, W] float32 in [0, 1] (row 0 = top)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def tensor_to_image(img: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] or [3, H, W] float in [0, 1] -> PIL RGB (the project's one quantiser)."""
    arr = quantize_uint8(img.reshape(-1, *img.shape[-2:]).permute(1, 2, 0), drange=(0, 1))
    return Image.fromarray(arr)


@torch.no_grad()
def reconstruct_image(
    image: Image.Image, landmarks: np.ndarray, fr: FaceReconstructor, renderer: torch.nn.Module
) -> Reconstruction:
    """Align `image` with `landmarks` ([5|68, 2] y-down), predict coefficients, render them over the 224 crop."""
    from deep3drecon.align import align_face

    aligned = align_face(image.convert("RGB"), landmarks, size=FR_INPUT_SIZE)
    device = next(fr.parameters()).device
    crop = image_to_tensor(aligned.image).to(device)  # [1, 3, 224, 224] in [0, 1]
    coeffs = fr(crop * 2 - 1)  # FaceReconstructor takes the GAN range [-1, 1]
    out = renderer(coeffs, FR_INPUT_SIZE)
    overlay = out.render * out.mask + crop * (1 - out.mask)  # release `compute_visuals` blend
    return Reconstruction(
        crop=aligned.image.convert("RGB"),
        coeffs=coeffs[0].float().cpu().numpy().astype(np.float32),
        overlay=tensor_to_image(overlay),
    )


@click.command(cls=Command)
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--landmarks", "landmarks_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="5 or 68 rows 'x y' [default: <stem>.txt beside the image, else detected]")
@click.option("--bfm", default=None, type=click.Path(dir_okay=False), help="BFM_model_front.mat (default: cache)")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="FR epoch_20.pth (default: cache)")
@click.option("--outdir", type=click.Path(file_okay=False), required=True)
@click.option("--backend", type=click.Choice(["auto", "torch", "nvdiffrast"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--overwrite", is_flag=True, help="Replace output files that exist (default: refuse them)")
def main(
    image_path: str,
    landmarks_path: str | None,
    bfm: str | None,
    checkpoint: str | None,
    outdir: str,
    backend: str,
    device: str,
    overwrite: bool,
) -> None:
    """Fit Deep3DFaceRecon coefficients to one face image and save crop, coefficients and overlay."""
    from deep3drecon.render import Renderer

    out, stem = Path(outdir), Path(image_path).stem
    outputs = [out / f"{stem}_crop.png", out / f"{stem}_coeffs.npy", out / f"{stem}_overlay.png"]
    refuse_existing(outputs, overwrite)
    try:
        # Validate every input before any heavy work, so mistakes surface as one line.
        bfm_path = resolve_bfm(bfm)
        ckpt_path = resolve_recon_checkpoint(checkpoint)
        dev = pick_device(device)
        image = read_photo(image_path)
        if landmarks_path is not None:
            landmarks = load_landmarks(landmarks_path)
        else:
            from deep3drecon.landmarks import find_or_detect_landmarks, load_face_detector

            landmarks, note = find_or_detect_landmarks(image_path, image, lambda: load_face_detector(dev), outdir)
            click.echo(note)
        face_model = FaceModel.from_mat(bfm_path).to(dev)
        fr = FaceReconstructor(load_recon_net(ckpt_path)).to(dev)
        renderer = Renderer(face_model, backend=backend).to(dev)
        result = reconstruct_image(image, landmarks, fr, renderer)
    except OSError as exc:  # unreadable image or model file: one line, like every UserError
        raise UserError(f"{exc}") from None
    save_image(outputs[0], result.crop, overwrite)
    with output_file(outputs[1], overwrite) as f:
        np.save(f, result.coeffs)
    save_image(outputs[2], result.overlay, overwrite)
    click.echo(f"renderer backend {renderer.backend}; wrote {out / stem}_{{crop.png,coeffs.npy,overlay.png}}")


if __name__ == "__main__":
    main()
