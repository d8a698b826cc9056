"""The training loop: one function, fixed phase order (status, snapshot, stop?, accumulate, step, EMA).

Runs identically on CPU, one GPU, N spawned processes and torchrun nodes. Every rank executes the same
collectives in the same order; only rank 0 writes files. The caller (train.py) resolves the assets and opens
the dataset; the loop builds the networks and trains.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from torch_utils import distributed
from torch_utils.training_stats import StatsCollector
from training.condition import Condition, ConditionBank
from training.config import TrainConfig
from training.consistency import ConsistencyLoss, coeff_group_scales
from training.dataset import ImageLabelDataset, make_loader
from training.designs import Design, get_design
from training.discriminator import Discriminator
from training.imitative import ImitativeLoss
from training.interop.init_from import init_networks
from training.loss import GANLoss
from training.networks import Generator
from training.networks_config import discriminator_kwargs, generator_kwargs
from training.resolve import ResolvedAssets, build_reconstructor, build_renderer
from training.run import fast_paths, snapshot
from training.run.grids import generate_grid, grid_size, save_image_grid
from training.run.nonfinite import NonFiniteGuard
from training.run.reporting import TickReporter

# Called at every snapshot on every rank (collective): (G_ema, snapshot file name, the condition bank or None, the
# frozen FR or None). train.py passes the metrics' hook; the loop itself knows nothing of metrics.
SnapshotHook = Callable[[torch.nn.Module, str, ConditionBank | None, torch.nn.Module | None], None]


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def training_loop(config: TrainConfig, run_dir: str, device: torch.device, dataset: ImageLabelDataset,
                  assets: ResolvedAssets, rank: int = 0, world_size: int = 1,
                  resume_state: str | None = None, snapshot_hook: SnapshotHook | None = None) -> dict:  # fmt: skip
    """Train until config.kimg thousand real images have been shown to D. Returns final counters (for tests).

    dataset: the real images x [3, R, R] uint8 and their 257-d labels (the bank p is drawn from); assets: the
    resolved face model and FR paths (None for an unconditional design), from training.resolve. snapshot_hook:
    run at every snapshot after the files are written (train.py --metrics).
    """
    # Seeds and numerics: per-rank streams from one global seed; TF32 off unless config.allow_tf32.
    start_time = time.time()
    torch.manual_seed(config.seed * world_size + rank)
    np.random.seed((config.seed * world_size + rank) % 2**32)
    torch.backends.cudnn.benchmark = True
    fast_paths.set_tf32(config.allow_tf32)
    batch_gpu = config.batch_gpu or config.batch // world_size
    num_rounds = config.batch // (batch_gpu * world_size)
    if batch_gpu * num_rounds * world_size != config.batch:  # would silently train on another batch than counted
        raise ValueError(f"batch {config.batch} is not {world_size} process(es) x rounds x {batch_gpu} images")

    # Data: real images for D, and the empirical bank of coefficients p sampled independently for G.
    R = dataset.resolution
    design = get_design(config.design)
    _log(rank, f"Dataset: {dataset.path}: {len(dataset)} images, {R}x{R}, labels {dataset.label_dim}-d")
    _log(rank, f"Design: {design.name} ({design.summary})")

    # Networks. Parameters start identical on every rank (broadcast below, or loaded from the same file).
    G_kwargs, D_kwargs = generator_kwargs(config, R), discriminator_kwargs(config, R)
    G = Generator(**G_kwargs).train().requires_grad_(False).to(device)
    D = Discriminator(**D_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    if config.init_from is not None and resume_state is None:  # new run from pretrained weights; counters at 0
        init_networks(config.init_from, G, D, G_ema, log=lambda message: _log(rank, message))
    if config.channels_last:
        fast_paths.apply_channels_last(G, D, G_ema)

    # The 3DMM side: the bank of conditions p with rep(p) (eq. 3) and the frozen FR of the consistency loss (eq. 5).
    bank = g_term = None  # g_term: the design's G-phase term (consistency, DFG's or 3D-FM's losses)
    if design.conditional:
        if dataset.label_dim != 257:
            raise ValueError(f"design {design.name} needs 257-d 3DMM labels, the dataset has {dataset.label_dim}-d")
        renderer = build_renderer(assets.bfm, config.render_backend, device)
        g_term = _g_term(design, config, renderer, dataset.labels, assets.recon_ckpt, device)
        bank = ConditionBank(dataset.labels, renderer, R, device, config.rep_cache_mb)
        _log(rank, f"Renderer backend: {renderer.backend}; {bank.describe()}")

    # Optimisers; D's lazy R1 corrects lr and betas so the effective rate matches non-lazy R1 (StyleGAN2); G's
    # only with config.g_reg_interval (StyleGAN2-ADA keeps 4 without path length; StyleGAN3 and paper256: None).
    opt_G = fast_paths.make_adam(G.parameters(), config.glr, (0.0, 0.99), config.adam_impl, config.g_reg_interval)
    opt_D = fast_paths.make_adam(D.parameters(), config.dlr, (0.0, 0.99), config.adam_impl, config.d_reg_interval)
    # z/p stream seeded apart from torch's global generator, so it never replays weight init or noise numbers.
    rng_seed = int(np.random.SeedSequence([config.seed, rank, 1]).generate_state(1)[0])
    rng = torch.Generator(device=device).manual_seed(rng_seed)

    # Resume: networks, optimisers, counters and (same world size) every random stream.
    cur_nimg = cur_tick = batch_idx = 0
    if resume_state is not None:
        cur_nimg, cur_tick, batch_idx = _restore_state(resume_state, G, D, G_ema, opt_G, opt_D, rng, device, rank)
        if cur_nimg >= int(config.kimg * 1000):
            _log(rank, f"Already trained for {config.kimg} kimg; raise --kimg to continue.")
            return {"cur_nimg": cur_nimg, "cur_tick": cur_tick - 1, "batch_idx": batch_idx}
    for module in (G, D, G_ema):
        distributed.broadcast_module(module)

    # Loss, data order, and the statistics every rank reports.
    stats = StatsCollector(device)
    loss = GANLoss(G, D, stats, r1_gamma=config.gamma, style_mixing_prob=config.style_mixing_prob,
                   consistency=g_term, w_avg_in_g_pass=config.w_avg_in_g_pass)
    loader = make_loader(dataset, batch_gpu, rank, world_size, config.seed, start=cur_nimg // world_size,
                         workers=config.workers, pin_memory=device.type == "cuda")  # fmt: skip

    # Fixed grid: each row keeps p fixed, each column keeps z fixed (noise_mode const).
    gw, gh = grid_size(R)
    grid_gen = torch.Generator().manual_seed(config.seed)
    grid_idx = torch.randint(len(dataset.labels), [gh], generator=grid_gen)
    grid_z = torch.randn([gw if bank is not None else gw * gh, config.z_dim], generator=grid_gen).to(device)
    grid_cond = bank.rows(grid_idx) if bank is not None else None
    if rank == 0 and resume_state is None:
        reals = np.stack([dataset[int(i)][0] for i in torch.randint(len(dataset), [gw * gh], generator=grid_gen)])
        save_image_grid(reals, os.path.join(run_dir, "reals.png"), gw, drange=(0, 255))
        if grid_cond is not None:
            save_image_grid(grid_cond.rep[:, :3].repeat_interleave(gw, 0), os.path.join(run_dir, "reps.png"), gw)
        save_image_grid(generate_grid(G_ema, grid_z, grid_cond, batch_gpu), os.path.join(run_dir, "fakes_init.png"),
                        gw)  # fmt: skip
    resume_point = (cur_nimg, cur_tick - 1) if resume_state else None  # logs past it came from the killed run
    reporter = TickReporter(run_dir, stats, device, rank, resume_point=resume_point)
    guard = NonFiniteGuard(device)

    def sample_conditions() -> tuple[torch.Tensor, Condition | None]:
        """Fresh z [batch_gpu, z_dim] and the Condition of batch_gpu bank rows (None for an unconditional design)."""
        z = torch.randn([batch_gpu, config.z_dim], device=device, generator=rng)
        return z, bank.sample(batch_gpu, rng) if bank is not None else None

    _log(rank, fast_paths.describe(config))
    _log(rank, f"Training for {config.kimg} kimg: batch {config.batch} = {world_size} process(es) x {num_rounds} "
               f"round(s) x {batch_gpu}")  # fmt: skip
    total_nimg = int(config.kimg * 1000)
    tick_start_nimg, tick_start_time, maintenance_time = cur_nimg, time.time(), 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done = cur_nimg >= total_nimg
    while True:
        # Status at the end of each tick (tick 0 ends after the first iteration).
        tick_done = done or cur_tick == 0 or cur_nimg >= tick_start_nimg + config.tick_kimg * 1000
        if tick_done and batch_idx > 0:
            tick_stats = reporter.tick(cur_tick=cur_tick, cur_nimg=cur_nimg, tick_start_nimg=tick_start_nimg,
                          tick_start_time=tick_start_time, start_time=start_time,
                          maintenance_time=maintenance_time, total_nimg=total_nimg)  # fmt: skip
            guard.check(tick_stats, cur_tick, run_dir)  # a diverged run stops here, before its snapshot

            # Snapshot: fakes grid, network snapshot, training state, metrics (every config.snap ticks and at the end).
            maint_start = time.time()
            if done or cur_tick % config.snap == 0:
                kimg_tag = snapshot.snapshot_tag(cur_nimg)
                if rank == 0:
                    fakes = generate_grid(G_ema, grid_z, grid_cond, batch_gpu)
                    save_image_grid(fakes, os.path.join(run_dir, f"fakes{kimg_tag}.png"), gw)
                _save_snapshot(run_dir, kimg_tag, G, D, G_ema, opt_G, opt_D, G_kwargs, D_kwargs, config,
                               counters=(cur_nimg, cur_tick, batch_idx), rng=rng, rank=rank, world_size=world_size)
                if snapshot_hook is not None:
                    fr = g_term.reconstructor if g_term is not None else None
                    snapshot_hook(G_ema, f"network-snapshot-{kimg_tag}.pt", bank, fr)  # collective
                distributed.barrier()
            cur_tick += 1
            tick_start_nimg, tick_start_time = cur_nimg, time.time()
            maintenance_time = tick_start_time - maint_start
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        # Stop?
        if done:
            break

        # Accumulate and step: one real batch shared by the phases, fresh z and p for every phase and round.
        wait_start = time.perf_counter()
        batches = [next(loader) for _ in range(num_rounds)]
        reporter.add_loader_wait(time.perf_counter() - wait_start)  # time the step waited for data
        reals = [images.to(device, non_blocking=True).float() / 127.5 - 1 for images, _ in batches]
        # The reals' own labels as Conditions, only for a D that sees p (no host -> device copy of labels otherwise).
        real_conds = [bank.condition(labels.float()) if design.d_cond else None for _, labels in batches]
        phases = [("Gmain", G, opt_G, 1), ("Dmain", D, opt_D, 1)]
        if config.gamma > 0 and batch_idx % config.d_reg_interval == 0:
            phases.append(("Dreg", D, opt_D, config.d_reg_interval))
        for phase, net, opt, gain in phases:
            opt.zero_grad(set_to_none=True)
            net.requires_grad_(True)
            for real, real_cond in zip(reals, real_conds):
                z, cond = sample_conditions() if phase != "Dreg" else (None, None)
                loss.accumulate_gradients(phase, real, real_cond, z, cond, gain, cur_nimg)
            net.requires_grad_(False)
            guard.observe(distributed.average_gradients(net.parameters()), phase, batch_idx, cur_nimg)
            opt.step()

        # EMA of G (half-life ema_kimg, optional ramp-up in the first images).
        ema_nimg = config.ema_kimg * 1000
        if config.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * config.ema_rampup)
        beta = 0.5 ** (config.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for param_ema, param in zip(G_ema.parameters(), G.parameters()):
                param_ema.copy_(param.detach().lerp(param_ema, beta))
            for buf_ema, buf in zip(G_ema.buffers(), G.buffers()):
                buf_ema.copy_(buf)

        # Counters.
        cur_nimg += config.batch
        batch_idx += 1
        done = cur_nimg >= total_nimg

    reporter.close()
    _log(rank, "Exiting...")
    return {"cur_nimg": cur_nimg, "cur_tick": cur_tick, "batch_idx": batch_idx}


def _g_term(design: Design, config: TrainConfig, renderer: torch.nn.Module, labels: np.ndarray,
            recon_ckpt: str | None, device: torch.device) -> torch.nn.Module | None:
    """The design's G-phase term (training.designs `g_term`, `blend`): consistency, its ablation, DFG's, 3D-FM's."""
    if design.g_term is None or (design.consistency and config.lambda_cons == 0):
        return None
    if design.g_term == "3dfm":
        return ImitativeLoss(renderer, None, style="3dfm")
    reconstructor = build_reconstructor(recon_ckpt, device, config.recon_backbone)
    if design.g_term == "dfg":
        return ImitativeLoss(renderer, reconstructor)
    scales = coeff_group_scales(labels).to(device) if design.g_term == "coeff" else None
    return ConsistencyLoss(renderer, reconstructor, config.lambda_cons, config.blend_kimg if design.blend else 0.0,
                           config.fr_autocast, "inductor" if config.compile_fr else None, space=design.g_term,
                           group_scales=scales)  # fmt: skip


def _restore_state(path: str, G, D, G_ema, opt_G, opt_D, rng: torch.Generator, device: torch.device,
                   rank: int) -> tuple[int, int, int]:  # fmt: skip
    """Load a training state into the networks, optimisers and RNGs; returns (cur_nimg, next tick, batch_idx)."""
    state = snapshot.safe_load(path)
    for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema")):
        snapshot.load_state_into(module, state[key], key, path)
    snapshot.load_optimizer_into(opt_G, state["opt_G"], "G", path)
    snapshot.load_optimizer_into(opt_D, state["opt_D"], "D", path)
    if f"rank{rank}" in state["rng"]:  # same world size: continue every random stream exactly
        rng.set_state(state["rng"][f"rank{rank}"])
        torch.set_rng_state(state["rng"][f"torch_cpu{rank}"])
        if device.type == "cuda" and f"torch_cuda{rank}" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"][f"torch_cuda{rank}"], device)
    _log(rank, f"Resumed from {path} at {state['cur_nimg'] / 1000:.1f} kimg")
    return state["cur_nimg"], state["cur_tick"] + 1, state["batch_idx"]


def _save_snapshot(run_dir: str, kimg_tag: str, G, D, G_ema, opt_G, opt_D, G_kwargs: dict, D_kwargs: dict,
                   config: TrainConfig, *, counters: tuple[int, int, int], rng: torch.Generator, rank: int,
                   world_size: int) -> None:  # fmt: skip
    """Write network-snapshot-<kimg>.pt and training-state-<kimg>.pt (rank 0), after checking replica agreement.

    Collective: every rank gathers its RNG states and compares parameters with the others before rank 0 writes.
    """
    cur_nimg, cur_tick, batch_idx = counters
    rng_states = _gather_rng_states(rng, world_size)  # collective
    divergence = max(distributed.max_param_divergence(m) for m in (G, D, G_ema))  # collective
    if divergence > 0:  # checked before anything is written: a diverged run leaves no snapshot behind
        raise RuntimeError(f"replicas diverged across ranks (max |diff| {divergence:g}): a bug")
    if rank == 0:
        snapshot.save_network_snapshot(os.path.join(run_dir, f"network-snapshot-{kimg_tag}.pt"), G_ema, G_kwargs,
                                       config.to_dict(), cur_nimg)  # fmt: skip
        snapshot.save_training_state(
            os.path.join(run_dir, f"training-state-{kimg_tag}.pt"), G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D,
            G_kwargs=G_kwargs, D_kwargs=D_kwargs, config=config.to_dict(), cur_nimg=cur_nimg, cur_tick=cur_tick,
            batch_idx=batch_idx, rng_states=rng_states)  # fmt: skip


def _gather_rng_states(rng: torch.Generator, world_size: int) -> dict[str, torch.Tensor]:
    """Every rank's RNG states: the z/p generator and torch's global ones (noise inputs, style mixing)."""
    rank = distributed.get_rank()
    state = {f"rank{rank}": rng.get_state(), f"torch_cpu{rank}": torch.get_rng_state()}
    if rng.device.type == "cuda":
        state[f"torch_cuda{rank}"] = torch.cuda.get_rng_state(rng.device)
    if world_size == 1 or not distributed.is_initialized():
        return state
    import torch.distributed as dist

    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in state.items()})
    return {k: v for part in gathered for k, v in part.items()}
