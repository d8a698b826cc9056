"""The training loop: one function, fixed phase order (status, snapshot, stop?, accumulate, step, EMA).

Runs identically on CPU, one GPU, N spawned processes and torchrun nodes. Every rank executes the same
collectives in the same order; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import os
import time

import numpy as np
import torch

from torch_utils import distributed
from torch_utils.misc import format_time
from torch_utils.training_stats import StatsCollector
from training import snapshot
from training.config import TrainConfig
from training.consistency import ConsistencyLoss, blend_alpha
from training.dataset import ImageLabelDataset, make_loader
from training.face_pipeline import resolve_run_assets
from training.grids import generate_grid, grid_size, save_image_grid
from training.init_from import init_networks
from training.loss import GANLoss
from training.networks import Discriminator, Generator
from training.networks_config import discriminator_kwargs, generator_kwargs
from training.rep import make_rep


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def training_loop(c: TrainConfig, run_dir: str, device: torch.device, rank: int = 0, world_size: int = 1,
                  resume_state: str | None = None) -> dict:
    """Train until c.kimg thousand real images have been shown to D. Returns final counters (for tests)."""
    start_time = time.time()
    torch.manual_seed(c.seed * world_size + rank)
    np.random.seed((c.seed * world_size + rank) % 2**32)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # tf32 would change the numbers users compare against
    torch.backends.cudnn.allow_tf32 = False
    batch_gpu = c.batch_gpu or c.batch // world_size
    num_rounds = c.batch // (batch_gpu * world_size)
    if batch_gpu * num_rounds * world_size != c.batch:  # would silently train on a different batch than counted
        raise ValueError(f"batch {c.batch} is not {world_size} process(es) x rounds x {batch_gpu} images")

    # Data: real images for D, and the empirical bank of coefficients p sampled independently for G.
    data_path, bfm_path, recon_path = resolve_run_assets(c)
    dataset = ImageLabelDataset(data_path, resolution=c.resolution, xflip=c.xflip)
    R = dataset.resolution
    _log(rank, f"Dataset: {dataset.path}: {len(dataset)} images, {R}x{R}, labels {dataset.label_dim}-d")
    p_bank = torch.as_tensor(dataset.labels, device=device)

    # Networks. Parameters start identical on every rank (broadcast below, or loaded from the same file).
    G_kwargs, D_kwargs = generator_kwargs(c, R), discriminator_kwargs(c, R)
    G = Generator(**G_kwargs).train().requires_grad_(False).to(device)
    D = Discriminator(**D_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    if c.init_from is not None and resume_state is None:  # a new run from pretrained weights; counters stay at 0
        init_networks(c.init_from, G, D, G_ema, log=lambda message: _log(rank, message))

    renderer = consistency = None
    if c.cond:
        from training.face_pipeline import build_reconstructor, build_renderer

        if dataset.label_dim != 257:
            raise ValueError(f"the method needs 257-d 3DMM labels, the dataset has {dataset.label_dim}-d")
        renderer = build_renderer(bfm_path, c.render_backend, device)
        if c.lambda_cons > 0:
            consistency = ConsistencyLoss(renderer, build_reconstructor(recon_path, device, c.recon_backbone))
        _log(rank, f"Renderer backend: {renderer.backend}")

    # Optimisers; D's lazy R1 corrects lr and betas so the effective rate matches non-lazy R1 (StyleGAN2).
    mb_ratio = c.d_reg_interval / (c.d_reg_interval + 1)
    opt_G = torch.optim.Adam(G.parameters(), lr=c.glr, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=c.dlr * mb_ratio, betas=(0.0, 0.99**mb_ratio), eps=1e-8)
    # z/p stream seeded apart from torch's global generator, so it never replays weight init or noise numbers.
    rng_seed = int(np.random.SeedSequence([c.seed, rank, 1]).generate_state(1)[0])
    rng = torch.Generator(device=device).manual_seed(rng_seed)

    cur_nimg = cur_tick = batch_idx = 0
    if resume_state is not None:
        state = snapshot.safe_load(resume_state)
        for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema")):
            module.load_state_dict(state[key])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        cur_nimg, cur_tick, batch_idx = state["cur_nimg"], state["cur_tick"] + 1, state["batch_idx"]
        if f"rank{rank}" in state["rng"]:  # same world size: continue every random stream exactly
            rng.set_state(state["rng"][f"rank{rank}"])
            torch.set_rng_state(state["rng"][f"torch_cpu{rank}"])
            if device.type == "cuda" and f"torch_cuda{rank}" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"][f"torch_cuda{rank}"], device)
        _log(rank, f"Resumed from {resume_state} at {cur_nimg / 1000:.1f} kimg")
        if cur_nimg >= int(c.kimg * 1000):
            _log(rank, f"Already trained for {c.kimg} kimg; raise --kimg to continue.")
            return {"cur_nimg": cur_nimg, "cur_tick": cur_tick - 1, "batch_idx": batch_idx}
    for module in (G, D, G_ema):
        distributed.broadcast_module(module)

    stats = StatsCollector(device)
    loss = GANLoss(G, D, stats, r1_gamma=c.gamma, style_mixing_prob=c.style_mixing_prob,
                   consistency=consistency, lambda_cons=c.lambda_cons)
    loader = make_loader(dataset, batch_gpu, rank, world_size, c.seed, start=cur_nimg // world_size,
                         workers=c.workers, pin_memory=device.type == "cuda")

    # Fixed grid: each row keeps p fixed, each column keeps z fixed (noise_mode const).
    gw, gh = grid_size(R)
    grid_gen = torch.Generator().manual_seed(c.seed)
    grid_idx = torch.randint(len(p_bank), [gh], generator=grid_gen)
    grid_z = torch.randn([gw if c.cond else gw * gh, c.z_dim], generator=grid_gen).to(device)
    grid_rep = make_rep(renderer, p_bank[grid_idx.to(device)], R) if c.cond else None
    if rank == 0 and resume_state is None:
        reals = np.stack([dataset[int(i)][0] for i in torch.randint(len(dataset), [gw * gh], generator=grid_gen)])
        save_image_grid(reals, os.path.join(run_dir, "reals.png"), gw, drange=(0, 255))
        if grid_rep is not None:
            save_image_grid(grid_rep[:, :3].repeat_interleave(gw, 0), os.path.join(run_dir, "reps.png"), gw)
        save_image_grid(generate_grid(G_ema, grid_z, grid_rep, batch_gpu), os.path.join(run_dir, "fakes_init.png"), gw)

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(run_dir)
        except ImportError:
            _log(rank, "TensorBoard not installed: writing stats.jsonl only")
    stats_file = open(os.path.join(run_dir, "stats.jsonl"), "a") if rank == 0 else None

    def sample_conditions() -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn([batch_gpu, c.z_dim], device=device, generator=rng)
        if not c.cond:
            return z, None
        p = p_bank[torch.randint(len(p_bank), [batch_gpu], device=device, generator=rng)]
        with torch.no_grad():
            return z, make_rep(renderer, p, R)

    _log(rank, f"Training for {c.kimg} kimg: batch {c.batch} = {world_size} process(es) x {num_rounds} round(s) "
               f"x {batch_gpu}")
    total_nimg = int(c.kimg * 1000)
    tick_start_nimg, tick_start_time, maintenance_time = cur_nimg, time.time(), 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done = cur_nimg >= total_nimg
    while True:
        # Status and snapshot at the end of each tick (tick 0 ends after the first iteration).
        tick_done = done or cur_tick == 0 or cur_nimg >= tick_start_nimg + c.tick_kimg * 1000
        if tick_done and batch_idx > 0:
            tick_end_time = time.time()
            sec_per_tick = tick_end_time - tick_start_time
            sec_per_kimg = sec_per_tick / max(cur_nimg - tick_start_nimg, 1) * 1000
            gpumem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            cpumem = _cpu_memory_gb()
            alpha = blend_alpha(cur_nimg, c.blend_kimg)
            for name, value in (("Progress/tick", cur_tick), ("Progress/kimg", cur_nimg / 1000),
                                ("Progress/alpha", alpha), ("Timing/total_sec", tick_end_time - start_time),
                                ("Timing/sec_per_tick", sec_per_tick), ("Timing/sec_per_kimg", sec_per_kimg),
                                ("Timing/maintenance_sec", maintenance_time), ("Resources/cpu_mem_gb", cpumem),
                                ("Resources/peak_gpu_mem_gb", gpumem)):
                stats.report(name, value)
            tick_stats = stats.collect()  # collective: every rank
            _log(rank, " ".join([
                f"tick {cur_tick:<5d}", f"kimg {cur_nimg / 1000:<8.1f}",
                f"time {format_time(tick_end_time - start_time):<12s}", f"sec/tick {sec_per_tick:<7.1f}",
                f"sec/kimg {sec_per_kimg:<7.2f}", f"maint {maintenance_time:<5.1f}", f"cpumem {cpumem:<5.2f}",
                f"gpumem {gpumem:<5.2f}", f"alpha {alpha:.3f}",
                f"G {tick_stats.get('Loss/G/loss', {}).get('mean', float('nan')):.3f}",
                f"D {tick_stats.get('Loss/D/loss', {}).get('mean', float('nan')):.3f}",
                f"cons {tick_stats.get('Loss/G/consistency', {}).get('mean', float('nan')):.4f}"]))
            if rank == 0:
                stats_file.write(json.dumps(dict(tick_stats, timestamp=time.time())) + "\n")
                stats_file.flush()
                if writer is not None:
                    for name, value in tick_stats.items():
                        writer.add_scalar(name, value["mean"], global_step=int(cur_nimg / 1000),
                                          walltime=tick_end_time - start_time)
                    writer.flush()

            maint_start = time.time()
            if done or cur_tick % c.snap == 0:
                kimg_tag = f"{cur_nimg // 1000:06d}"
                if rank == 0:
                    fakes = generate_grid(G_ema, grid_z, grid_rep, batch_gpu)
                    save_image_grid(fakes, os.path.join(run_dir, f"fakes{kimg_tag}.png"), gw)
                    snapshot.save_network_snapshot(os.path.join(run_dir, f"network-snapshot-{kimg_tag}.pt"),
                                                   G_ema, G_kwargs, c.to_dict(), cur_nimg)
                rng_states = _gather_rng_states(rng, world_size)  # collective
                divergence = max(distributed.max_param_divergence(m) for m in (G, D, G_ema))  # collective
                if divergence > 0:
                    raise RuntimeError(f"replicas diverged across ranks (max |diff| {divergence:g}): a bug")
                if rank == 0:
                    snapshot.save_training_state(
                        os.path.join(run_dir, f"training-state-{kimg_tag}.pt"), G=G, D=D, G_ema=G_ema,
                        opt_G=opt_G, opt_D=opt_D, G_kwargs=G_kwargs, D_kwargs=D_kwargs, config=c.to_dict(),
                        cur_nimg=cur_nimg, cur_tick=cur_tick, batch_idx=batch_idx, rng_states=rng_states)
                if c.metrics:
                    from training.metrics_hook import run_snapshot_metrics

                    run_snapshot_metrics(c, G_ema, dataset, renderer, consistency, recon_path, run_dir, kimg_tag,
                                         device, rank, world_size)
                distributed.barrier()
            cur_tick += 1
            tick_start_nimg, tick_start_time = cur_nimg, time.time()
            maintenance_time = tick_start_time - maint_start
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        if done:
            break

        # One iteration: a real batch shared by the phases, fresh z and p for every phase and round.
        reals = [next(loader)[0].to(device, non_blocking=True).float() / 127.5 - 1 for _ in range(num_rounds)]
        alpha = blend_alpha(cur_nimg, c.blend_kimg)
        phases = [("Gmain", G, opt_G, 1), ("Dmain", D, opt_D, 1)]
        if c.gamma > 0 and batch_idx % c.d_reg_interval == 0:
            phases.append(("Dreg", D, opt_D, c.d_reg_interval))
        for phase, net, opt, gain in phases:
            opt.zero_grad(set_to_none=True)
            net.requires_grad_(True)
            for real in reals:
                z, rep = sample_conditions() if phase != "Dreg" else (None, None)
                loss.accumulate_gradients(phase, real, z, rep, alpha, gain)
            net.requires_grad_(False)
            distributed.average_gradients(net.parameters())
            opt.step()

        # EMA of G (half-life ema_kimg, optional ramp-up in the first images).
        ema_nimg = c.ema_kimg * 1000
        if c.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * c.ema_rampup)
        beta = 0.5 ** (c.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

        cur_nimg += c.batch
        batch_idx += 1
        done = cur_nimg >= total_nimg

    if stats_file is not None:
        stats_file.close()
    if writer is not None:
        writer.close()
    _log(rank, "Exiting...")
    return {"cur_nimg": cur_nimg, "cur_tick": cur_tick, "batch_idx": batch_idx}


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


def _cpu_memory_gb() -> float:
    """Resident memory of this process in GB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return 0.0
