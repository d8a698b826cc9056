"""The one device check: fused ops, renderer, training speed tax, per-phase cost, metrics, as ONE markdown table.

    python benchmarks/gpu_check.py                          # one CUDA GPU, paper256 at batch 32 (<= 8 min, H100/H200)
    python benchmarks/gpu_check.py --device cpu --quick     # CI: tiny sizes, every row, well under a minute
The table goes to stdout and, with its settings, to --out (JSON); the training loop's own log goes to <out>.log.
All assets are built in a temp dir: a BFM-sized synthetic face model (189^2 = 35,721 vertices, the official .mat
layout), a random-weight ResNet-50 FR in the Deep3DFaceRecon checkpoint layout, a random-weight Inception in
torch-fidelity's layout, and a random-image dataset (throughput does not depend on content). No downloads.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere in the repo

FULL = dict(res=256, mesh_grid=189, render_batches=(8, 64), render_iters=10, batch=32, train_iters=10,
            phase_iters=5, fr_backbone="resnet50", fr_size=224, fid_images=512, ds_sets=8, op_iters=20,
            fr_compile_backend="inductor", overrides={})  # fmt: skip
QUICK = dict(res=16, mesh_grid=17, render_batches=(2, 4), render_iters=1, batch=16, train_iters=0, phase_iters=1,
             fr_backbone="resnet18", fr_size=32, fid_images=2, ds_sets=1, op_iters=1, fr_compile_backend="aot_eager",
             overrides=dict(z_dim=8, w_dim=16, channel_base=128, channel_max=16, num_fp16_res=2, mbstd_group=2,
                            enc_channel_base=64, enc_channel_max=8, enc_feat_channels=2, workers=0))  # fmt: skip
TRAIN_RUNS = (  # (row label, overrides): the plain baseline, the method, the method with the fast paths
    ("uncond", dict(design="uncond")),
    ("method", dict(design="method")),
    ("method + fast paths (channels_last, fused Adam, bf16 FR)",
     dict(design="method", channels_last=True, adam_impl="fused", fr_autocast="bf16")),
    ("method + fast paths + TF32", dict(design="method", channels_last=True, adam_impl="fused", fr_autocast="bf16",
                                        allow_tf32=True)),
)  # fmt: skip


class Table:
    """Rows of (section, item, value, note); printed as one markdown table and saved as JSON.

    With `out`, the JSON (and <out>.md) are rewritten after every row, so a run stopped at its time limit still
    leaves every row it measured.
    """

    def __init__(self, out: str | None = None, meta: dict | None = None) -> None:
        self.rows: list[dict] = []
        self.start = time.perf_counter()
        self.out, self.meta = out, meta or {}

    def add(self, section: str, item: str, value: str, note: str = "") -> None:
        note = note.replace("|", "/")  # a '|' would split the markdown cell
        self.rows.append(dict(section=section, item=item, value=value, note=note))
        elapsed = time.perf_counter() - self.start
        print(f"[gpu_check {elapsed:5.0f} s] {section} | {item} | {value}", file=sys.stderr, flush=True)
        if self.out is not None:
            with open(self.out, "w") as f:
                json.dump(dict(rows=self.rows, **self.meta), f, indent=1)
            with open(os.path.splitext(self.out)[0] + ".md", "w") as f:
                f.write(self.markdown() + "\n")

    def markdown(self) -> str:
        lines = ["| section | item | value | note |", "|---|---|---|---|"]
        lines += [f"| {r['section']} | {r['item']} | {r['value']} | {r['note']} |" for r in self.rows]
        return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 1) -> float:
    """Mean wall time of fn() in seconds after `warmup` calls, with device synchronisation around the timed span."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / max(iters, 1)


# ---------------------------------------------------------------------------------------------------------------
# Assets.


def build_assets(tmp: str, s: dict) -> dict[str, str]:
    """Face model .mat (grid^2 vertices), FR checkpoint, random dataset zip; returns their paths."""
    from benchmarks.bench_training import _random_dataset
    from deep3drecon.recon_net import ReconNet, save_recon_net
    from deep3drecon.synthetic import write_synthetic_mat

    paths = dict(bfm=os.path.join(tmp, "face_model.mat"), fr=os.path.join(tmp, "fr.pth"),
                 data=os.path.join(tmp, "data.zip"))  # fmt: skip
    write_synthetic_mat(paths["bfm"], seed=0, grid=s["mesh_grid"])
    torch.manual_seed(0)
    net = ReconNet(s["fr_backbone"], input_size=s["fr_size"])
    for head in net.final_layers:  # non-zero heads, so gradients through FR are not trivially zero
        torch.nn.init.normal_(head.weight, std=0.01)
    save_recon_net(net, paths["fr"])
    _random_dataset(paths["data"], s["res"], num=max(2 * s["batch"], 16))
    return paths


def random_inception_path(tmp: str) -> str:
    """A random-weight state dict in torch-fidelity's Inception layout (built without loading any weights)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3 as Inception

    dummy, path = os.path.join(tmp, "empty.pth"), os.path.join(tmp, "inception_random.pth")
    torch.save({}, dummy)
    original = Inception.load_state_dict
    Inception.load_state_dict = lambda self, state_dict, strict=True: None  # keep the random init
    try:
        torch.manual_seed(0)
        state = Inception("random", ["2048"], feature_extractor_weights_path=dummy).state_dict()
    finally:
        Inception.load_state_dict = original
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Sections.


def check_environment(table: Table, device: torch.device) -> None:
    from deep3drecon.render import available_backends
    from torch_utils.ops import bias_act, upfirdn2d

    cpu = f"none (CPU {platform.machine()}, {os.cpu_count()} cores)"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    table.add("env", "device", gpu)
    table.add("env", "torch / CUDA / cuDNN", f"{torch.__version__} / {torch.version.cuda} / "
              f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'n/a'}")  # fmt: skip
    for name, op in (("bias_act", bias_act), ("upfirdn2d", upfirdn2d)):
        start = time.perf_counter()
        path = "ref (no CUDA)" if device.type != "cuda" else ("cuda (fused)" if op._plugin() is not None else "ref")
        table.add("env", f"{name} path", path, f"plugin load {time.perf_counter() - start:.1f} s")
    from torch_utils import custom_ops

    toolkit = custom_ops.toolkit_or_none()
    table.add("env", "CUDA toolkit", toolkit.describe() if toolkit else "none found (reference ops)")
    table.add("env", "renderer backends", ", ".join(available_backends()))
    table.add("env", "CPU threads", str(torch.get_num_threads()), "numbers under load are not comparable")


def check_ops(table: Table, device: torch.device, s: dict) -> None:
    """Fused bias_act / upfirdn2d against the reference: max |difference| and fwd+bwd time ratio ref / fused."""
    from torch_utils.ops import bias_act, upfirdn2d

    cases = {
        "bias_act lrelu+clamp": lambda x, impl: bias_act.bias_act(x, bias, act="lrelu", clamp=256, impl=impl),
        "upfirdn2d upsample2d": lambda x, impl: upfirdn2d.upsample2d(x, filt, impl=impl),
    }
    fused_ok = device.type == "cuda" and bias_act._plugin() is not None and upfirdn2d._plugin() is not None
    shape = (s["batch"], 128, 64, 64) if s is FULL else (2, 4, 8, 8)
    bias = torch.randn(shape[1], device=device)
    filt = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    for name, fn in cases.items():
        if not fused_ok:
            why = "n/a (no CUDA)" if device.type != "cuda" else "n/a (plugin did not build)"
            table.add("ops", f"{name} max error", why)
            table.add("ops", f"{name} fwd+bwd ref/fused", why)
            continue
        x = torch.randn(shape, device=device, requires_grad=True)
        err = (fn(x, "cuda") - fn(x, "ref")).abs().max().item()
        times = {impl: seconds_per_call(lambda impl=impl, fn=fn, x=x: fn(x, impl).sum().backward(), device,
                                        s["op_iters"]) for impl in ("ref", "cuda")}  # fmt: skip
        table.add("ops", f"{name} max error", f"{err:.2e}", f"fp32 {list(shape)}")
        table.add("ops", f"{name} fwd+bwd ref/fused", f"{times['ref'] / times['cuda']:.2f}x",
                  f"fused {times['cuda'] * 1e3:.2f} ms")  # fmt: skip


def check_renderer(table: Table, device: torch.device, s: dict, bfm: str) -> None:
    """rep(p) renders/s at the training resolution, forward and forward+backward, per backend and batch."""
    from deep3drecon.face_model import FaceModel
    from deep3drecon.render import Renderer
    from deep3drecon.render.rasterize_nvdiffrast import is_available as nvdiffrast_available
    from training.rep import make_rep

    model = FaceModel.from_mat(bfm)
    backends = ["torch"] + (["nvdiffrast"] if device.type == "cuda" and nvdiffrast_available() else [])
    mesh = f"{s['mesh_grid'] ** 2} vertices"
    for backend in backends:
        renderer = Renderer(model, backend=backend).to(device)
        for batch in s["render_batches"]:
            coeffs = torch.zeros(batch, 257, device=device)
            coeffs[:, :80] = torch.randn(batch, 80, device=device) * 0.5

            def forward(renderer=renderer, coeffs=coeffs) -> None:
                with torch.no_grad():
                    make_rep(renderer, coeffs, s["res"])

            def forward_backward(renderer=renderer, coeffs=coeffs) -> None:
                c = coeffs.clone().requires_grad_(True)
                make_rep(renderer, c, s["res"]).square().mean().backward()

            for mode, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
                rate = batch / seconds_per_call(fn, device, s["render_iters"])
                table.add("renderer", f"{backend} {s['res']}px batch {batch} {mode}", f"{rate:.0f} renders/s", mesh)
    if "nvdiffrast" not in backends:
        table.add("renderer", "nvdiffrast", "n/a (not importable or no CUDA)")


def run_training(device: torch.device, s: dict, paths: dict, overrides: dict, tmp: str, log) -> dict:
    """The real training loop for 1 + train_iters iterations (one tick each); median of the measured ticks."""
    from training.config import resolve_config
    from training.resolve import resolve_run
    from training.training_loop import training_loop

    values = dict(s["overrides"], batch=s["batch"], batch_gpu=s["batch"], data=paths["data"], bfm=paths["bfm"],
                  recon_ckpt=paths["fr"], device=device.type, metrics=[], **overrides)  # fmt: skip
    config = resolve_config("paper256", values)
    config.tick_kimg = (config.batch - 0.5) / 1000  # one tick per iteration (robust to float rounding)
    config.kimg = config.batch * (s["train_iters"] + 1) / 1000
    config.snap = 10**9
    run_dir = tempfile.mkdtemp(dir=tmp, prefix="run-")
    with contextlib.redirect_stdout(log):
        training_loop(config, run_dir, device, *resolve_run(config))
    ticks = [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))]
    ticks = ticks[1:] or ticks  # drop the warm-up tick (cuDNN autotuning, allocations)
    median = lambda key: float(np.median([t[key]["mean"] for t in ticks]))
    return dict(sec_per_kimg=median("Timing/sec_per_kimg"), wait_frac=median("Timing/loader_wait_frac"),
                peak_gb=max(t["Resources/peak_gpu_mem_gb"]["mean"] for t in ticks))  # fmt: skip


def check_training(table: Table, device: torch.device, s: dict, paths: dict, tmp: str, log) -> None:
    results = {}
    for label, overrides in TRAIN_RUNS:
        r = results[label] = run_training(device, s, paths, overrides, tmp, log)
        mem = f"{r['peak_gb']:.2f} GB" if device.type == "cuda" else "n/a (CPU)"
        table.add("training", f"paper256 {label} sec/kimg", f"{r['sec_per_kimg']:.2f}",
                  f"{1000 / r['sec_per_kimg']:.1f} images/s, peak {mem}, loader wait {100 * r['wait_frac']:.0f}%, "
                  f"batch {s['batch']} R {s['res']}")  # fmt: skip
    base = results["uncond"]["sec_per_kimg"]
    for label, _ in TRAIN_RUNS[1:]:
        table.add("training", f"speed tax {label} / uncond", f"{results[label]['sec_per_kimg'] / base:.2f}x",
                  "target <= 1.15x on one H100/H200")  # fmt: skip


def check_phases(table: Table, device: torch.device, s: dict, paths: dict) -> dict:
    """ms per call of each piece of an iteration at batch s['batch'], timed in isolation with synchronisation."""
    from torch_utils.training_stats import StatsCollector
    from training.condition import Condition
    from training.config import resolve_config
    from training.consistency import ConsistencyLoss
    from training.discriminator import Discriminator
    from training.loss import GANLoss
    from training.networks import Generator
    from training.networks_config import discriminator_kwargs, generator_kwargs
    from training.rep import make_rep, rep_render
    from training.resolve import build_reconstructor, build_renderer
    from training.run import fast_paths

    fast_paths.set_tf32(False)  # the plain numerics (a training run above may have turned TF32 on)
    config = resolve_config("paper256", dict(s["overrides"], batch=s["batch"], data=paths["data"], bfm=paths["bfm"],
                                             recon_ckpt=paths["fr"], device=device.type))
    R, n, it = s["res"], s["batch"], s["phase_iters"]
    G = Generator(**generator_kwargs(config, R)).train().to(device)
    D = Discriminator(**discriminator_kwargs(config, R)).train().to(device)
    G_ema = Generator(**generator_kwargs(config, R)).eval().to(device)
    renderer = build_renderer(paths["bfm"], "auto", device)
    fr = build_reconstructor(paths["fr"], device)
    consistency = ConsistencyLoss(renderer, fr)
    loss = GANLoss(G, D, StatsCollector(device), r1_gamma=1.0, consistency=consistency)
    opt_G = fast_paths.make_adam(G.parameters(), 0.0025, (0.0, 0.99))
    opt_D = fast_paths.make_adam(D.parameters(), 0.0025, (0.0, 0.99), reg_interval=16)
    p = torch.zeros(n, 257, device=device)
    p[:, :80] = torch.randn(n, 80, device=device) * 0.5
    z = torch.randn(n, config.z_dim, device=device)
    real = torch.rand(n, 3, R, R, device=device) * 2 - 1
    with torch.no_grad():
        cond = Condition(p, make_rep(renderer, p, R))  # rep(p) rendered once: the phases below time G, not rendering
        rep = cond.rep
        fake = G(z, cond)

    def fr_step(mode: str, module: torch.nn.Module = fr) -> torch.Tensor:
        x = (0.7 * fake + 0.3 * rep_render(rep)).requires_grad_(True)
        with fast_paths.fr_autocast(device, mode):
            coeffs = module(x)
        coeffs.float().square().sum().backward()
        return x.grad

    def render_hat() -> None:
        c = p.clone().requires_grad_(True)
        make_rep(renderer, c, R).square().mean().backward()

    def r1() -> None:
        D.requires_grad_(True)
        loss.accumulate_gradients("Dreg", real, None, None, None, 16, 0)

    def optimizers() -> None:
        opt_G.step()
        opt_D.step()

    def ema() -> None:
        with torch.no_grad():
            for pe, pg in zip(G_ema.parameters(), G.parameters()):
                pe.copy_(pg.detach().lerp(pe, 0.998))

    G.requires_grad_(True)
    D.requires_grad_(True)
    phases = [  # (name, fn, uses per iteration)
        ("render rep(p) (no grad)", lambda: make_rep(renderer, p, R).sum().item(), "2 (Gmain, Dmain)"),
        ("E forward+backward", lambda: sum(f.sum() for f in G.synthesis.injected_features(cond)).backward(),
         "1 (+1 fwd in Dmain)"),
        ("G(z, cond) forward+backward (E included)", lambda: G(z, cond).square().mean().backward(),
         "1 (+1 fwd in Dmain)"),
        ("D forward+backward", lambda: D(fake).sum().backward(), "3 (fake, fake, real)"),
        ("FR forward+backward (fp32)", lambda: fr_step("off"), "1"),
        ("render rep(FR(x)) forward+backward", render_hat, "1"),
        ("R1 (D double backward)", r1, "1/16"),
        ("optimizer steps G + D", optimizers, "1"),
        ("EMA", ema, "1"),
    ]  # fmt: skip
    for p_ in list(G.parameters()) + list(D.parameters()):
        p_.grad = torch.zeros_like(p_)
    for name, fn, uses in phases:
        ms = seconds_per_call(fn, device, it) * 1e3
        table.add("phases", name, f"{ms:.2f} ms", f"batch {n}, uses/iteration {uses}")
    return dict(G=G_ema, renderer=renderer, fr=fr, fr_step=fr_step, config=config)


def check_fr_paths(table: Table, device: torch.device, s: dict, ctx: dict, skip_compile: bool) -> None:
    """FR forward+backward under autocast and compiled: time and agreement of d/dx with the fp32 eager path."""
    from training.run import fast_paths

    fr_step, fr, it = ctx["fr_step"], ctx["fr"], s["phase_iters"]
    base_ms = seconds_per_call(lambda: fr_step("off"), device, it) * 1e3
    ref = fr_step("off")
    for mode in ("bf16", "fp16"):
        ms = seconds_per_call(lambda mode=mode: fr_step(mode), device, it) * 1e3
        cos = torch.nn.functional.cosine_similarity(fr_step(mode).flatten().float(), ref.flatten(), dim=0).item()
        table.add("fast paths", f"FR fwd+bwd {mode} autocast", f"{ms:.2f} ms", f"fp32 {base_ms:.2f} ms; "
                  f"grad cosine vs fp32 {cos:.4f}")  # fmt: skip
    if skip_compile or s is QUICK:
        why = "--skip-compile" if skip_compile else "--quick; tests/training/test_fast_paths.py checks its numerics"
        table.add("fast paths", "FR fwd+bwd compiled", f"skipped ({why})")
        return
    start = time.perf_counter()
    compiled = fast_paths.compile_module(fr, s["fr_compile_backend"])
    grad = fr_step("off", compiled)
    _sync(device)
    compile_s = time.perf_counter() - start
    ms = seconds_per_call(lambda: fr_step("off", compiled), device, it) * 1e3
    err = (grad - ref).abs().max().item()
    table.add("fast paths", f"FR fwd+bwd compiled ({s['fr_compile_backend']})", f"{ms:.2f} ms",
              f"eager {base_ms:.2f} ms; compile {compile_s:.0f} s; max abs grad diff {err:.1e}")  # fmt: skip


def check_metrics(table: Table, device: torch.device, s: dict, ctx: dict, paths: dict, tmp: str) -> None:
    """fid images/s (G_ema + random-weight Inception) and ds sets/s (G_ema + FR), at the training batch."""
    from metrics.context import build_context
    from metrics.disentanglement import accumulate_ds_spreads
    from metrics.ds_variants import DS_VARIANTS
    from metrics.feature_stats import compute_generator_stats
    from metrics.features import InceptionV3Features
    from training.dataset import ImageLabelDataset

    dataset = ImageLabelDataset(paths["data"])
    extractor = InceptionV3Features(random_inception_path(tmp), device=device)
    mctx = build_context(ctx["G"], dataset, device=device, renderer=ctx["renderer"], reconstructor=ctx["fr"],
                         batch_size=s["batch"], num_workers=0)  # fmt: skip
    compute_generator_stats(mctx, extractor, min(s["fid_images"], s["batch"]))  # warm-up
    mctx.memo.clear()  # the metrics memoise generated features per (count, seed): time a fresh pass

    def fid_pass() -> None:
        mctx.memo.clear()
        compute_generator_stats(mctx, extractor, s["fid_images"])

    sec = seconds_per_call(fid_pass, device, 1, warmup=0)
    table.add("metrics", "fid: generated images/s", f"{s['fid_images'] / sec:.1f}",
              f"G_ema + Inception (random weights, torch-fidelity layout), {s['fid_images']} images")  # fmt: skip
    sec = seconds_per_call(lambda: accumulate_ds_spreads(mctx, s["ds_sets"], 10), device, 1)
    sets = s["ds_sets"] * len(DS_VARIANTS["paper"].factors)
    table.add("metrics", "ds: sets/s (10 samples each)", f"{sets / sec:.2f}", f"{sets} sets, G_ema + FR")


@click.command()
@click.option("--device", "device_name", default="auto", type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--quick", is_flag=True, help="Tiny sizes and one measured iteration (CI)")
@click.option("--out", default="out/gpu_check.json", show_default=True, help="JSON output (log: <out>.log)")
@click.option("--skip-training", is_flag=True, help="Leave out the training runs (the longest section)")
@click.option("--skip-compile", is_flag=True, help="Leave out the torch.compile FR row")
def main(device_name: str, quick: bool, out: str, skip_training: bool, skip_compile: bool) -> None:
    """Run every section and print one markdown table."""
    from torch_utils.misc import pick_device

    device = pick_device(device_name)
    s = QUICK if quick else FULL
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = dict(quick=quick, device=str(device), settings={k: v for k, v in s.items() if k != "overrides"})
    table, start = Table(out, meta), time.perf_counter()

    def section(name: str, fn: Callable, *args):
        """Run one section; a failure becomes a row (and a traceback in the log), and the next section runs."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the rest of a device loan
            import traceback

            traceback.print_exc()
            table.add(name, "FAILED", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}")
            return None

    with tempfile.TemporaryDirectory() as tmp, open(os.path.splitext(out)[0] + ".log", "w") as log:
        check_environment(table, device)
        paths = build_assets(tmp, s)
        section("ops", check_ops, table, device, s)
        section("renderer", check_renderer, table, device, s, paths["bfm"])
        if skip_training:
            table.add("training", "paper256 runs", "skipped (--skip-training)")
        else:
            section("training", check_training, table, device, s, paths, tmp, log)
        ctx = section("phases", check_phases, table, device, s, paths)
        if ctx is not None:
            section("fast paths", check_fr_paths, table, device, s, ctx, skip_compile)
            section("metrics", check_metrics, table, device, s, ctx, paths, tmp)
    table.add("env", "gpu_check wall time", f"{time.perf_counter() - start:.0f} s", "quick" if quick else "full")
    print(table.markdown())


if __name__ == "__main__":
    main()
