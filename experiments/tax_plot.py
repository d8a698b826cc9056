"""tax.png with Pillow only (matplotlib is not a dependency): two panels from tax.json's summary.

Left: the quality key (final snapshot, mean over seeds, error bars sd) against consistency (mean of cons1k's
cons_<group> keys) per conditional design; uncond, without a consistency, is a dashed horizontal line.
Right: the quality key against kimg per design (mean over the seeds at each snapshot), the real-vs-real floor in
its title.
"""

from __future__ import annotations

import PIL.Image
import PIL.ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
PANEL_W, PANEL_H, MARGIN = 420, 320, 50


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


class _Panel:
    """A rectangle of the image with linear x/y scales, axes and labels."""

    def __init__(self, draw, x0: int, xs: tuple, ys: tuple, xlabel: str, ylabel: str, title: str) -> None:
        self.draw, self.x0, self.xs, self.ys = draw, x0, xs, ys
        self.left, self.top = x0 + MARGIN, MARGIN // 2 + 10
        self.right, self.bottom = x0 + PANEL_W - 10, PANEL_H - MARGIN
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=(0, 0, 0))
        draw.text((self.left, 4), title, fill=(0, 0, 0))
        draw.text(((self.left + self.right) // 2 - 3 * len(xlabel), self.bottom + 22), xlabel, fill=(0, 0, 0))
        draw.text((x0 + 2, self.top - 14), ylabel, fill=(0, 0, 0))
        for v, p in ((xs[0], self.left), (xs[1], self.right - 40)):
            draw.text((p, self.bottom + 4), f"{v:.3g}", fill=(0, 0, 0))
        for v, p in ((ys[1], self.top), (ys[0], self.bottom - 10)):
            draw.text((x0 + 2, p), f"{v:.3g}", fill=(0, 0, 0))

    def xy(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.xs[0]) / (self.xs[1] - self.xs[0])
        fy = (y - self.ys[0]) / (self.ys[1] - self.ys[0])
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)


def _consistency(row: dict) -> tuple[float, float] | None:
    cons = [s for k, s in row["metrics"].items() if k.startswith("cons_")]
    if not cons:
        return None
    return sum(s["mean"] for s in cons) / len(cons), sum(s["sd"] for s in cons) / len(cons)


def draw_tax_png(summary: dict) -> PIL.Image.Image:
    """The two panels side by side, one colour per design, a legend under them."""
    qkey, rows, curves = summary["quality_key"], summary["designs"], summary["curves"]
    designs = list(rows)
    image = PIL.Image.new("RGB", (2 * PANEL_W, PANEL_H + 16 * len(designs) + 10), "white")
    draw = PIL.ImageDraw.Draw(image)
    color = {d: COLORS[i % len(COLORS)] for i, d in enumerate(designs)}

    points = {d: (_consistency(r), r["metrics"].get(qkey)) for d, r in rows.items()}
    xs = [c[0] + s * c[1] for d, (c, q) in points.items() if c and q for s in (-1, 1)]
    ys = [q["mean"] + s * q["sd"] for c, q in points.values() if q for s in (-1, 1)]
    left = _Panel(draw, 0, _span(xs), _span(ys), "consistency (mean cons1k MSE, lower = follows p)", qkey,
                  f"{qkey} vs consistency (final snapshot, +- sd)")  # fmt: skip
    for d, (c, q) in points.items():
        if q is None:
            continue
        if c is None:  # uncond: no consistency, its quality as a dashed line
            _, y = left.xy(left.xs[0], q["mean"])
            for x in range(left.left, left.right, 8):
                draw.line([x, y, min(x + 4, left.right), y], fill=color[d])
            continue
        x, y = left.xy(c[0], q["mean"])
        x_lo, _ = left.xy(c[0] - c[1], q["mean"])
        x_hi, _ = left.xy(c[0] + c[1], q["mean"])
        _, y_lo = left.xy(c[0], q["mean"] - q["sd"])
        _, y_hi = left.xy(c[0], q["mean"] + q["sd"])
        draw.line([x_lo, y, x_hi, y], fill=color[d])
        draw.line([x, y_lo, x, y_hi], fill=color[d])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color[d])
        draw.text((x + 5, y - 12), d, fill=color[d])

    means = {}
    for d, by_seed in curves.items():
        at: dict[float, list[float]] = {}
        for pts in by_seed.values():
            for kimg, value in pts:
                at.setdefault(kimg, []).append(value)
        means[d] = sorted((k, sum(v) / len(v)) for k, v in at.items())
    all_pts = [p for pts in means.values() for p in pts]
    floor = next((r["metrics"].get(qkey.replace("swd_", "swd_floor_", 1), r["metrics"].get(f"{qkey}_floor"))
                  for r in rows.values() if r["metrics"].get(qkey)), None)  # fmt: skip
    floor_text = f"; real-vs-real floor {floor['mean']:.3g}" if floor and floor["mean"] == floor["mean"] else ""
    kimg_span = (0.0, 1.05 * max([p[0] for p in all_pts], default=1.0))  # kimg from 0: curves start at the start
    right = _Panel(draw, PANEL_W, kimg_span, _span([p[1] for p in all_pts]), "kimg", qkey,
                   f"{qkey} vs kimg (mean over seeds{floor_text})")  # fmt: skip
    for d, pts in means.items():
        xy = [right.xy(k, v) for k, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color[d], width=2)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color[d])

    for i, d in enumerate(designs):
        y = PANEL_H + 4 + 16 * i
        draw.rectangle([MARGIN, y + 2, MARGIN + 10, y + 12], fill=color[d])
        dashed = points[d][0] is None and points[d][1] is not None  # measured, without a consistency: uncond
        draw.text((MARGIN + 16, y), d + (" (dashed: no consistency)" if dashed else ""), fill=(0, 0, 0))
    return image
