"""The face-reconstruction (FR) network of Deep3DFaceRecon_pytorch and its checkpoint format.

`ReconNet` reproduces the released R-Net: a torchvision ResNet trunk (ResNet-50 in the release; ResNet-18/34 or
the `SmallConvNet` trunk for the synthetic FRs of tests and smoke runs) followed by seven zero-initialised 1x1
convolution heads whose outputs, concatenated, form the 257 coefficients
(id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | tx,ty 2 | tz 1).
Module names match the release, so `state_dict()` keys are exactly those of `epoch_20.pth['net_recon']`:
`backbone.conv1.weight`, ..., `backbone.layer4.2.bn3.num_batches_tracked`, `final_layers.0.weight`, ...
(332 keys for ResNet-50, 230 for ResNet-34, 134 for ResNet-18; no `backbone.fc.*`).

Checkpoint layout written/read here: a dict with `net_recon` -> state dict (the official layout). Our own small
networks additionally store `input_size` (the square resolution the trunk was trained at); the official file has
no such key and is read as 224. Official loaders only read `net_recon`, so our files stay loadable there.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deep3drecon.coeffs import FR_HEAD_DIMS
from torch_utils.errors import UserError
from torch_utils.misc import describe_state_dict_mismatch, summarise_names

HEAD_DIMS = FR_HEAD_DIMS  # head output sizes in release order: id, exp, tex, angle, gamma, (tx, ty), tz
FR_INPUT_SIZE = 224  # the release's input resolution (aligned crop, RGB in [0, 1], no mean/std normalisation)



class SmallConvNet(nn.Module):
    """Small trunk for low-resolution synthetic FRs: img [N, 3, S, S] -> features [N, 1024].

    Four 3x3 stride-2 conv + BatchNorm + ReLU stages (32, 64, 128, 256 channels: 32 px -> 16, 8, 4, 2), then an
    average pool to 2 x 2 cells, flattened: keeping where things are in the image helps the pose and translation
    heads. A full-resolution first stage (as in ResNet-free nets of this size) measured no better at 32 px and cost
    40% more time. Not part of the release; its checkpoints use the same layout (`backbone.*` + the seven heads) and
    are told apart by the key `backbone.stages.0.0.weight`.
    """

    WIDTHS = (32, 64, 128, 256)
    FEATURES = WIDTHS[-1] * 4

    def __init__(self, weights: None = None) -> None:
        super().__init__()
        stages, cin = [], 3
        for cout in self.WIDTHS:
            stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout),
                                        nn.ReLU(inplace=True)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Identity()  # ReconNet replaces `fc` as for the ResNets

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, S, S] -> [N, 1024]."""
        return self.fc(F.adaptive_avg_pool2d(self.stages(img), 2).flatten(1))


def _resnet(name: str, weights: None = None) -> nn.Module:
    """torchvision's ResNet `name`, imported on first use: importing torchvision costs seconds (it pulls in
    torch._dynamo through torchvision.ops), which the small trunk of smoke runs does not need."""
    import torchvision.models

    return getattr(torchvision.models, name)(weights=weights)


# name -> (builder(weights=None) -> trunk module, feature width)
_BACKBONES = {
    "resnet18": (functools.partial(_resnet, "resnet18"), 512),
    "resnet34": (functools.partial(_resnet, "resnet34"), 512),
    "resnet50": (functools.partial(_resnet, "resnet50"), 2048),
    "small": (SmallConvNet, SmallConvNet.FEATURES),
}


class ReconNet(nn.Module):
    """R-Net: img [N, 3, S, S] RGB in [0, 1] (S = `input_size`, 224 for the release) -> coefficients [N, 257]."""

    def __init__(self, backbone: str = "resnet50", input_size: int = FR_INPUT_SIZE) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise UserError(f"Unknown FR backbone {backbone!r}; choose one of {', '.join(_BACKBONES)}")
        builder, feat_dim = _BACKBONES[backbone]
        self.backbone_name = backbone
        self.input_size = int(input_size)
        # weights=None: never download ImageNet weights; checkpoints provide every parameter.
        self.backbone = builder(weights=None)
        # The release builds its ResNet without `fc` (use_last_fc=False); Identity keeps torchvision's forward
        # (ending in avgpool + flatten -> [N, feat_dim]) while adding no state-dict keys.
        self.backbone.fc = nn.Identity()
        self.final_layers = nn.ModuleList([nn.Conv2d(feat_dim, k, kernel_size=1, bias=True) for k in HEAD_DIMS])
        for head in self.final_layers:
            # Zero init as in the release: an untrained net predicts the mean face, frontal, ambient light.
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img: [N, 3, S, S] float RGB in [0, 1] -> coeffs [N, 257] (id|exp|tex|angle|gamma|trans)."""
        feat = self.backbone(img)[:, :, None, None]  # [N, C, 1, 1], the release's un-flattened pooled features
        return torch.cat([head(feat) for head in self.final_layers], dim=1).flatten(1)


def _infer_backbone(state: dict[str, torch.Tensor]) -> str:
    """Guess the trunk from state-dict keys: bottleneck blocks have conv3; ResNet-34 has a 3rd layer2 block."""
    if "backbone.stages.0.0.weight" in state:
        return "small"
    if "backbone.layer1.0.conv3.weight" in state:
        return "resnet50"
    if "backbone.layer2.2.conv1.weight" in state:
        return "resnet34"
    return "resnet18"


def _read_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, translating every failure mode into one-line UserErrors."""
    if not path.is_file():
        raise UserError(f"FR checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" not in text.lower():
            raise UserError(f"FR checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({text})") from exc
        # torch's message is a multi-line tutorial; keep only the line naming the refused object.
        reason = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), "non-tensor objects")
        raise UserError(
            f"FR checkpoint {path} is refused by the safe loader (weights_only=True; never unpickled): {reason}"
        ) from exc
    except Exception as exc:  # zip/pickle/IO errors surface as many types (RuntimeError, EOFError, IndexError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise UserError(f"FR checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({first})") from exc
    if not isinstance(ckpt, dict) or "net_recon" not in ckpt:
        found = summarise_names(sorted(map(str, ckpt))) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"FR checkpoint {path} has no 'net_recon' entry (found: {found}); expected epoch_20.pth layout")
    return ckpt


def load_recon_net(path: str | os.PathLike, backbone: str | None = None) -> ReconNet:
    """Load an `epoch_20.pth`-layout checkpoint strictly -> ReconNet in eval mode on the CPU.

    backbone None infers resnet18/34/50 (or the small trunk) from the keys. Any missing, unexpected or
    shape-mismatched key raises a UserError naming the keys; so does a corrupt/truncated file or one the safe
    loader refuses.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    state = ckpt["net_recon"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"FR checkpoint {path}: 'net_recon' is not a state dict of tensors")
    input_size = ckpt.get("input_size", FR_INPUT_SIZE)
    if not isinstance(input_size, int) or input_size < 32:
        raise UserError(f"FR checkpoint {path}: invalid 'input_size' {input_size!r} (expected an int >= 32)")
    name = backbone or _infer_backbone(state)
    net = ReconNet(name, input_size=input_size)
    problems = describe_state_dict_mismatch(net.state_dict(), state)
    if problems:
        raise UserError(f"FR checkpoint {path} does not match a {name} ReconNet: {problems}")
    net.load_state_dict(state, strict=True)
    return net.eval()


def save_recon_net(net: ReconNet, path: str | os.PathLike) -> None:
    """Write `net` as {'net_recon': state_dict, 'input_size': S} (the official layout), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"net_recon": state, "input_size": int(net.input_size)}, tmp)
        os.replace(tmp, path)  # atomic: readers never see a half-written checkpoint
    finally:
        tmp.unlink(missing_ok=True)
