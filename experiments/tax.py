"""The tax of conditioning: every design trained at matched batch and kimg, its quality compared with uncond's.

    python -m experiments.tax --outdir tax-runs --design uncond,method --seeds 0,1,2 --kimg 2   # built-in world

For each (design, seed) it runs train.py (one subprocess; the run lives under <outdir>/runs/<design>-seed<seed>/,
a numbered train.py run directory), then calc_metrics.py on every network snapshot of the run (so the quality
curve against kimg exists) with the first quality metric (default swd2k), on the first and final snapshots also with
the other quality metrics (default rkid2k; plus --fid when --inception is given), and on the final one with cons1k
and ds100 for conditional designs. --jobs N runs N (design, seed) at once, each on its own --gpus GPUs
(CUDA_VISIBLE_DEVICES) or, on the CPU, on cores / N threads, its output in <outdir>/runs/<design>-seed<seed>/
tax-log.txt. Results go to the run's metric-<name>.jsonl, one line per
snapshot: that is the cache. It then writes into --outdir
  tax.md, tax.json   one row per design: mean +- sd over seeds (sd with ddof=1, 0 for one seed) of every metric
                     of the final snapshot, the tax metric(design) - metric(uncond) with the sd of the difference
                     of the two means, sqrt(sd_d^2/n_d + sd_u^2/n_u), and s/kimg (the runs' stats.jsonl)
  tax.png            quality against consistency per design (error bars: sd over seeds), and quality against kimg
These three are the command's own results: they are rewritten each time it is called, as the experiment grows.
Everything else (run directories, the preset it writes) follows torch_utils/outputs.py: nothing is replaced.

Calling it again continues: finished runs (final snapshot present, every metric recorded) are skipped, a run
stopped after a training state is resumed (train.py --resume <run dir>), recorded metrics are not recomputed.
--print-commands prints the train.py / calc_metrics.py commands still to run (for a cluster) and runs nothing.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time

import click

from experiments.tax_table import BASELINE, summarize, write_results
from torch_utils.errors import Command, UserError
from torch_utils.outputs import output_file
from training.designs import DESIGNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COND_METRICS = ("cons1k", "ds100")
RESULT_FILES = ("tax.md", "tax.json", "tax.png")


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    if len(set(items)) != len(items):
        raise UserError(f"--{what} {text} repeats an entry; give each once")
    return items


def parse_seeds(text: str) -> list[int]:
    items = parse_list(text, "seeds")
    try:
        return [int(s) for s in items]
    except ValueError:
        raise UserError(f"--seeds {text} is not a comma-separated list of integers, e.g. 0,1,2") from None


def parse_designs(text: str, seeds: list[int]) -> dict[str, list[int]]:
    """"uncond,method,method-noblend:2" -> {design: its seeds}: all of --seeds, or the first N with `name:N`."""
    out = {}
    for item in parse_list(text, "design"):
        name, _, count = item.partition(":")
        if count and not (count.isdigit() and 1 <= int(count) <= len(seeds)):
            raise UserError(f"--design {item}: after ':' give how many of the {len(seeds)} --seeds it runs, "
                            f"e.g. {name}:2")  # fmt: skip
        if name in out:
            raise UserError(f"--design {text} names {name} twice; give each once")
        out[name] = seeds[: int(count)] if count else list(seeds)
    return out


def metrics_for(design: str, quality: list[str]) -> list[str]:
    """Quality metrics for every design, the 3DMM ones for conditional designs."""
    return quality + (list(COND_METRICS) if DESIGNS[design].conditional else [])


def write_preset(outdir: str, cfg: str, world_count: int | None, data: str | None) -> str:
    """The preset every run trains with: cfg, with the built-in world made world_count images. Returns its path.

    Written once; a second call with other settings is refused (its runs would not match the first's)."""
    path = cfg if cfg.endswith(".json") else os.path.join(ROOT, "configs", f"{cfg}.json")
    if not os.path.isfile(path):
        raise UserError(f"--cfg {cfg}: no such preset or JSON file")
    preset = json.load(open(path, encoding="utf-8"))
    if data is None and "builtin_data" not in preset:
        raise UserError(f"--cfg {cfg} has no built-in data: pass --data")
    if data is None and world_count is not None:
        preset["builtin_data"] = dict(preset["builtin_data"], count=world_count)
    name = f"tax-{os.path.splitext(os.path.basename(path))[0]}.json"
    out = os.path.join(outdir, name)
    text = json.dumps(preset, indent=2, sort_keys=True) + "\n"
    if os.path.isfile(out):
        if open(out, encoding="utf-8").read() != text:
            raise UserError(f"{out} was written with other --cfg/--world-count; use those or another --outdir")
        return out
    os.makedirs(outdir, exist_ok=True)
    with output_file(out, overwrite=False) as f:
        f.write(text.encode())
    return out


class Run:
    """One (design, seed): where train.py puts it and what it has done so far."""

    def __init__(self, outdir: str, design: str, seed: int, kimg: float, metrics: list[str]) -> None:
        self.design, self.seed, self.kimg, self.metrics = design, seed, kimg, metrics
        self.parent = os.path.join(outdir, "runs", f"{design}-seed{seed}")

    @property
    def label(self) -> str:
        return f"{self.design} seed {self.seed}"

    def run_dir(self) -> str | None:
        """The newest numbered run directory with a training state (what --resume continues), else None."""
        dirs = sorted(d for d in glob.glob(os.path.join(self.parent, "[0-9]*-*")) if os.path.isdir(d))
        with_state = [d for d in dirs if glob.glob(os.path.join(d, "training-state-*.pt"))]
        return with_state[-1] if with_state else None

    def snapshots(self) -> list[str]:
        from training.run.snapshot import snapshot_nimg

        run_dir = self.run_dir()
        found = glob.glob(os.path.join(run_dir, "network-snapshot-*.pt")) if run_dir else []
        return sorted(found, key=snapshot_nimg)

    def trained(self) -> bool:
        from training.run.snapshot import snapshot_nimg

        snaps = self.snapshots()
        return bool(snaps) and snapshot_nimg(snaps[-1]) >= round(self.kimg * 1000)

    def recorded(self) -> dict[str, dict[str, dict]]:
        """{snapshot file name: {metric: results}} from the run's metric-<name>.jsonl (metrics.registry's
        `recorded_metrics`: the last line wins, lines older than their snapshot file are left out)."""
        from metrics.registry import recorded_metrics

        run_dir, out = self.run_dir(), {}
        for metric in self.metrics if run_dir else []:
            for snap, results in recorded_metrics(run_dir, metric).items():
                out.setdefault(snap, {})[metric] = results
        return out

    def metrics_of(self, snapshot: str) -> list[str]:
        """What a snapshot is evaluated with: the first quality metric on every one (the curves); the other quality
        metrics on the first and the final one (the table, and the first-vs-last check of each metric); the 3DMM
        metrics (cons, ds) on the final one (the table and the quality-consistency plot read nothing else)."""
        from training.run.snapshot import snapshot_nimg

        final = snapshot_nimg(snapshot) >= round(self.kimg * 1000)
        first = self.snapshots()[:1] == [snapshot]
        quality = [m for m in self.metrics if m not in COND_METRICS]
        return [m for m in self.metrics if final or m == quality[0] or (first and m in quality)]

    def missing_metrics(self) -> dict[str, list[str]]:
        """{snapshot path: metrics not yet recorded for it}."""
        recorded = self.recorded()
        out = {}
        for snap in self.snapshots():
            todo = [m for m in self.metrics_of(snap) if m not in recorded.get(os.path.basename(snap), {})]
            if todo:
                out[snap] = todo
        return out

    def finished(self) -> bool:
        return self.trained() and not self.missing_metrics()

    def sec_per_kimg(self) -> float | None:
        """Mean Timing/sec_per_kimg over the ticks after the first (which holds the start-up), else over all."""
        run_dir = self.run_dir()
        path = os.path.join(run_dir or "", "stats.jsonl")
        if not run_dir or not os.path.isfile(path):
            return None
        values = [json.loads(line).get("Timing/sec_per_kimg", {}).get("mean") for line in open(path) if line.strip()]
        values = [v for v in values if v is not None]
        values = values[1:] or values
        return sum(values) / len(values) if values else None


def train_command(run: Run, preset: str, opts: dict) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "train.py")]
    run_dir = run.run_dir()
    if run_dir is not None:  # stopped after a training state: continue it
        return cmd + ["--resume", run_dir, "--kimg", f"{run.kimg:g}"]
    cmd += ["--cfg", preset, "--outdir", run.parent, "--design", run.design, "--seed", str(run.seed),
            "--kimg", f"{run.kimg:g}", "--gpus", str(opts["gpus"])]  # fmt: skip
    for flag in ("data", "bfm", "recon_ckpt", "device", "batch", "snap"):
        if opts.get(flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(opts[flag])]
    return cmd


def metric_command(snapshot: str, metrics: list[str], opts: dict) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "calc_metrics.py"), "--network", snapshot, "--metrics", ",".join(metrics),
           "--gpus", str(opts["gpus"]), "--workers", str(opts["metric_workers"]), "--quiet"]  # fmt: skip
    for flag in ("inception", "recon_ckpt", "bfm"):
        if opts.get(flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(opts[flag])]
    return cmd


def run_checked(cmd: list[str], what: str, env: dict | None = None, log: str | None = None) -> None:
    """Runs cmd; its output goes to the terminal, or appended to `log`. UserError naming where to look on failure."""
    if log is None:
        result = subprocess.run(cmd, cwd=ROOT, env=env)
    else:
        with open(log, "ab") as f:
            f.write(f"$ {shlex.join(cmd)}\n".encode())
            f.flush()
            result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        where = "its output above" if log is None else log
        raise UserError(f"{what} failed (exit {result.returncode}); see {where}; rerun to continue: "
                        f"{shlex.join(cmd)}")  # fmt: skip


def job_environments(jobs: int, gpus: int, device: str | None) -> list[dict | None]:
    """One environment per job slot: None for one job (the parent's); else CUDA_VISIBLE_DEVICES slices of --gpus
    devices when CUDA is used, or OMP_NUM_THREADS = cores / jobs on the CPU (unless the user set it)."""
    if jobs == 1:
        return [None]
    import torch

    visible = torch.cuda.device_count() if device != "cpu" else 0
    if visible:
        if jobs * gpus > visible:
            raise UserError(f"--jobs {jobs} x --gpus {gpus} needs {jobs * gpus} GPUs, {visible} are visible")
        # slices of the devices the user made visible (their CUDA_VISIBLE_DEVICES names them), else of 0 .. n-1
        names = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()][:visible]
        names = names if len(names) == visible else [str(i) for i in range(visible)]
        return [dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(names[slot * gpus : (slot + 1) * gpus]))
                for slot in range(jobs)]  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    return [dict(os.environ, OMP_NUM_THREADS=threads) for _ in range(jobs)]


def _eta(started: float, done: int, total: int) -> str:
    if done == 0:
        return "ETA unknown"
    left = (time.time() - started) / done * (total - done)
    return f"ETA {int(left // 3600)}h{int(left % 3600 // 60):02d}m{int(left % 60):02d}s"


def run_experiment(opts: dict) -> dict | None:
    """Validates, trains and evaluates what is missing (or prints it), writes the results. Returns tax.json's dict."""
    seeds = parse_seeds(opts["seeds"])
    design_seeds = parse_designs(opts["design"], seeds)
    designs = list(design_seeds)
    unknown = [d for d in designs if d not in DESIGNS]
    if unknown:
        raise UserError(f"unknown design(s) {', '.join(unknown)}; choose from: {', '.join(DESIGNS)}")
    if BASELINE not in designs:
        raise UserError(f"the tax is measured against {BASELINE}: add it to --design (e.g. {BASELINE},method)")
    if not opts["kimg"] > 0:
        raise UserError(f"--kimg must be > 0, got {opts['kimg']:g}")
    quality = parse_list(opts["quality"], "quality")
    if opts.get("inception"):
        quality.append(opts["fid"])
    from metrics.registry import check_metric_names, get_metric

    check_metric_names(quality + list(COND_METRICS))
    bad = [m for m in quality if get_metric(m).needs_reconstructor]
    if bad:
        raise UserError(f"--quality {','.join(bad)} is a 3DMM metric, not image quality; e.g. swd2k,rkid2k")
    if any(get_metric(m).needs_inception for m in quality) and not opts.get("inception"):
        raise UserError(f"--quality {','.join(quality)} needs Inception weights: pass --inception, or use swd2k")
    if opts["world_count"] is not None and opts["world_count"] < 1:
        raise UserError(f"--world-count must be >= 1, got {opts['world_count']}")

    outdir = opts["outdir"]
    preset = write_preset(outdir, opts["cfg"], opts["world_count"], opts.get("data"))
    # seed-major: every design's first seed before any second seed, so an interrupted experiment is balanced
    runs = [Run(outdir, d, s, opts["kimg"], metrics_for(d, quality)) for s in seeds for d in designs
            if s in design_seeds[d]]  # fmt: skip
    if opts["print_commands"]:
        for run in runs:
            if not run.trained():
                print(shlex.join(train_command(run, preset, opts)))
            for snap, todo in run.missing_metrics().items():
                print(shlex.join(metric_command(snap, todo, opts)))
        print(f"# then, for every network-snapshot-*.pt of {os.path.join(outdir, 'runs', '*')}: "
              f"{shlex.join(metric_command('SNAPSHOT', quality, opts))} (+ {','.join(COND_METRICS)} for conditional "
              "designs); and python -m experiments.tax with the same options to write the results")  # fmt: skip
        return None

    started, todo = time.time(), [r for r in runs if not r.finished()]
    envs = job_environments(min(opts.get("jobs", 1), max(1, len(todo))), opts["gpus"], opts.get("device"))
    at_once = f", {len(envs)} at a time (output in each run's tax-log.txt)" if len(envs) > 1 else ""
    print(f"Tax: {len(runs)} run(s), {len(runs) - len(todo)} already finished, {len(todo)} to do{at_once}", flush=True)
    slots, lock, done = queue.SimpleQueue(), threading.Lock(), [0]
    for env in envs:
        slots.put(env)

    def process(i: int, run: Run) -> None:
        env = slots.get()
        try:
            with lock:
                print(f"[run {i}/{len(todo)}] {run.label}: start ({_eta(started, done[0], len(todo))})", flush=True)
            log = None
            if len(envs) > 1:
                os.makedirs(run.parent, exist_ok=True)
                log = os.path.join(run.parent, "tax-log.txt")
            if not run.trained():
                run_checked(train_command(run, preset, opts), f"training {run.label}", env=env, log=log)
            for snap, metrics in run.missing_metrics().items():
                run_checked(metric_command(snap, metrics, opts), f"metrics of {snap}", env=env, log=log)
            with lock:
                done[0] += 1
                print(f"[run {i}/{len(todo)}] {run.label}: done in {run.run_dir()} "
                      f"({_eta(started, done[0], len(todo))})", flush=True)  # fmt: skip
                write_results(outdir, summarize(runs, designs, quality))  # the table grows as runs finish
        finally:
            slots.put(env)

    if len(envs) == 1:
        for i, run in enumerate(todo, 1):
            process(i, run)
    else:
        with concurrent.futures.ThreadPoolExecutor(len(envs)) as pool:
            futures = [pool.submit(process, i, run) for i, run in enumerate(todo, 1)]
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:  # start nothing more; the runs under way end first
                    for other in futures:
                        other.cancel()
                    break
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()
    summary = summarize(runs, designs, quality)
    write_results(outdir, summary)
    print(f"Wrote {', '.join(os.path.join(outdir, f) for f in RESULT_FILES)}", flush=True)
    return summary


@click.command(cls=Command)
@click.option("--outdir", required=True, help="Experiment folder: runs/, tax.md, tax.json, tax.png")
@click.option("--design", default="uncond,method", show_default=True,
              help="Comma-separated designs (with uncond); NAME:N runs only the first N seeds")  # fmt: skip
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds")
@click.option("--kimg", default=2.0, show_default=True, type=float, help="Training length of every run")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(min=1), help="GPUs per run")
@click.option("--cfg", default="smoke", show_default=True, help="Preset name or JSON file (same for every run)")
@click.option("--world-count", default=4096, show_default=True, type=int,
              help="Images of the built-in world (ignored with --data)")  # fmt: skip
@click.option("--data", type=click.Path(exists=True), help="Dataset zip/folder instead of the built-in world")
@click.option("--bfm", type=click.Path(exists=True, dir_okay=False), help="BFM_model_front.mat [preset's]")
@click.option("--recon-ckpt", type=click.Path(exists=True, dir_okay=False), help="FR checkpoint [preset's]")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch of every run [preset]")
@click.option("--snap", type=click.IntRange(min=1), help="Snapshot every this many ticks (each one evaluated) [preset]")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), help="train.py --device [preset]")
@click.option("--quality", default="swd2k,rkid2k", show_default=True, help="Quality metrics, the first one plotted")
@click.option("--inception", type=click.Path(exists=True, dir_okay=False), help="Inception weights: adds --fid")
@click.option("--fid", default="fid50k_full", show_default=True, help="FID metric used with --inception")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs at once (each on --gpus GPUs of its own, or cores/jobs CPU threads)")  # fmt: skip
@click.option("--metric-workers", default=3, show_default=True, type=click.IntRange(min=0), help="Loader workers")
@click.option("--print-commands", is_flag=True, help="Print the commands still to run; run nothing")
def main(**opts) -> None:
    """Train every (design, seed) at matched batch and kimg, evaluate every snapshot, write the tax table."""
    if opts["data"] is not None:
        opts["world_count"] = None
    run_experiment(opts)


if __name__ == "__main__":
    main()
