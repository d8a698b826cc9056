"""The tax table: per-design statistics of the runs' recorded metrics (summarize), tax.md (format_markdown with the
sensitivity table), and writing tax.md / tax.json / tax.png. The experiment driver is experiments/tax.py."""

from __future__ import annotations

import json
import math
import os
from typing import Protocol

from torch_utils.outputs import output_file


class Run(Protocol):
    """What the table reads of a run (experiments.tax.Run): its identity, files and recorded metrics."""

    design: str
    seed: int
    kimg: float
    metrics: list[str]

    def run_dir(self) -> str | None: ...
    def snapshots(self) -> list[str]: ...
    def trained(self) -> bool: ...
    def recorded(self) -> dict[str, dict[str, dict]]: ...
    def sec_per_kimg(self) -> float | None: ...

BASELINE = "uncond"


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def snapshot_results(run: Run, which: int = -1) -> dict[str, float]:
    """Every numeric result key of the run's final (which=-1) or first (0) snapshot, over all its metrics."""
    snaps = run.snapshots()
    recorded = run.recorded().get(os.path.basename(snaps[which]), {}) if snaps else {}
    return {k: float(v) for m in run.metrics for k, v in recorded.get(m, {}).items() if isinstance(v, (int, float))}


def _stats(values: list[dict[str, float]]) -> dict[str, dict]:
    """{key: {mean, sd, n}} over the runs' {key: value} dicts (a key counts the runs that have it)."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    return {k: dict(zip(("mean", "sd", "n"), (*mean_sd([v[k] for v in values if k in v]),
                                              sum(k in v for v in values)))) for k in keys}  # fmt: skip


def shown(key: str) -> bool:
    """Keys in tax.md (tax.json keeps all): not the real-vs-real floors nor ds's sigma matrix entries."""
    return "floor" not in key and not key.startswith("sigma_")


def quality_key(quality: list[str], runs: list[Run]) -> str:
    """The curve's metric: the first quality metric's own key (swd2k's 'swd2k', ...), else its first key."""
    for run in runs:
        for results in run.recorded().values():
            if quality[0] in results:
                keys = [k for k in results[quality[0]] if shown(k)]
                return next((k for k in keys if k == quality[0] or k.endswith("_avg")), keys[0])
    return quality[0]


def summarize(runs: list[Run], designs: list[str], quality: list[str]) -> dict:
    """tax.json's content (see the module docstring) from the runs' recorded metrics and stats."""
    from training.run.snapshot import snapshot_nimg

    qkey = quality_key(quality, runs)
    per_run = [{"design": r.design, "seed": r.seed, "run_dir": r.run_dir(), "kimg": r.kimg,
                "final_snapshot": os.path.basename(r.snapshots()[-1]) if r.snapshots() else None,
                "first_snapshot": os.path.basename(r.snapshots()[0]) if r.snapshots() else None,
                "metrics": snapshot_results(r) if r.trained() else {},  # a run under way has no final snapshot yet
                "first_metrics": snapshot_results(r, 0) if r.trained() else {},
                "sec_per_kimg": r.sec_per_kimg()} for r in runs]  # fmt: skip
    rows = {}
    for design in designs:
        mine = [p for p in per_run if p["design"] == design and p["metrics"]]
        speed = [p["sec_per_kimg"] for p in per_run if p["design"] == design and p["sec_per_kimg"] is not None]
        rows[design] = {"n": len(mine), "metrics": _stats([p["metrics"] for p in mine]),
                        "first": _stats([p["first_metrics"] for p in mine]),
                        "sec_per_kimg": dict(zip(("mean", "sd"), mean_sd(speed))) if speed else None}  # fmt: skip
    base = rows.get(BASELINE, {"metrics": {}})["metrics"]
    for row in rows.values():
        row["tax"] = {k: {"value": s["mean"] - base[k]["mean"],
                          "sd": math.sqrt(s["sd"] ** 2 / s["n"] + base[k]["sd"] ** 2 / base[k]["n"])}
                      for k, s in row["metrics"].items() if k in base}  # fmt: skip
    curves: dict[str, dict[str, list]] = {}
    for r in runs:
        recorded = r.recorded()
        points = [[snapshot_nimg(s) / 1000, recorded[os.path.basename(s)][quality[0]][qkey]] for s in r.snapshots()
                  if qkey in recorded.get(os.path.basename(s), {}).get(quality[0], {})]  # fmt: skip
        curves.setdefault(r.design, {})[str(r.seed)] = points
    return {"baseline": BASELINE, "quality_key": qkey, "quality_metrics": quality,
            "sd": "sd over seeds (ddof=1, 0 for one seed); tax sd = sqrt(sd_d^2/n_d + sd_u^2/n_u), the sd of the "
                  "difference of the two means",  # fmt: skip
            "designs": rows, "runs": per_run, "curves": curves}


def _pm(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean' if 'mean' in stat else 'value']:.{digits}g} +- {stat['sd']:.2g}"


def format_markdown(summary: dict) -> str:
    """tax.md: one row per design; metric columns (mean +- sd), tax columns, s/kimg."""
    rows = summary["designs"]
    keys = list(dict.fromkeys(k for row in rows.values() for k in row["metrics"] if shown(k)))
    tax_keys = list(dict.fromkeys(k for row in rows.values() for k in row["tax"] if shown(k)))
    head = ["design", "n"] + keys + [f"tax {k}" for k in tax_keys] + ["s/kimg"]
    lines = ["# Tax of conditioning", "",
             f"Final snapshot of each run; mean +- sd over seeds. Tax = metric(design) - metric({summary['baseline']})"
             " +- sqrt(sd_d^2/n_d + sd_u^2/n_u) (the sd of the difference of the two means). "
             "Floors and ds sigma entries: tax.json. This file is rewritten by every call of "
             "`python -m experiments.tax`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for design, row in rows.items():
        cells = [design, str(row["n"])] + [_pm(row["metrics"].get(k)) for k in keys]
        cells += [_pm(row["tax"].get(k)) for k in tax_keys] + [_pm(row["sec_per_kimg"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + sensitivity_lines(summary)) + "\n"


def sensitivity_lines(summary: dict) -> list[str]:
    """tax.md's second table: per quality key, the baseline's first and final snapshot (mean +- sd over seeds), how
    many seed sd apart they are (|difference| / the larger sd), and the real-vs-real floor at the same count."""
    row = summary["designs"].get(summary["baseline"])
    if not row or not row["first"]:
        return []
    lines = ["", f"Sensitivity: {summary['baseline']}'s first snapshot against its final one (the metric must separate"
             " them by far more than the seed spread), and the real-vs-real floor (two disjoint real draws of the"
             " same count: the value of a perfect generator).", "",
             "| key | first snapshot | final snapshot | separation (seed sd) | floor |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key, first in row["first"].items():
        final = row["metrics"].get(key)
        if not shown(key) or final is None:
            continue
        spread = max(first["sd"], final["sd"])
        apart = f"{abs(first['mean'] - final['mean']) / spread:.3g}" if spread > 0 else "-"
        names = {f"{key}_floor", key.replace("swd_", "swd_floor_", 1)} - {key}  # rkid_floor, swd_floor_avg, ...
        floor = next((row["metrics"][k] for k in sorted(names) if k in row["metrics"]), None)
        lines.append(f"| {key} | {_pm(first)} | {_pm(final)} | {apart} | {_pm(floor) if floor else '-'} |")
    return lines


def write_results(outdir: str, summary: dict) -> None:
    """tax.json, tax.md, tax.png: the command's own results, replaced on every call (module docstring)."""
    from experiments.tax_plot import draw_tax_png

    with output_file(os.path.join(outdir, "tax.json"), overwrite=True) as f:
        f.write((json.dumps(summary, indent=2) + "\n").encode())
    with output_file(os.path.join(outdir, "tax.md"), overwrite=True) as f:
        f.write(format_markdown(summary).encode())
    with output_file(os.path.join(outdir, "tax.png"), overwrite=True) as f:
        draw_tax_png(summary).save(f, format="PNG")
