"""The one asset resolver of every entry point: dataset, face model, FR checkpoint, renderer and device.

train.py, generate.py, calc_metrics.py, dataset_tool.py and the training loop all go through here, so a missing
or moved asset gives the same one-line UserError everywhere. Each asset comes from, in order:

    the flag the user gave  >  the value recorded in the run config / snapshot  >  the built-in stand-in
    (--data, --bfm, ...)       (training_options.json, snapshot["config"])       (None: synthetic, cached)

A run config keeps None for the built-in assets (not their cache paths), so a snapshot stays usable after the
cache moves: the stand-ins are rebuilt on demand. Real BFM / FR files are never downloaded (deep3drecon.assets).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from deep3drecon import assets
from deep3drecon.face_model import FaceModel
from deep3drecon.recon_net import load_recon_net
from deep3drecon.reconstructor import FaceReconstructor
from deep3drecon.render import Renderer
from torch_utils.errors import UserError
from torch_utils.misc import pick_device
from training.config import TrainConfig
from training.dataset import ImageLabelDataset

__all__ = ["ResolvedAssets", "build_reconstructor", "build_renderer", "pick_device", "resolve_assets", "resolve_run"]

# What each asset is called in messages, and the flag that overrides it.
_FLAGS = {"data": "--data", "bfm": "--bfm", "recon_ckpt": "--recon-ckpt"}
_NAMES = {"data": "dataset", "bfm": "face model", "recon_ckpt": "FR checkpoint"}


@dataclass
class ResolvedAssets:
    """Absolute paths an entry point works with; None where the caller did not ask for that asset.

    builtin names the assets that are the built-in synthetic stand-ins (smoke world), so callers can say that
    numbers computed with them only check the pipeline.
    """

    data: str | None = None
    bfm: str | None = None
    recon_ckpt: str | None = None
    builtin: tuple[str, ...] = ()


def _given_or_recorded(key: str, flags: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """The flag's path (must exist) else the config's recorded path (must still exist) else None (= built-in)."""
    given, recorded = flags.get(key), config.get(key)
    if given is not None:
        if not os.path.exists(given):
            raise UserError(f"{_FLAGS[key]} path does not exist: {given}")
        return os.path.abspath(given)
    if recorded is not None and not os.path.exists(recorded):
        raise UserError(f"the run was trained with the {_NAMES[key]} {recorded}, which no longer exists; "
                        f"pass {_FLAGS[key]}")  # fmt: skip
    return recorded


def resolve_assets(
    config: Mapping[str, Any] | None = None,
    *,
    data: str | None = None,
    bfm: str | None = None,
    recon_ckpt: str | None = None,
    need_data: bool = True,
    need_face: bool = True,
    need_fr: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ResolvedAssets:
    """Paths of the requested assets from user flags, then the run config, then the built-in stand-ins.

    config: a TrainConfig dict (training_options.json or a snapshot's "config"); None = no recorded run.
    data / bfm / recon_ckpt: the user's flags (None = not given). need_*: which assets the caller uses; built-in
    ones are built (once, cached) only when needed. log: where to say that a built-in stand-in is used.
    """
    config = config or {}
    flags = {"data": data, "bfm": bfm, "recon_ckpt": recon_ckpt}
    out, builtin = ResolvedAssets(), []
    if need_data:
        out.data = _given_or_recorded("data", flags, config)
        if out.data is None:
            if not config.get("builtin_data"):
                raise UserError("no dataset: pass --data (a dataset zip or folder made by dataset_tool.py)")
            from dataprep.builtin import builtin_dataset_path

            out.data = builtin_dataset_path(**config["builtin_data"], progress=progress)
            builtin.append("dataset")
    if need_face:
        out.bfm = _given_or_recorded("bfm", flags, config)
        if out.bfm is None:
            out.bfm = str(assets.synthetic_face_model_path())
            builtin.append("face model")
        else:
            out.bfm = str(assets.resolve_bfm(out.bfm))
    if need_fr:
        out.recon_ckpt = _given_or_recorded("recon_ckpt", flags, config)
        if out.recon_ckpt is None:
            from dataprep.builtin import builtin_recon_path

            out.recon_ckpt = str(builtin_recon_path(progress=progress))
            builtin.append("FR")
        else:
            out.recon_ckpt = str(assets.resolve_recon_checkpoint(out.recon_ckpt))
    out.builtin = tuple(builtin)
    if log is not None and builtin:
        log(f"Using the built-in synthetic {', '.join(builtin)} (smoke world; its numbers only check the pipeline)")
    return out


def build_renderer(bfm_path: str, backend: str, device: torch.device) -> Renderer:
    """Renderer of the face model at bfm_path on device; backend auto | torch | nvdiffrast."""
    return Renderer(FaceModel.from_mat(bfm_path), backend=backend).to(device)


def build_reconstructor(ckpt_path: str, device: torch.device, backbone: str | None = None) -> FaceReconstructor:
    """The frozen FR from a Deep3DFaceRecon-layout checkpoint, on device."""
    return FaceReconstructor(load_recon_net(ckpt_path, backbone=backbone)).to(device)


def resolve_run(config: TrainConfig, progress: bool = False, log: Callable[[str], None] | None = None,
                need_fr: bool = True) -> tuple[ImageLabelDataset, ResolvedAssets]:  # fmt: skip
    """A training run's inputs: (the opened dataset, its ResolvedAssets) from a TrainConfig.

    The dataset is the config's (or the built-in one); face model and FR are resolved for the method only
    (conditional designs; need_fr=False leaves the FR out, e.g. for a dry run that must not build the synthetic one).
    Raises UserError on a dataset whose labels the method cannot use.
    """
    conditional = config.design_spec.conditional
    resolved = resolve_assets(config.to_dict(), need_face=conditional, need_fr=conditional and need_fr,
                              progress=progress, log=log)  # fmt: skip
    dataset = ImageLabelDataset(resolved.data, resolution=config.resolution, xflip=config.xflip,
                                require_labels=conditional, skip_bad_images=config.skip_bad_images,
                                progress=progress)  # fmt: skip
    if conditional and dataset.label_dim != 257:
        raise UserError(f"{resolved.data}: labels are {dataset.label_dim}-d; design {config.design} needs 257-d 3DMM "
                        "coefficients (build the dataset with dataset_tool.py, or train --design uncond)")
    return dataset, resolved
