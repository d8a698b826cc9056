"""Train a 3DMM-conditioned StyleGAN2 (the paper's method), or another design of training/designs.py.

Examples:
  python train.py --cfg smoke --outdir runs                       # CPU, built-in synthetic world, minutes
  python train.py --cfg paper256 --data ffhq256-3dmm.zip --bfm BFM/BFM_model_front.mat \\
      --recon-ckpt checkpoints/epoch_20.pth --gpus 8 --outdir runs   # the paper's FFHQ-256 run
  python train.py --resume latest --outdir runs                   # continue the newest run where it stopped
  python train.py --cfg paper256 ... --init-from stylegan2-ffhq-256.pkl   # new run from NVIDIA's pretrained G/D
  torchrun --nnodes 2 --nproc-per-node 8 ... train.py --cfg paper256 ...   # several nodes
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import click
import torch

from torch_utils import distributed
from torch_utils.errors import Command, UserError
from torch_utils.misc import pick_device
from training.config import TrainConfig, resolve_config, validate
from training.designs import DESIGNS
from training.resolve import resolve_run
from training.run import snapshot
from training.run.run_dir import RunLock, create_run_dir, lock_existing_run, next_run_number

# Flags that may change when a run is resumed; everything else comes from the saved config.
RESUME_OVERRIDABLE = ("kimg", "snap", "tick_kimg", "workers", "metrics", "gpus", "batch_gpu", "device")


def refuse_ignored_with_resume(resume: str | None) -> None:
    """--cfg (any --resume) and --outdir (unless --resume latest, which searches it) would be ignored: one line."""
    ctx = click.get_current_context()
    given = lambda name: ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)  # noqa: E731
    ignored = [flag for name, flag in (("cfg", "--cfg"), ("outdir", "--outdir")) if given(name)
               and not (name == "outdir" and resume == "latest")]  # fmt: skip
    if resume is not None and ignored:
        raise UserError(f"--resume continues the saved config in the run's own directory; {' and '.join(ignored)} "
                        "would be ignored: leave them out (only --resume latest uses --outdir, to find the run)")


class _Tee:
    """Copies everything written to a stream into log.txt as well."""

    def __init__(self, stream, log_file) -> None:
        self.stream, self.log_file = stream, log_file

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self.log_file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log_file.flush()

    def isatty(self) -> bool:
        return False  # log.txt is a file: progress goes to both as plain lines, never as a redrawn bar

    def __getattr__(self, name):
        return getattr(self.stream, name)


def prepare_assets(config: TrainConfig, dry_run: bool = False) -> str:
    """Open and check the dataset and the face assets before any run directory exists; returns the data path.

    A real run builds missing built-in assets once (with progress) and loads the face model and FR checkpoint on
    the CPU, so that a bad file is refused here, leaving nothing behind. A dry run only resolves and checks the
    dataset (the synthetic FR, minutes to train, is not built).
    """
    dataset, resolved = resolve_run(config, progress=True, need_fr=not dry_run)
    config.resolution = dataset.resolution
    dataset.close()
    if dataset.skipped:
        print(f"Leaving out {len(dataset.skipped)} bad image(s) (--skip-bad-images):")
        for name, reason in dataset.skipped[:20]:
            print(f"  {name}: {reason}")
        if len(dataset.skipped) > 20:
            print(f"  ... and {len(dataset.skipped) - 20} more")
    if dry_run:
        return resolved.data
    if config.design_spec.conditional:
        from deep3drecon.face_model import FaceModel
        from deep3drecon.recon_net import load_recon_net

        FaceModel.from_mat(resolved.bfm)
        load_recon_net(resolved.recon_ckpt, backbone=config.recon_backbone)
    return resolved.data


def run_worker(rank: int, config: TrainConfig, run_dir: str, resume_state: str | None, init_method: str | None) -> None:
    """Entry point of one training process (rank); all ranks run the same loop."""
    from metrics.snapshot_hook import snapshot_hook
    from training.training_loop import training_loop

    world_size = config.gpus
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if distributed.launched_by_torchrun() else rank
    device = pick_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not distributed.is_initialized():  # torchrun ranks joined in main() already
        distributed.init_process_group(rank, world_size, device, init_method)
    if rank == 0:
        log = open(os.path.join(run_dir, "log.txt"), "a")
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    else:
        sys.stdout = open(os.devnull, "w")  # only rank 0 talks; errors still reach stderr
    try:
        dataset, assets = resolve_run(config)  # rank 0 built any missing built-in asset before the launch
        hook = snapshot_hook(config, dataset, assets.recon_ckpt, run_dir, device, rank, world_size)  # --metrics
        training_loop(config, run_dir, device, dataset, assets, rank=rank, world_size=world_size,
                      resume_state=resume_state, snapshot_hook=hook)
    finally:
        distributed.shutdown()


def launch(config: TrainConfig, run_dir: str, resume_state: str | None) -> None:
    """Run in this process (1 GPU / CPU / under torchrun) or spawn config.gpus processes."""
    if distributed.launched_by_torchrun():
        run_worker(distributed.get_rank(), config, run_dir, resume_state, None)
    elif config.gpus == 1:
        run_worker(0, config, run_dir, resume_state, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            init_method = f"file://{os.path.abspath(os.path.join(tmp, '.torch_distributed_init'))}"
            try:
                torch.multiprocessing.spawn(run_worker, args=(config, run_dir, resume_state, init_method),
                                            nprocs=config.gpus)
            except torch.multiprocessing.ProcessRaisedException as e:
                # A rank's UserError (e.g. training.run.nonfinite.TrainingDiverged) arrives as its traceback text; its
                # last line "module.Class: message" is the one line the user needs.
                last = str(e).strip().splitlines()[-1]
                if last.startswith(("torch_utils.errors.UserError: ", "training.run.nonfinite.TrainingDiverged: ")):
                    raise UserError(last.split(": ", 1)[1]) from None
                raise


def setup_run(cfg: str, resume: str | None, dry_run: bool, flags: dict) -> tuple[TrainConfig, str, str | None]:
    """Resolve the config (or the resumed one), build missing assets, pick the run directory. Raises UserError."""
    if flags.get("metrics") is not None:
        flags["metrics"] = [] if flags["metrics"] == "none" else [m for m in flags["metrics"].split(",") if m]
    outdir, desc = flags.pop("outdir"), flags.pop("desc")
    if resume is not None and flags.get("init_from") is not None:
        raise UserError("--init-from starts a new run from pretrained weights, --resume continues a run: pass one")
    refuse_ignored_with_resume(resume)
    resume_state = None
    if resume is not None:
        resume_state = snapshot.resolve_resume(resume, outdir, log=print)
        saved = snapshot.safe_load(resume_state)
        if saved.get("format") != snapshot.STATE_FORMAT:
            raise UserError(f"--resume needs a training-state-*.pt, not a network snapshot: {resume_state}")
        ignored = sorted(k for k, v in flags.items() if v is not None and k not in RESUME_OVERRIDABLE)
        if ignored:
            raise UserError(f"--resume continues the saved config; only {', '.join(RESUME_OVERRIDABLE)} may change, "
                            f"not: {', '.join(ignored)}")
        config = TrainConfig.from_dict(saved["config"])
        for key in RESUME_OVERRIDABLE:
            if flags.get(key) is not None:
                setattr(config, key, flags[key])
        validate(config)
        run_dir = os.path.dirname(os.path.abspath(resume_state))
    else:
        config = resolve_config(cfg, flags)
        config.outdir = outdir
        data_path = prepare_assets(config, dry_run)
        if config.init_from is not None:  # read it now: a missing, refused or generator-less file fails early
            from training.interop.init_from import read_init_source

            read_init_source(config.init_from)
        data_name = os.path.splitext(os.path.basename(data_path.rstrip("/")))[0]
        parts = [config.cfg, data_name, f"gpus{config.gpus}", f"batch{config.batch}", f"gamma{config.gamma:g}"]
        parts += [config.design] if config.design != "method" else []
        parts += [desc] if desc else []
        # The number is only planned here; claim_run_dir takes the next free one atomically.
        run_dir = os.path.join(outdir, f"{next_run_number(outdir):05d}-{'-'.join(parts)}")
        config.desc = desc
    if not distributed.launched_by_torchrun() and config.device != "cpu" and torch.cuda.is_available():
        if config.gpus > torch.cuda.device_count():
            raise UserError(f"--gpus {config.gpus} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if config.metrics:  # refused now, not at the first snapshot: unknown names, or metrics the design cannot compute
        from metrics.registry import check_metrics_apply, get_metric

        check_metrics_apply(config.metrics, config.design_spec.conditional, f"design {config.design}")
        if any(get_metric(m).needs_inception for m in config.metrics) and not dry_run:
            from metrics.features import resolve_inception_weights

            resolve_inception_weights()  # fetch once here, not in every rank at the first snapshot
    return config, run_dir, resume_state


@click.command(cls=Command, context_settings={"show_default": True, "max_content_width": 120})
@click.option("--outdir", help="Where run directories are made", default="training-runs", type=str)
@click.option("--cfg", help="Preset name from configs/ or a JSON file of the same form", default="paper256", type=str)
@click.option("--data", help="Dataset zip or folder (dataset_tool.py); smoke has built-in data", type=str)
@click.option("--gpus", help="Processes / GPUs on this node", type=click.IntRange(min=1))
@click.option("--batch", help="Total batch size [preset]", type=click.IntRange(min=1))
@click.option("--batch-gpu", help="Images per forward pass per GPU (gradient accumulation below batch/gpus)",
              type=click.IntRange(min=1))
@click.option("--gamma", help="R1 weight [preset]", type=click.FloatRange(min=0))
@click.option("--kimg", help="Training length in thousands of real images [preset]", type=click.FloatRange(min=0))
@click.option("--tick", "tick_kimg", help="Progress line every this many kimg [preset]", type=click.FloatRange(min=0))
@click.option("--snap", help="Snapshot every this many ticks [preset]", type=click.IntRange(min=1))
@click.option("--seed", help="Random seed", type=int)
@click.option("--workers", help="Data-loader worker processes per GPU", type=click.IntRange(min=0))
@click.option("--glr", help="G learning rate [preset]", type=click.FloatRange(min=0))
@click.option("--dlr", help="D learning rate [preset]", type=click.FloatRange(min=0))
@click.option("--mbstd-group", "mbstd_group", help="Minibatch-stddev group size [preset]", type=click.IntRange(min=1))
@click.option("--design", type=click.Choice(list(DESIGNS)),
              help="How p enters G and which loss terms train it: " + "; ".join(
                  f"{d.name} = {d.summary}" for d in DESIGNS.values()) + " [preset: method]")
@click.option("--cond/--no-cond", default=None, help="Aliases of --design method / --design uncond")
@click.option("--lambda-cons", "lambda_cons", help="Consistency loss weight (eq. 13) [preset]", type=float)
@click.option("--blend-kimg", "blend_kimg", help="Progressive blending length in kimg (eq. 6) [preset]", type=float)
@click.option("--inject-init", "inject_init", type=click.Choice(["paper", "zero"]),
              help="Injected-feature weight columns at init: paper = N(0,1) like every column, zero = G starts as "
                   "StyleGAN2 (--init-from zeroes the columns it cannot copy either way) [preset: paper]")
@click.option("--bfm", help="BFM_model_front.mat (default for smoke: the built-in synthetic face model)", type=str)
@click.option("--recon-ckpt", "recon_ckpt", help="Deep3DFaceRecon epoch_20.pth (smoke: synthetic FR)", type=str)
@click.option("--render-backend", "render_backend", type=click.Choice(["auto", "torch", "nvdiffrast"]))
@click.option("--metrics", help="Comma-separated metrics at each snapshot, or 'none'", type=str)
@click.option("--resume", help="Continue a run: training-state .pt, run directory, or 'latest'", type=str)
@click.option("--init-from", "init_from", type=str,
              help="New run from pretrained G/D/G_ema: NVIDIA StyleGAN2 .pkl, network snapshot or training state")
@click.option("--skip-bad-images", "skip_bad_images", is_flag=True, default=None,
              help="Leave out (and list) dataset images that fail the header check instead of stopping")
@click.option("--desc", help="Extra text in the run directory name", type=str)
@click.option("--device", help="auto | cuda | cpu", type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--dry-run", "-n", is_flag=True, help="Print the resolved options and exit")
def main(cfg: str, resume: str | None, dry_run: bool, **flags) -> None:
    """Train the 3DMM-conditioned generator (or another --design) from a preset plus overrides."""
    torchrun = distributed.launched_by_torchrun()
    if torchrun:
        # Under torchrun every rank runs this script: rank 0 alone resolves, builds assets and picks the run
        # directory, then shares the outcome, so that all nodes agree on one run (and fail together on bad input).
        distributed.init_torchrun()
        flags["gpus"] = distributed.get_world_size()
    outcome: list = [None]
    lock = None
    if distributed.get_rank() == 0:
        try:
            config, run_dir, resume_state = setup_run(cfg, resume, dry_run, flags)
            if not dry_run:
                run_dir, lock = claim_run_dir(config, run_dir, resume_state)
            outcome = [("ok", (config, run_dir, resume_state))]
        except UserError as e:
            outcome = [("error", str(e))]
    if torchrun:
        distributed.broadcast_objects(outcome)
    status, value = outcome[0]
    if status == "error":
        distributed.shutdown()
        raise UserError(value)
    config, run_dir, resume_state = value

    if distributed.get_rank() == 0:
        print(json.dumps(config.to_dict(), indent=2))
        print(f"Output directory: {run_dir}")
    if dry_run:
        if distributed.get_rank() == 0:
            print("Dry run; exiting.")
        distributed.shutdown()
        return
    distributed.barrier()
    try:
        launch(config, run_dir, resume_state)
        from experiments import smoke_report

        if smoke_report.applies(config) and smoke_report.is_main_process():  # the built-in world's evidence
            smoke_report.write_run_report(config, run_dir, pick_device(config.device))
    finally:
        if lock is not None:
            lock.release()


def claim_run_dir(config: TrainConfig, planned: str, resume_state: str | None) -> tuple[str, RunLock]:
    """Lock the resumed run directory, or create the new one atomically (locked) with training_options.json.

    Returns (run_dir, lock); the lock is held until the run ends. UserError if another trainer holds it or the
    output directory cannot be written.
    """
    if resume_state is not None:
        return planned, lock_existing_run(planned)
    outdir, name = os.path.split(planned)
    run_dir, lock = create_run_dir(outdir, name.split("-", 1)[1])
    try:
        with open(os.path.join(run_dir, "training_options.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    except OSError as e:
        lock.release()
        raise UserError(f"cannot write {run_dir}/training_options.json: {e.strerror}") from None
    return run_dir, lock


if __name__ == "__main__":
    main()
