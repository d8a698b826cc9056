"""The resolved, typed training configuration: presets (configs/*.json) overridden by the flags a user gave."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from torch_utils.errors import UserError
from training.designs import DESIGNS, Design, design_from_cond, get_design

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run; written to training_options.json and stored in each snapshot."""

    # Run and data.
    cfg: str = "paper256"
    data: str | None = None                # dataset zip/folder; None = the preset's built-in data (smoke only)
    resolution: int | None = None          # None = the dataset's resolution
    builtin_data: dict | None = None       # smoke: {"count", "resolution", "seed"} of the synthetic data set
    outdir: str = "training-runs"
    desc: str | None = None
    gpus: int = 1
    batch: int = 64                        # total images per iteration over all GPUs
    batch_gpu: int | None = None           # images per forward pass per GPU; None = batch / gpus
    kimg: float = 25000                    # thousands of real images shown to D
    tick_kimg: float = 4
    snap: int = 50                         # ticks between snapshots (and image grids / metrics)
    seed: int = 0
    workers: int = 3
    xflip: bool = False                    # off: mirroring images would contradict their 3DMM labels
    skip_bad_images: bool = False          # leave out (and list) images that fail the open-time check
    metrics: list[str] = dataclasses.field(default_factory=list)
    resume: str | None = None
    init_from: str | None = None           # new run from pretrained weights: NVIDIA .pkl / snapshot / training state
    device: str = "auto"                   # auto | cuda | cpu
    # Backbone (paper appendix A: StyleGAN2 paper256 with mapping depth 2, z_dim 64).
    z_dim: int = 64
    w_dim: int = 512
    map_layers: int = 2
    channel_base: int = 16384
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: int | None = 256
    mbstd_group: int = 8
    # Optimisation.
    glr: float = 0.0025
    dlr: float = 0.0025
    gamma: float = 1.0                     # R1 weight
    d_reg_interval: int = 16               # lazy R1
    ema_kimg: float = 20.0
    ema_rampup: float | None = None
    style_mixing_prob: float = 0.0         # the paper turns style mixing off
    # Two StyleGAN2-ADA details the paper (following StyleGAN3) drops; README "Fidelity notes".
    g_reg_interval: int | None = None      # G's Adam lr x I/(I+1), betas ** (I/(I+1)); None = unscaled (SG3, no PL)
    w_avg_in_g_pass: bool = False          # also move w_avg in the G pass (SG2-ADA: twice per iteration; SG3: D only)
    # Fast paths (training/fast_paths.py); every default is the plain path.
    allow_tf32: bool = False               # TF32 matmuls/convs (SG2-ADA and SG3 force it off)
    channels_last: bool = False            # NHWC weights for the fp16 blocks of G and D (CUDA tensor cores)
    adam_impl: str = "auto"                # auto (torch's choice) | forloop | foreach | fused
    fr_autocast: str = "off"               # off | bf16 | fp16: the consistency loss's FR under autocast
    compile_fr: bool = False               # torch.compile the FR forward+backward (never the R1 double backward)
    rep_cache_mb: float = 0                # pre-render rep(p) of every bank row once if it fits (ConditionBank)
    # The design (training/designs.py: how p enters G and which loss terms the G phase adds) and the method's knobs.
    design: str = "method"                 # method (the paper) | uncond (StyleGAN2; --no-cond) | ...
    enc_channel_base: int = 4096
    enc_channel_max: int = 256
    enc_feat_channels: int = 32            # channels of each injected feature map c_i
    inject_init: str = "paper"             # injected-feature weight columns: paper (N(0,1)) | zero (G = SG2 at step 0)
    lambda_cons: float = 20.0              # eq. 5 weight of the consistency loss
    blend_kimg: float = 2000.0             # eq. 6: alpha rises linearly 0 -> 1 over this many kimg
    bfm: str | None = None                 # BFM_model_front.mat; None = the built-in synthetic face model
    recon_ckpt: str | None = None          # Deep3DFaceRecon epoch_20.pth; None = the synthetic FR (smoke)
    recon_backbone: str | None = None      # None = inferred from the checkpoint
    render_backend: str = "auto"

    @property
    def design_spec(self) -> Design:
        """The Design row of config.design (what G does with p, which loss terms; training/designs.py)."""
        return get_design(self.design)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for training_options.json and snapshots)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from to_dict() output; unknown keys are an error (they signal a typo or a version skew).

        A config written before designs existed has `cond: bool` instead of `design`; it reads as method / uncond.
        One written before `inject_init` existed started its injected-feature columns at zero, and says so.
        """
        values = dict(values)
        values.setdefault("inject_init", "zero")
        if "cond" in values:
            legacy = design_from_cond(bool(values.pop("cond")))
            if values.setdefault("design", legacy) != legacy:
                raise UserError(f"config gives both cond and design '{values['design']}'; keep only design")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def list_presets() -> list[str]:
    """Names of the presets in configs/."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's overrides as a dict; unknown names give the list of valid ones."""
    # A preset is a name in configs/ or the path of a JSON file in the same format (for your own presets).
    path = name if name.endswith(".json") else os.path.join(CONFIG_DIR, f"{name}.json")
    if not os.path.isfile(path):
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(list_presets())}")
    with open(path) as f:
        values = json.load(f)
    values.pop("_comment", None)
    return values


def resolve_config(cfg: str, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults <- preset <- user flags (only those not None), then validated."""
    values = TrainConfig().to_dict()
    values.update(load_preset(cfg))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "cond" in overrides:  # --cond / --no-cond: aliases of --design method / uncond
        alias = design_from_cond(overrides.pop("cond"))
        if overrides.setdefault("design", alias) != alias:
            raise UserError(f"--{'cond' if alias == 'method' else 'no-cond'} means --design {alias}, "
                            f"not {overrides['design']}: pass one of them")
    values.update(overrides)
    values["cfg"] = os.path.splitext(os.path.basename(cfg))[0]
    for key in ("data", "bfm", "recon_ckpt", "init_from"):  # absolute: resume/metrics/generate work from any folder
        if values.get(key) is not None:
            values[key] = os.path.abspath(values[key])
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Checks that need no data or GPU; each failure is one clear line."""
    if config.design not in DESIGNS:
        raise UserError(f"unknown design '{config.design}'; choose one of: {', '.join(DESIGNS)}")
    for field in dataclasses.fields(config):  # NaN/inf from a flag or a preset would train on garbage (or forever)
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = {"tick_kimg": "--tick"}.get(field.name, "--" + field.name.replace("_", "-"))
            raise UserError(f"{flag} = {value} is not a finite number (given on the command line or in the preset)")
    if config.gpus < 1:
        raise UserError("--gpus must be at least 1")
    if config.batch < 1 or config.batch % config.gpus != 0:
        raise UserError(f"--batch={config.batch} must be a positive multiple of --gpus={config.gpus}")
    per_gpu = config.batch // config.gpus
    batch_gpu = config.batch_gpu or per_gpu
    if batch_gpu < 1 or per_gpu % batch_gpu != 0:
        raise UserError(f"--batch-gpu={batch_gpu} must divide the per-GPU batch {per_gpu} (= batch / gpus)")
    if batch_gpu % config.mbstd_group != 0:
        # A smaller pass would silently shrink D's minibatch-stddev group and change the model being trained.
        raise UserError(f"images per GPU pass ({batch_gpu}) must be a multiple of the minibatch-stddev group "
                        f"{config.mbstd_group}; raise --batch-gpu or lower --mbstd-group")
    if config.kimg <= 0 or config.tick_kimg <= 0 or config.snap < 1:
        raise UserError("--kimg and --tick must be positive and --snap at least 1")
    if config.gamma < 0 or config.lambda_cons < 0 or config.blend_kimg < 0:
        raise UserError("--gamma, --lambda-cons and --blend-kimg must be non-negative")
    if config.render_backend not in ("auto", "torch", "nvdiffrast"):
        raise UserError(f"--render-backend must be auto, torch or nvdiffrast, not '{config.render_backend}'")
    if config.adam_impl not in ("auto", "forloop", "foreach", "fused"):
        raise UserError(f"adam_impl must be auto, forloop, foreach or fused, not '{config.adam_impl}'")
    if config.fr_autocast not in ("off", "bf16", "fp16"):
        raise UserError(f"fr_autocast must be off, bf16 or fp16, not '{config.fr_autocast}'")
    if config.inject_init not in ("paper", "zero"):
        raise UserError(f"--inject-init must be paper or zero, not '{config.inject_init}'")
    if config.rep_cache_mb < 0:
        raise UserError(f"rep_cache_mb must be non-negative, not {config.rep_cache_mb}")
    if config.g_reg_interval is not None and config.g_reg_interval < 1:
        raise UserError(f"g_reg_interval must be None or at least 1, not {config.g_reg_interval}")
    if config.device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device must be auto, cuda or cpu, not '{config.device}'")
    if config.data is None and config.builtin_data is None:
        raise UserError(f"preset '{config.cfg}' needs --data (a dataset zip or folder made by dataset_tool.py)")
    real_data_without_face_assets = config.data is not None and (config.bfm is None or config.recon_ckpt is None)
    if config.design_spec.conditional and real_data_without_face_assets and config.builtin_data is None:
        raise UserError(f"design {config.design} needs --bfm (BFM_model_front.mat) and --recon-ckpt "
                        "(Deep3DFaceRecon epoch_20.pth); use --design uncond for the unconditional baseline")
    for path, flag in ((config.data, "--data"), (config.bfm, "--bfm"), (config.recon_ckpt, "--recon-ckpt")):
        if path is not None and not os.path.exists(path):
            raise UserError(f"{flag} path does not exist: {path}")
