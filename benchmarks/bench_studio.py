"""Studio responsiveness: the time of one page update (p from the sliders -> G -> uint8 image + rep(p) render).

Loads the snapshot exactly as `generate.py studio` does and times generation.studio_state.Studio.render, the
work behind every slider move, for each noise mode and with the FR re-estimate (FR + a second render). The
web round trip adds gradio's own overhead on top (a few tens of ms on a local socket).

    python benchmarks/bench_studio.py --network network-snapshot-000002.pt [--device cpu] [--iters 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import generate  # noqa: E402
from generation import studio as studio_app  # noqa: E402
from generation import studio_state as st  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    opts = generate.Options(network=args.network, outdir="out/studio-bench", trunc=1.0, noise_mode="const", batch=1,
                            device=args.device, data=None, p_bank=None, bfm=None, render_backend=None,
                            show_rep=False, save_images=False, verbose=False)  # fmt: skip
    s = generate.open_session(opts, "studio", needs_p=False)
    fr = studio_app.fr_factory(s.config, None, s.device, progress=False) if s.G.needs else None
    studio = st.Studio(s.G, s.sampler.renderer, s.bank, s.device, opts.network, opts.outdir, reconstructor=fr)
    face = studio.face_from_bank("seed", 0) if studio.conditional else st.Face(None, "unconditional")
    shown = st.controls_from_p(face.p) if studio.conditional else None
    print(f"{args.network}: {s.G.img_resolution}px, device {s.device}, torch threads {torch.get_num_threads()}")
    # CPU ms: this process's CPU time per update, close to the wall time of an unloaded machine (on CPU).
    print(f"{'update':<24} {'median ms':>10} {'max ms':>8} {'CPU ms':>8}")
    for noise, with_fr in [("const", False), ("random", False), ("none", False), ("const", True)]:
        if with_fr and not studio.has_fr:
            continue
        times, cpu = [], []
        for k in range(args.iters + 1):  # the first call builds FR / warms caches: not counted
            controls = None if shown is None else st.Controls(**{**shown.__dict__, "yaw": shown.yaw + k % 7})
            start, start_cpu = time.perf_counter(), time.process_time()
            studio.render(face, controls, k, 1.0, noise, with_fr)
            if s.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - start))
            cpu.append(1000 * (time.process_time() - start_cpu))
        name = f"{noise} noise" + (" + FR view" if with_fr else "")
        print(f"{name:<24} {statistics.median(times[1:]):>10.1f} {max(times[1:]):>8.1f} "
              f"{statistics.median(cpu[1:]):>8.1f}")


if __name__ == "__main__":
    main()
