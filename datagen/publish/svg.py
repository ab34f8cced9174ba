"""Small inline-SVG charts for the HTML report: no JavaScript, no external file, so the page opens offline.

Each function returns markup to paste into the page. Every mark has a <title>, which browsers show on hover.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"]
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def hbars(items: list[tuple[str, float]], width: int = 720, colour: str = PALETTE[0], unit: str = "") -> str:
    """Horizontal bars, one per (label, value), with the value written at the end of the bar."""
    if not items:
        return ""
    label_w, row_h, pad = 220, 24, 70
    top = max((v for _, v in items), default=0) or 1
    height = row_h * len(items) + 8
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} '
           f'role="img">']
    for i, (label, value) in enumerate(items):
        y = 4 + i * row_h
        w = max(1.0, (width - label_w - pad) * value / top) if value else 0
        text = escape(f"{label}: {_num(value)}{unit}")
        out.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{escape(_clip(label, 32))}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}">'
                   f'<title>{text}</title></rect>')
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{_num(value)}{escape(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram(values: list[float], xlabel: str, bins: int = 20, lo: float | None = None, hi: float | None = None,
              colour: str = PALETTE[0], integer_bins: bool = False, width: int = 480, height: int = 220) -> str:
    """Counts of `values` in equal-width bins between lo and hi (default: their range)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if integer_bins:  # one bar per whole number when the range is small (judge scores)
        lo, hi = math.floor(lo) - 0.5, math.ceil(hi) + 0.5
        bins = int(hi - lo)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
        bins = 1
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    left, bottom, top_pad = 44, 36, 10
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    peak = max(counts)
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} role="img">',
           f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#888"/>',
           f'<text x="{left - 6}" y="{top_pad + 10}" text-anchor="end">{peak}</text>',
           f'<text x="{left - 6}" y="{top_pad + plot_h}" text-anchor="end">0</text>']
    bar_w = plot_w / bins
    for i, c in enumerate(counts):
        h = plot_h * c / peak if peak else 0
        a, b = lo + i * (hi - lo) / bins, lo + (i + 1) * (hi - lo) / bins
        where = _num(a + 0.5) if integer_bins else f"{_num(a)} to {_num(b)}"
        out.append(f'<rect x="{left + i * bar_w + 1:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                   f'height="{h:.1f}" fill="{colour}"><title>{where}: {c}</title></rect>')
    out.append(f'<text x="{left}" y="{height - 18}">{_num(lo if not integer_bins else lo + 0.5)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{height - 18}" text-anchor="end">'
               f'{_num(hi if not integer_bins else hi - 0.5)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter(points: list[tuple[float, float, str, str]], colours: dict[str, str], width: int = 640,
            height: int = 480) -> str:
    """Points (x, y, group, hover text), coloured by group, with a legend of each group's count."""
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad, legend_h = 16, 26
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad - legend_h) / ((y1 - y0) or 1)
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} role="img">',
           f'<rect x="0" y="{legend_h}" width="{width}" height="{height - legend_h}" fill="#fafafa" stroke="#ddd"/>']
    counts: dict[str, int] = {}
    for p in points:
        counts[p[2]] = counts.get(p[2], 0) + 1
    # the largest group is drawn first, so the smaller ones stay visible on top of it
    for x, y, group, text in sorted(points, key=lambda p: -counts[p[2]]):
        cx, cy = pad + (x - x0) * sx, legend_h + pad + (y1 - y) * sy
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colours.get(group, "#999")}" '
                   f'fill-opacity="0.8"><title>{escape(text)}</title></circle>')
    x = 4
    for g in colours:
        if g not in counts:
            continue
        out.append(f'<circle cx="{x + 6}" cy="13" r="5" fill="{colours[g]}"/>')
        label = escape(f"{g} ({counts[g]:,})")
        out.append(f'<text x="{x + 16}" y="17">{label}</text>')
        x += 30 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def heatmap(row_name: str, col_name: str, rows: list[str], cols: list[str], cells: dict[tuple[str, str], int],
            notes: dict[tuple[str, str], str] | None = None) -> str:
    """An HTML table whose cells are shaded by count: the numbers stay readable, the shading shows the gaps."""
    peak = max(cells.values(), default=0) or 1
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    out = [f'<table class="heat"><tr><th>{escape(row_name)} \\ {escape(col_name)}</th>{head}</tr>']
    for r in rows:
        tds = []
        for c in cols:
            n = cells.get((r, c), 0)
            shade = 0.08 + 0.82 * n / peak if n else 0
            style = f"background: rgba(76, 120, 168, {shade:.2f}); color: {'#fff' if shade > 0.5 else '#000'}"
            note = (notes or {}).get((r, c), "")
            tds.append(f'<td style="{style}" title="{escape(f"{r}, {c}: {n}")}">{n}{escape(note)}</td>'
                       if n else '<td class="empty" title="no rows">0</td>')
        out.append(f"<tr><th>{escape(str(r))}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    return "".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
