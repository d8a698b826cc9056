"""Train a small face reconstructor (FR) on pre-rendered images of the synthetic world, in 30-60 s on 2 cores.

Stand-in for Deep3DFaceRecon's `epoch_20.pth` when the BFM is not available (tests, smoke runs, CI): the
synthetic face model has the BFM file layout but not its data, so the official network cannot be used with it.
The FR is the same R-Net (`ReconNet`: the seven release heads on the `SmallConvNet` trunk by default, or a
torchvision ResNet) saved in the official checkpoint layout and read back with `load_recon_net`; its input size is
the smoke resolution, 32, instead of the release's 224.

Supervision is direct. Training images come pre-rendered (dataprep.builtin renders them once from the synthetic
world of dataprep.synthetic_scenes: backgrounds, hair, hats, clothing, labels = the exact p), as three arrays:
scenes, bare renders (black outside the face) and labels. Each batch mixes them the way FR meets images during
training with the consistency loss (eq. 6: x' = alpha * x + (1 - alpha) * r(p)): 50% scenes, 20% bare renders,
30% a blend with alpha ~ U(0, 1); an eighth of the batch is blurred (sigma 0.3-0.7 px), since generator images are
softer than aliased renders (blurring half of it, as before, cost 0.02-0.03 of held-out relative MAE on id and exp,
the small features), and half is mirrored left-right with the labels mirrored to match (`mirror_coeffs`).

Loss: per group, the mean squared coefficient error in units of the labels' std, weighted and summed over the groups,
    L = sum_g w_g mean_{n, k in g} ((p_hat_nk - p_nk) / sigma_k)^2      over the k with sigma_k > 0,
with w = 1.5 for id, 3 for exp and 1 for the rest (`SyntheticFRConfig.group_weights`): with equal weights the small
features of id and exp trail (held-out 0.50 / 0.58 vs 0.25-0.41 for the other groups); the weights trade some of the
others' margin for them (the recipe: 0.46 / 0.47 vs 0.22-0.42, docs/benchmarks.md). The synthetic world
leaves the tails of the id / exp / tex bases at 0 (deep3drecon.synthetic.ACTIVE): those coefficients are left out,
get no gradient, and their heads stay exactly at the zero init (the world's value).

Reported on a held-out set of scenes: per-group mean absolute coefficient error and its ratio to predicting the
mean (`coeff_error_by_group`).
Measured numbers: docs/benchmarks.md.

Usage: python -m deep3drecon.train_synthetic_fr --data TRAIN.zip --eval-data HELDOUT.zip --out PATH [--steps N] ...
(dataset zips of `dataset_tool.py synthetic`; the built-in FR is made by dataprep.builtin.builtin_recon_path).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from deep3drecon.face_model import COEFF_SLICES
from deep3drecon.recon_net import ReconNet, save_recon_net
from torch_utils.checks import FiniteFloat
from torch_utils.errors import Command, UserError
from torch_utils.outputs import refuse_existing, write_bytes
from torch_utils.progress import progress as show_progress


@dataclass
class SyntheticFRConfig:
    """Everything that defines one synthetic-FR training run (JSON-serialisable)."""

    backbone: str = "small"
    steps: int = 1500
    batch: int = 64  # on 2 CPU threads 64 trains 1.6x more images per second than 32, at the same accuracy per image
    lr: float = 4e-3
    seed: int = 0
    # Loss weight per group (module docstring); groups not named weigh 1.
    group_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"id": 1.5, "exp": 3.0})
    blur_fraction: float = 0.125  # share of each batch blurred ...
    blur_max_sigma: float = 0.7  # ... by a Gaussian of sigma U(0.3, this) px


@dataclass
class FRTrainingSet:
    """Pre-rendered images for FR: scenes, bare renders [N, 3, S, S] float32 in [0, 1], labels p [N, 257]."""

    scenes: torch.Tensor
    renders: torch.Tensor
    coeffs: torch.Tensor

    @classmethod
    def from_uint8(cls, scenes: np.ndarray, renders: np.ndarray | None, coeffs: np.ndarray) -> FRTrainingSet:
        """From uint8 [N, S, S, 3] arrays (renders None: scenes only, e.g. a held-out set) and labels [N, 257]."""
        to_float = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
        images = to_float(scenes)
        return cls(images, to_float(renders) if renders is not None else images, torch.as_tensor(coeffs).float())

    def __len__(self) -> int:
        return self.coeffs.shape[0]


def random_blur(img: torch.Tensor, generator: torch.Generator, *, max_sigma: float, fraction: float) -> torch.Tensor:
    """Blur each image of img [N, C, H, W] with probability `fraction`, by a Gaussian of random sigma in
    [0.3, max_sigma] px; the others are returned untouched."""
    n, c, h, w = img.shape
    sigma = 0.3 + torch.rand(n, generator=generator) * (max_sigma - 0.3)
    sigma = torch.where(torch.rand(n, generator=generator) < fraction, sigma, torch.zeros_like(sigma))
    taps = torch.arange(-2, 3, dtype=img.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)  # sigma 0 -> a delta
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, 5]
    x = F.pad(img.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=n * c)  # horizontal pass
    x = F.conv2d(x, kernel[:, None, :, None], groups=n * c)  # vertical pass
    return x.reshape(n, c, h, w)


# Coefficients whose sign flips when the image is mirrored left-right (x -> -x): yaw and roll, tx, and the SH
# bands odd in the normal's x (Y_3 ~ x, Y_4 ~ xy, Y_7 ~ xz of FaceModel.compute_color) in each colour.
_MIRROR_ODD = [COEFF_SLICES["angle"].start + 1, COEFF_SLICES["angle"].start + 2, COEFF_SLICES["trans"].start]
_MIRROR_ODD += [COEFF_SLICES["gamma"].start + 9 * c + k for c in range(3) for k in (3, 4, 7)]


def mirror_coeffs(coeffs: torch.Tensor) -> torch.Tensor:
    """p [N, 257] of the left-right mirrored image, for a world whose varied shape / albedo components are
    left-right symmetric (deep3drecon.synthetic's ACTIVE ones)."""
    out = coeffs.clone()
    out[:, _MIRROR_ODD] = -out[:, _MIRROR_ODD]
    return out


def make_batch(
    data: FRTrainingSet, n: int, generator: torch.Generator, *, blur_fraction: float, blur_max_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, S, S] in [0, 1], labels [n, 257]): scenes / bare renders / eq. 6 blends, blur_fraction blurred,
    half mirrored (with `mirror_coeffs` labels), which doubles the faces seen."""
    idx = torch.randint(len(data), (n,), generator=generator)
    kind = torch.rand(n, 1, 1, 1, generator=generator)
    alpha = torch.where(kind < 0.5, torch.ones_like(kind), torch.rand(n, 1, 1, 1, generator=generator))
    alpha = torch.where(kind < 0.2, torch.zeros_like(alpha), alpha)  # 50% scene, 20% bare render, 30% blend
    img = alpha * data.scenes[idx] + (1 - alpha) * data.renders[idx]
    coeffs = data.coeffs[idx]
    flip = torch.rand(n, generator=generator) < 0.5
    img = torch.where(flip[:, None, None, None], img.flip(-1), img)
    coeffs = torch.where(flip[:, None], mirror_coeffs(coeffs), coeffs)
    return random_blur(img, generator, max_sigma=blur_max_sigma, fraction=blur_fraction), coeffs


def coeff_error_by_group(pred: torch.Tensor, target: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per-group errors of pred vs target coefficients (both [N, 257]).

    For each group (id, exp, tex, angle, gamma, trans): `mae` = mean |pred - target|; `trivial_mae` = the same for
    the best constant guess in hindsight (the per-coefficient mean of target); `relative` = mae / trivial_mae
    (1 = no better than guessing the average face, 0 = perfect).
    """
    pred, target = pred.detach().double().cpu(), target.detach().double().cpu()
    result = {}
    for name, sl in COEFF_SLICES.items():
        t = target[:, sl]
        mae = (pred[:, sl] - t).abs().mean().item()
        trivial = (t - t.mean(dim=0, keepdim=True)).abs().mean().item()
        result[name] = {"mae": mae, "trivial_mae": trivial, "relative": mae / max(trivial, 1e-12)}
    return result


def coeff_loss(
    pred: torch.Tensor, target: torch.Tensor, std: torch.Tensor, weights: dict[str, float] | None = None
) -> torch.Tensor:
    """Scalar loss sum_g w_g mean_{n, k in g, std_k > 0} ((pred - target) / std)^2 (module docstring); pred,
    target [N, 257], std [257]; weights w_g per group name (missing = 1; None = all 1)."""
    loss = pred.new_zeros(())
    for name, sl in COEFF_SLICES.items():
        keep = std[sl] > 0
        if keep.any():
            weight = 1.0 if weights is None else weights.get(name, 1.0)
            loss = loss + weight * ((pred[:, sl] - target[:, sl])[:, keep] / std[sl][keep]).square().mean()
    return loss


def format_errors(errors: dict[str, dict[str, float]]) -> str:
    """Multi-line table of `coeff_error_by_group` output."""
    lines = [f"{'group':<6} {'MAE':>9} {'trivial':>9} {'relative':>9}"]
    for name, e in errors.items():
        lines.append(f"{name:<6} {e['mae']:9.4f} {e['trivial_mae']:9.4f} {e['relative']:9.3f}")
    return "\n".join(lines)


@torch.no_grad()
def predict(net: ReconNet, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Coefficients [N, 257] of images [N, 3, S, S] in [0, 1] with net in eval mode."""
    net.eval()
    return torch.cat([net(images[i : i + batch]) for i in range(0, images.shape[0], batch)])


def train_synthetic_fr(
    cfg: SyntheticFRConfig,
    train: FRTrainingSet,
    held_out: FRTrainingSet,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train per `cfg` on `train`, evaluate on `held_out`, save with save_recon_net to `out` if given.

    -> {"errors": coeff_error_by_group, "wall_s", "config"}.
    The network's input size is the images' resolution S.
    """
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    net = ReconNet(cfg.backbone, input_size=train.scenes.shape[-1])
    std = train.coeffs.std(dim=0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # Short linear warm-up (Adam + freshly initialised BatchNorm overshoot at full lr), then cosine decay to 0 so the
    # last steps average out the noise of small batches, which matters in a run this short.
    warmup = max(1, cfg.steps // 20)

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(cfg.seed)

    net.train()
    with show_progress(total=cfg.steps, unit="step", disable=not progress, desc="  training the synthetic FR") as bar:
        for _ in range(cfg.steps):
            img, coeffs = make_batch(train, cfg.batch, gen, blur_fraction=cfg.blur_fraction,
                                     blur_max_sigma=cfg.blur_max_sigma)
            loss = coeff_loss(net(img), coeffs, std, cfg.group_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)

    pred = predict(net, held_out.scenes)
    errors = coeff_error_by_group(pred, held_out.coeffs)
    wall_s = time.time() - t_start
    if progress:
        print(f"  held-out error of the synthetic FR ({len(held_out)} scenes):", flush=True)
        print("\n".join("  " + line for line in format_errors(errors).splitlines()), flush=True)
    if out is not None:
        save_recon_net(net, out)
    return {"errors": errors, "wall_s": wall_s, "config": dataclasses.asdict(cfg)}


def read_dataset_zip(path: str | os.PathLike) -> FRTrainingSet:
    """Images and 257-d labels of a dataset zip written by dataset_tool.py (scenes only: no bare renders)."""
    try:
        with zipfile.ZipFile(path) as zf:
            labels = json.loads(zf.read("dataset.json"))["labels"]
            images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(name))).convert("RGB")) for name, _ in labels]
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a dataset zip with labels ({exc})") from exc
    coeffs = np.asarray([row for _, row in labels], np.float32)
    if coeffs.ndim != 2 or coeffs.shape[1] != 257:
        raise UserError(f"{path}: labels are not 257-d 3DMM coefficients")
    return FRTrainingSet.from_uint8(np.stack(images), None, coeffs)


@click.command(cls=Command)
@click.option("--data", type=click.Path(exists=True, dir_okay=False), required=True, help="Training dataset zip")
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), required=True, help="Held-out zip")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Checkpoint to write (epoch_20 layout)")
@click.option("--steps", type=click.IntRange(min=1), default=SyntheticFRConfig.steps, show_default=True)
@click.option("--batch", type=click.IntRange(min=2), default=SyntheticFRConfig.batch, show_default=True)
@click.option("--backbone", type=click.Choice(["small", "resnet18", "resnet34", "resnet50"]), default="small")
@click.option("--lr", type=FiniteFloat(0, 10, lo_open=True), default=SyntheticFRConfig.lr, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metrics", type=click.Path(dir_okay=False), default=None, help="Also write the errors as JSON here")
@click.option("--overwrite", is_flag=True, help="Replace --out / --metrics if they exist (default: refuse them)")
def main(data: str, eval_data: str, out: str, metrics: str | None, overwrite: bool, **kwargs) -> None:
    """Train a small face reconstructor on a labelled dataset and report its per-group held-out error."""
    refuse_existing([out, *([metrics] if metrics else [])], overwrite)  # before minutes of training
    result = train_synthetic_fr(SyntheticFRConfig(**kwargs), read_dataset_zip(data), read_dataset_zip(eval_data),
                                out=out, progress=True)
    if metrics:
        write_bytes(metrics, (json.dumps(result, indent=2) + "\n").encode(), overwrite)


if __name__ == "__main__":
    main()
