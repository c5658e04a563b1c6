"""A horizontal bar chart as a standalone SVG string, written by hand (no plotting library).

Owns the drawing of the chart dictionaries that benchmark modules return
from ``charts(result)`` (the shape is documented in ``bench/__main__.py``):
one row per category, one bar per series inside it, a whisker from min to
max, the median printed at the end of each bar.  Draws only; never
measures or reads files.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

COLOURS = ("#3b6ea8", "#e08a2c", "#5a9e4b", "#b9483f")
LABEL_W, PLOT_W, VALUE_W = 250, 460, 110
BAR_H, ROW_GAP, TOP, FONT = 16, 10, 62, 12


def _nice_step(span: float) -> float:
    """A 1-2-5 step giving about five grid lines over `span`."""
    raw = span / 5 if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def bar_chart(chart: dict[str, Any]) -> str:
    categories: list[str] = chart["categories"]
    series: list[dict[str, Any]] = chart["series"]
    cells = [v for s in series for v in s["values"] if v]
    top_value = max((max(v[0], v[2]) for v in cells), default=1.0) or 1.0
    step = _nice_step(top_value)
    axis_max = step * math.ceil(top_value * 1.05 / step)
    row_h = BAR_H * len(series) + ROW_GAP
    legend_h = 22 if len(series) > 1 else 0
    height = TOP + legend_h + row_h * len(categories) + 40
    width = LABEL_W + PLOT_W + VALUE_W

    def x(value: float) -> float:
        return LABEL_W + PLOT_W * value / axis_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{FONT}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(chart["title"])}</text>',
        f'<text x="10" y="42" fill="#555">{escape(chart.get("note", ""))}</text>',
    ]
    plot_top = TOP + legend_h
    plot_bottom = plot_top + row_h * len(categories)
    if legend_h:
        lx = LABEL_W
        for i, s in enumerate(series):
            out.append(f'<rect x="{lx}" y="{TOP - 2}" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
            out.append(f'<text x="{lx + 16}" y="{TOP + 8}">{escape(s["name"])}</text>')
            lx += 30 + 8 * len(s["name"])
    tick = 0.0
    while tick <= axis_max + step / 2:
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{plot_top}" x2="{tx:.1f}" y2="{plot_bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{plot_bottom + 16}" text-anchor="middle" fill="#555">{_fmt(tick)}</text>')
        tick += step
    out.append(
        f'<text x="{LABEL_W + PLOT_W / 2}" y="{plot_bottom + 32}" text-anchor="middle">{escape(chart["unit"])}</text>'
    )
    for row, label in enumerate(categories):
        y0 = plot_top + row * row_h + ROW_GAP / 2
        weight = ' font-weight="bold"' if "redirgate" in label else ""
        out.append(f'<text x="{LABEL_W - 8}" y="{y0 + row_h / 2 - 1}" text-anchor="end"{weight}>{escape(label)}</text>')
        for i, s in enumerate(series):
            yb = y0 + i * BAR_H
            cell = s["values"][row]
            if not cell:
                out.append(f'<text x="{LABEL_W + 4}" y="{yb + BAR_H - 4}" fill="#888">not measured</text>')
                continue
            med, lo, hi = cell
            colour = COLOURS[i % len(COLOURS)]
            out.append(
                f'<rect x="{LABEL_W}" y="{yb + 1}" width="{max(0.5, x(med) - LABEL_W):.1f}" '
                f'height="{BAR_H - 3}" fill="{colour}"/>'
            )
            cy = yb + BAR_H / 2
            out.append(f'<line x1="{x(lo):.1f}" y1="{cy}" x2="{x(hi):.1f}" y2="{cy}" stroke="#222"/>')
            for end in (lo, hi):
                out.append(f'<line x1="{x(end):.1f}" y1="{cy - 4}" x2="{x(end):.1f}" y2="{cy + 4}" stroke="#222"/>')
            out.append(f'<text x="{x(max(med, hi)) + 5:.1f}" y="{yb + BAR_H - 4}">{_fmt(med)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
