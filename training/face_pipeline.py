"""Builds the 3DMM side of training from a config: face model, renderer and the frozen reconstructor FR.

Real assets (BFM_model_front.mat, Deep3DFaceRecon epoch_20.pth) come from user paths; when a path is None the
built-in synthetic face model / synthetic FR (made once and cached: deep3drecon.assets, dataprep.builtin) stand in.
"""

from __future__ import annotations

import torch

from deep3drecon import assets
from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import load_recon_net
from deep3drecon.reconstructor import FaceReconstructor
from deep3drecon.render import Renderer


def resolve_face_assets(bfm: str | None, recon_ckpt: str | None, progress: bool = True) -> tuple[str, str]:
    """Paths of the face model and FR checkpoint; None selects (and if needed builds) the synthetic ones."""
    bfm_path = assets.resolve_bfm(bfm) if bfm is not None else assets.synthetic_face_model_path()
    if recon_ckpt is not None:
        ckpt_path = assets.resolve_recon_checkpoint(recon_ckpt)
    else:
        from dataprep.builtin import builtin_recon_path

        ckpt_path = builtin_recon_path(progress=progress)
    return str(bfm_path), str(ckpt_path)


def resolve_run_assets(c, progress: bool = False) -> tuple[str, str | None, str | None]:
    """(dataset, face model, FR checkpoint) paths of a run config; None in the config selects the built-in ones.

    The config keeps what the user asked for (None = built-in synthetic data / face model / FR), so a snapshot
    stays usable after the cache moves: the built-in assets are rebuilt on demand. Face paths are None for --no-cond.
    """
    from dataprep.builtin import builtin_dataset_path

    data = c.data if c.data is not None else builtin_dataset_path(**c.builtin_data, progress=progress)
    if not c.cond:
        return data, None, None
    bfm, ckpt = resolve_face_assets(c.bfm, c.recon_ckpt, progress=progress)
    return data, bfm, ckpt


def build_renderer(bfm_path: str, backend: str, device: torch.device) -> Renderer:
    """Renderer of the face model at bfm_path on device; backend auto | torch | nvdiffrast."""
    return Renderer(FaceModel.from_mat(bfm_path), backend=backend).to(device)


def build_reconstructor(ckpt_path: str, device: torch.device, backbone: str | None = None) -> FaceReconstructor:
    """The frozen FR from a Deep3DFaceRecon-layout checkpoint, on device."""
    return FaceReconstructor(load_recon_net(ckpt_path, backbone=backbone)).to(device)
