"""What a run reports once per tick: the status line, stats.jsonl and TensorBoard scalars (rank 0 writes).

Every rank calls `TickReporter.tick` at the same point of the loop, because collecting the statistics is a
collective (an all-reduce over ranks); only rank 0 prints and writes. TensorBoard's step is the image count
(unique per tick). A resumed run first drops what the interrupted one logged after its training state was saved
(stats.jsonl rows and TensorBoard events past that image count), so every tick appears once.

Loader wait: the seconds the loop spent blocked on `next(loader)` during the tick (`wait` in the status line,
`Timing/loader_wait_sec` and its share of the tick, `Timing/loader_wait_frac`, in stats.jsonl). Near 0 means the
data loader keeps up; a large share means the step is starved (raise --workers or use a faster disk).

ETA: the images still to train times the recent wall time per image (`eta` in the status line, `Timing/eta_sec`).
Recent = the last ETA_TICKS ticks, snapshot time included (snapshots recur, so they belong in the estimate); the first
tick this process reports is left out once there is another, because it carries the start-up (CUDA context, kernel
builds, loader warm-up).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque

import torch

from torch_utils.misc import format_time
from torch_utils.training_stats import StatsCollector

ETA_TICKS = 3  # ticks averaged for the ETA's seconds per image


def cpu_memory_gb() -> float:
    """Resident memory of this process in GB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return 0.0


def truncate_stats(path: str, last_tick: int) -> None:
    """Drop the stats.jsonl rows of ticks after `last_tick` (written by a run that was then interrupted).

    By tick number, which the float32 statistics hold exactly (a kimg value there can be a few images off).

    Rewritten through a temp file and a rename, so a crash here never loses the rows that are kept.
    """
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            tick = json.loads(line).get("Progress/tick", {}).get("mean")
        except (json.JSONDecodeError, AttributeError):
            continue  # a row cut short by the kill
        if tick is None or round(tick) <= last_tick:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) == len(lines):
        return
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))  # cleaned up if killed here
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


class TickReporter:
    """Summarises a tick's statistics into one status line, a stats.jsonl row and TensorBoard scalars."""

    def __init__(self, run_dir: str, stats: StatsCollector, device: torch.device, rank: int,
                 resume_point: tuple[int, int] | None = None) -> None:  # fmt: skip
        """resume_point: (images, tick) of the training state a resumed run starts from; None for a new run."""
        self.stats, self.device, self.rank = stats, device, rank
        self.loader_wait = 0.0  # seconds blocked on the data loader since the last tick
        self.startup_tick: tuple[float, int] | None = None  # (wall seconds, images) of the first tick reported
        self.recent: deque[tuple[float, int]] = deque(maxlen=ETA_TICKS)  # the same for the ticks after it
        self.writer = self.stats_file = None
        if rank == 0:
            if resume_point is not None:
                truncate_stats(os.path.join(run_dir, "stats.jsonl"), resume_point[1])
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_point is None else resume_point[0] + 1  # hides events logged after it
                self.writer = SummaryWriter(run_dir, purge_step=purge)
            except ImportError:
                print("TensorBoard not installed: writing stats.jsonl only", flush=True)
            self.stats_file = open(os.path.join(run_dir, "stats.jsonl"), "a")

    def add_loader_wait(self, seconds: float) -> None:
        """Add time the training step spent waiting for a batch (summed until the next tick)."""
        self.loader_wait += seconds

    def eta_sec(self, sec: float, nimg: int, remaining_nimg: int) -> float:
        """Seconds left: remaining_nimg (>= 0) x the recent seconds per image, after adding this tick (sec, nimg)."""
        if self.startup_tick is None:
            self.startup_tick = (sec, nimg)
        else:
            self.recent.append((sec, nimg))
        window = self.recent or [self.startup_tick]
        done = sum(n for _, n in window)
        return max(remaining_nimg, 0) * sum(s for s, _ in window) / done if done > 0 else 0.0

    def tick(self, *, cur_tick: int, cur_nimg: int, tick_start_nimg: int, tick_start_time: float, start_time: float,
             maintenance_time: float, total_nimg: int | None = None) -> dict[str, dict[str, float]]:
        """Report one finished tick (collective: every rank calls it); returns the tick's statistics.

        total_nimg: the run's length in images, for the ETA (left out when None).
        """
        tick_end_time = time.time()
        sec_per_tick = tick_end_time - tick_start_time
        sec_per_kimg = sec_per_tick / max(cur_nimg - tick_start_nimg, 1) * 1000
        gpumem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0
        cpumem = cpu_memory_gb()
        loader_wait, self.loader_wait = self.loader_wait, 0.0
        timings = []
        if total_nimg is not None:
            wall = sec_per_tick + maintenance_time  # the snapshot after the last tick belongs to this interval
            timings.append(("Timing/eta_sec", self.eta_sec(wall, cur_nimg - tick_start_nimg, total_nimg - cur_nimg)))
        for name, value in (("Progress/tick", cur_tick), ("Progress/kimg", cur_nimg / 1000),
                            ("Timing/total_sec", tick_end_time - start_time),
                            ("Timing/sec_per_tick", sec_per_tick), ("Timing/sec_per_kimg", sec_per_kimg),
                            ("Timing/maintenance_sec", maintenance_time), ("Resources/cpu_mem_gb", cpumem),
                            ("Resources/peak_gpu_mem_gb", gpumem), ("Timing/loader_wait_sec", loader_wait),
                            ("Timing/loader_wait_frac", loader_wait / max(sec_per_tick, 1e-9)), *timings):  # fmt: skip
            self.stats.report(name, value)
        tick_stats = self.stats.collect()  # collective: every rank
        if self.rank != 0:
            return tick_stats
        mean = lambda name: tick_stats.get(name, {}).get("mean", float("nan"))
        # Terms a design does not compute (alpha and cons without a consistency loss) are left out, not shown as nan.
        optional = [f"{label} {mean(name):{fmt}}" for label, name, fmt in (
            ("alpha", "Progress/alpha", ".3f"), ("cons", "Loss/G/consistency", ".4f")) if name in tick_stats]
        eta = [f"eta {format_time(mean('Timing/eta_sec')):<12s}"] if "Timing/eta_sec" in tick_stats else []
        print(" ".join([
            f"tick {cur_tick:<5d}", f"kimg {cur_nimg / 1000:<8.1f}",
            f"time {format_time(tick_end_time - start_time):<12s}", f"sec/tick {sec_per_tick:<7.1f}",
            f"sec/kimg {sec_per_kimg:<7.2f}", *eta, f"maint {maintenance_time:<5.1f}", f"wait {loader_wait:<5.1f}",
            f"cpumem {cpumem:<5.2f}", f"gpumem {gpumem:<5.2f}", f"G {mean('Loss/G/loss'):.3f}",
            f"D {mean('Loss/D/loss'):.3f}", *optional]), flush=True)  # fmt: skip
        self.stats_file.write(json.dumps(dict(tick_stats, timestamp=time.time())) + "\n")
        self.stats_file.flush()
        if self.writer is not None:
            for name, value in tick_stats.items():
                self.writer.add_scalar(name, value["mean"], global_step=cur_nimg,
                                       walltime=tick_end_time - start_time)  # fmt: skip
            self.writer.flush()
        return tick_stats

    def close(self) -> None:
        """Close stats.jsonl and the TensorBoard writer."""
        if self.stats_file is not None:
            self.stats_file.close()
        if self.writer is not None:
            self.writer.close()
