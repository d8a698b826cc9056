"""Build the CUDA plugins (bias_act, upfirdn2d) and, optionally, nvdiffrast's; time each build; no GPU needed.

    python benchmarks/cuda_builds.py --archs sm_80 --archs sm_90 --archs sm_80,sm_90      # compile times per arch
    python benchmarks/cuda_builds.py --archs local --archs sm_80,sm_90 --nvdiffrast local  # the GPU run's builds
    python benchmarks/cuda_builds.py --plan-only --archs sm_90 --nvdiffrast sm_90          # what would be built

Each build runs in its own process (torch's extension loader keeps per-process state), --jobs of them at once;
builds are cached by torch_utils.custom_ops (sources + architectures), so a second run reports cache hits in about
a second each. Prints one markdown table; --out writes the same rows as JSON.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere in the repo

PLUGINS = ("bias_act", "upfirdn2d")


def _archs(value: str) -> tuple[str, ...] | None:
    """'local' -> None (the visible GPUs), else a normalised architecture list."""
    from torch_utils import custom_ops

    return None if value == "local" else custom_ops.normalize_archs(value)


def build_one(kind: str, archs_value: str, plan_only: bool = False) -> dict:
    """One build (or its plan) in this process: kind 'bias_act' | 'upfirdn2d' | 'nvdiffrast'. Never raises."""
    import importlib
    import resource

    from torch_utils import custom_ops

    row = dict(plugin=kind, archs=archs_value, seconds=None, cpu_s=None, cached=None, ok=False, detail="")
    start = time.perf_counter()
    try:
        archs = _archs(archs_value)
        if kind == "nvdiffrast":
            from deep3drecon.render import rasterize_nvdiffrast

            if plan_only:
                import nvdiffrast.torch  # noqa: F401 - importable is all a plan checks

                toolkit = custom_ops.find_cuda_toolkit()
                resolved = custom_ops.normalize_archs(archs) if archs else custom_ops.local_archs()
                row.update(ok=True, archs=",".join(resolved), detail=f"would build with {toolkit.describe()}")
                return row
            plugin = rasterize_nvdiffrast.load_plugin(archs)
            row.update(ok=True, detail=f"{plugin.__file__} ({os.path.getsize(plugin.__file__) / 2**20:.1f} MB)")
        else:
            spec = importlib.import_module(f"torch_utils.ops.{kind}").PLUGIN
            plan = custom_ops.plan_build(spec, archs)
            so = plan.build_dir / f"{plan.module_name}.so"
            row.update(archs=",".join(plan.archs), cached=so.is_file())
            if plan_only:
                row.update(ok=True, detail=f"{plan.describe()}; {plan.build_dir}")
                return row
            custom_ops.build_plugin(spec, plan.archs)
            row.update(ok=True, detail=f"{so} ({so.stat().st_size / 2**20:.1f} MB)")
    except BaseException as err:  # noqa: BLE001 - a failed build is a row, not a crash of the whole table
        lines = str(err).strip().splitlines() or [type(err).__name__]
        row["detail"] = f"{type(err).__name__}: {lines[-1][:300]}"
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # ninja, nvcc, gcc: this worker's builds only
        row["cpu_s"] = round(children.ru_utime + children.ru_stime, 1)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| plugin | archs | wall s | compiler CPU s | cached before | ok | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cached = "n/a" if r["cached"] is None else ("yes" if r["cached"] else "no")
        cells = [r["plugin"], r["archs"], r["seconds"], r["cpu_s"], cached, "yes" if r["ok"] else "NO",
                 r["detail"].replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--archs", "archs_list", multiple=True, default=["local"], show_default=True,
              help="One build per value: 'local' (the visible GPUs) or a list such as sm_80,sm_90")  # fmt: skip
@click.option("--plugins", default=",".join(PLUGINS), show_default=True, help="Which of the project's plugins")
@click.option("--nvdiffrast", "nvdiffrast_archs", default=None, help="Also build nvdiffrast's CUDA plugin for these")
@click.option("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 4), show_default=True,
              help="Builds at once (each in its own process; nvcc itself uses several cores)")  # fmt: skip
@click.option("--plan-only", is_flag=True, help="Resolve toolkit, architectures and cache folders; compile nothing")
@click.option("--out", default=None, help="Write the rows as JSON here")
def main(archs_list: tuple[str, ...], plugins: str, nvdiffrast_archs: str | None, jobs: int, plan_only: bool,
         out: str | None) -> None:  # fmt: skip
    """Build, time and tabulate; exit status 1 if any build failed (or, with --plan-only, could not be planned
    for another reason than a missing toolkit)."""
    from torch_utils import custom_ops

    toolkit = custom_ops.toolkit_or_none()
    print(f"toolkit: {toolkit.describe() if toolkit else 'none (the reference ops are used)'}", file=sys.stderr)
    for archs in archs_list:
        if archs != "local":
            _archs(archs)  # a typo fails now, not in a worker
    kinds = [p for p in plugins.split(",") if p]
    unknown = sorted(set(kinds) - set(PLUGINS))
    if unknown:
        raise click.BadParameter(f"unknown plugins {unknown}; choose from {PLUGINS}", param_hint="--plugins")
    jobs_list = [(kind, archs) for archs in archs_list for kind in kinds]
    if nvdiffrast_archs:
        jobs_list.insert(0, ("nvdiffrast", nvdiffrast_archs))  # the longest build starts first
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # fresh interpreter per build: no state shared between builds
    fresh = dict(max_tasks_per_child=1) if sys.version_info >= (3, 11) else {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context, **fresh) as pool:
        rows = list(pool.map(build_one, *zip(*jobs_list), [plan_only] * len(jobs_list)))
    print(markdown(rows))
    print(f"{len(rows)} builds in {time.perf_counter() - start:.0f} s wall ({jobs} at once)", file=sys.stderr)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(dict(rows=rows, toolkit=toolkit.describe() if toolkit else None, jobs=jobs,
                           wall_s=round(time.perf_counter() - start, 1)), f, indent=1)  # fmt: skip
    # A plan without a toolkit is a finding, not a failure (CPU machines without nvcc); a failed build is.
    failed = [r for r in rows if not r["ok"] and not (plan_only and r["detail"].startswith("ToolkitNotFound"))]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
