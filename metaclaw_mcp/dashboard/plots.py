"""Small server-side plots as inline SVG: lines and columns over time, intervals, a scatter, bars.

Each function returns markup (`markupsafe.Markup`) ready to place in a page; every label is
escaped. Sizes are in SVG user units (pixels at 100%); the `<svg>` scales to its container's
width (`viewBox`). Points carry a `<title>`, which browsers show on hover (no script).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = {"user": "#2563eb", "env": "#16a34a", "agent": "#9333ea", "judge": "#ea580c", "reward": "#111827",
           "turns": "#93c5fd", "ratings": "#1d4ed8", "active": "#16a34a", "candidate": "#ca8a04",
           "retired": "#9ca3af", "loss": "#dc2626"}
FALLBACK_COLOURS = ("#0891b2", "#be185d", "#4d7c0f", "#7c3aed", "#b45309")
MARGIN = (28, 16, 34, 56)   # top (the legend's strip), right, bottom, left


def colour(name: str, i: int = 0) -> str:
    """The colour a series called `name` is drawn in (PALETTE, else a fallback by position `i`)."""
    return PALETTE.get(name, FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])


@dataclass
class Series:
    """One series: a name (legend, colour), points (x, y) with y None for a gap, and how it is drawn:
    `kind` "line" (a path with dots) or "columns" (one bar per point)."""
    name: str
    points: Sequence[tuple[float, float | None]]
    kind: str = "line"
    colour: str | None = None
    tips: Sequence[str] = field(default_factory=tuple)   # one hover text per point (default: "name: y")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def fmt_tick(value: float) -> str:
    """A tick label: integers without decimals, others with up to 3 significant digits."""
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.3g}"


class _Frame:
    """Maps data coordinates into the plot area of a width x height SVG."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float]):
        self.width, self.height = width, height
        top, right, bottom, left = MARGIN
        self.left, self.right, self.top, self.bottom = left, width - right, top, height - bottom
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0] - 0.5, x_range[0] + 0.5)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0] - 1, y_range[0] + 1)

    def x(self, v: float) -> float:
        """The SVG x of data x `v`."""
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, v: float) -> float:
        """The SVG y of data y `v` (up is larger)."""
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _open(width: int, height: int, label: str) -> list[str]:
    return [f'<svg class="plot" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="system-ui, sans-serif">']


def _axes(f: _Frame, y_ticks: Sequence[float], x_ticks: Sequence[tuple[float, str]], y_label: str,
          zero_line: bool = True) -> list[str]:
    out = []
    for t in y_ticks:
        y = f.y(t)
        out.append(f'<line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{f.left - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#4b5563">{escape(fmt_tick(t))}</text>')
    if zero_line and f.y0 < 0 < f.y1:
        out.append(f'<line x1="{f.left}" x2="{f.right}" y1="{f.y(0):.1f}" y2="{f.y(0):.1f}" stroke="#6b7280"/>')
    out.append(f'<line x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{f.bottom}" stroke="#9ca3af"/>')
    out.append(f'<line x1="{f.left}" x2="{f.right}" y1="{f.bottom}" y2="{f.bottom}" stroke="#9ca3af"/>')
    for v, label in x_ticks:
        x = f.x(v)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.bottom}" y2="{f.bottom + 4}" stroke="#9ca3af"/>')
        out.append(f'<text x="{x:.1f}" y="{f.bottom + 16}" text-anchor="middle" fill="#4b5563">{escape(label)}</text>')
    if y_label:
        out.append(f'<text x="12" y="{(f.top + f.bottom) / 2:.1f}" transform="rotate(-90 12 {(f.top + f.bottom) / 2:.1f})" '
                   f'text-anchor="middle" fill="#374151">{escape(y_label)}</text>')
    return out


def _legend(names: Sequence[tuple[str, str]], f: _Frame) -> list[str]:
    out, x = [], f.left + 8
    for name, fill in names:
        out.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{fill}" rx="2"/>')
        out.append(f'<text x="{x + 14}" y="15" fill="#111827">{escape(name)}</text>')
        x += 22 + 7 * len(name)
    return out


def day_ticks(days: Sequence[str], count: int = 6) -> list[tuple[float, str]]:
    """Ticks for a daily x axis where day i is at x = i: about `count` of them, labelled MM-DD."""
    if not days:
        return []
    step = max(1, math.ceil(len(days) / count))
    return [(float(i), days[i][5:]) for i in range(0, len(days), step)]


def line_chart(series: Sequence[Series], x_ticks: Sequence[tuple[float, str]] = (),
               y_range: tuple[float, float] | None = None, y_label: str = "", width: int = 960, height: int = 260,
               label: str = "chart") -> Markup:
    """Lines and columns sharing one x axis (data units; `x_ticks` as (x, label)) and one y axis
    (`y_range`, default: the data's, with 0 included for columns). Empty series draw an empty frame."""
    xs = [x for s in series for x, y in s.points if y is not None] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points if y is not None] or [0.0, 1.0]
    has_columns = any(s.kind == "columns" for s in series)
    x_lo, x_hi = min(xs), max(xs)
    if has_columns:   # room for the first and last bars
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_range is None:
        lo, hi = min(ys), max(ys)
        if has_columns:
            lo = min(lo, 0.0)
        ticks = nice_ticks(lo, hi)
        y_range = (min(ticks[0], lo), max(ticks[-1], hi))
    else:
        ticks = nice_ticks(*y_range)
    f = _Frame(width, height, (x_lo, x_hi), y_range)
    out = _open(width, height, label) + _axes(f, [t for t in ticks if y_range[0] <= t <= y_range[1]], x_ticks, y_label)
    legend = []
    for i, s in enumerate(series):
        fill = s.colour or colour(s.name, i)
        legend.append((s.name, fill))
        tips = list(s.tips) or [f"{s.name}: {fmt_tick(y) if y is not None else 'none'}" for _, y in s.points]
        if s.kind == "columns":
            n = max(1, len(s.points))
            bar = max(1.0, (f.right - f.left) / (x_hi - x_lo) * 0.8) if x_hi > x_lo else (f.right - f.left) / n
            for (x, y), tip in zip(s.points, tips):
                if y is None:
                    continue
                top, base = f.y(max(y, 0.0)), f.y(min(y, 0.0))
                out.append(f'<rect x="{f.x(x) - bar / 2:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                           f'height="{max(0.5, base - top):.1f}" fill="{fill}"><title>{escape(tip)}</title></rect>')
            continue
        path, pen_down = [], False
        for x, y in s.points:
            if y is None:
                pen_down = False
                continue
            path.append(f'{"L" if pen_down else "M"}{f.x(x):.1f},{f.y(y):.1f}')
            pen_down = True
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{fill}" stroke-width="1.8"/>')
        if len(s.points) <= 400:
            for (x, y), tip in zip(s.points, tips):
                if y is not None:
                    out.append(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.4" fill="{fill}">'
                               f'<title>{escape(tip)}</title></circle>')
    out += _legend(legend, f)
    out.append("</svg>")
    return Markup("".join(out))


@dataclass
class Interval:
    """One row of an interval chart: a label, an estimate, its interval (low, high; None: unknown)
    and an optional link for the label."""
    label: str
    estimate: float
    low: float | None
    high: float | None
    href: str | None = None


def interval_chart(rows: Sequence[Interval], x_label: str = "", width: int = 720, row_height: int = 18,
                   label: str = "intervals", clip: float | None = None) -> Markup:
    """A forest plot: one row per interval, the estimate as a dot and the interval as a bar, with a
    line at 0. `clip` bounds the x axis to [-clip, clip] (intervals past it are cut, marked by an arrow)."""
    left = 190
    height = 30 + row_height * max(1, len(rows))
    values = [v for r in rows for v in (r.estimate, r.low, r.high) if v is not None] or [-1.0, 1.0]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if clip is not None:
        lo, hi = max(lo, -clip), min(hi, clip)
    ticks = nice_ticks(lo, hi, 6)
    x0, x1 = min(ticks[0], lo), max(ticks[-1], hi)
    right = width - 16

    def x(v: float) -> float:
        v = min(max(v, x0), x1)
        return left + (v - x0) / (x1 - x0 or 1.0) * (right - left)
    out = _open(width, height, label)
    bottom = height - 20
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="4" y2="{bottom}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{x(t):.1f}" y="{bottom + 14}" text-anchor="middle" fill="#4b5563">{escape(fmt_tick(t))}</text>')
    out.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="4" y2="{bottom}" stroke="#6b7280"/>')
    if x_label:
        out.append(f'<text x="{right}" y="{bottom + 14}" text-anchor="end" fill="#374151">{escape(x_label)}</text>')
    for i, r in enumerate(rows):
        y = 12 + i * row_height
        name = escape(r.label if len(r.label) <= 28 else r.label[:27] + "…")
        text = f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" fill="#111827">{name}</text>'
        out.append(f'<a href="{escape(r.href)}">{text}</a>' if r.href else text)
        tip = f"{r.label}: {r.estimate:+.3f}" + (f" [{r.low:+.3f}, {r.high:+.3f}]" if r.low is not None
                                                 and r.high is not None else " (no interval yet)")
        fill = "#16a34a" if r.low is not None and r.low > 0 else "#dc2626" if r.high is not None and r.high < 0 \
            else "#2563eb"
        if r.low is not None and r.high is not None:
            out.append(f'<line x1="{x(r.low):.1f}" x2="{x(r.high):.1f}" y1="{y}" y2="{y}" stroke="{fill}" '
                       f'stroke-width="2.5" stroke-linecap="round"/>')
        out.append(f'<circle cx="{x(r.estimate):.1f}" cy="{y}" r="3.5" fill="{fill}"><title>{escape(tip)}</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))


def scatter_chart(points: Sequence[tuple[float, float]], x_label: str, y_label: str,
                  x_range: tuple[float, float] = (-1.0, 1.0), y_range: tuple[float, float] = (-1.0, 1.0),
                  width: int = 340, height: int = 300, label: str = "scatter") -> Markup:
    """Points (x, y) in the given ranges, with the diagonal y = x (where they would agree)."""
    f = _Frame(width, height, x_range, y_range)
    ticks = nice_ticks(*y_range, 4)
    x_ticks = [(t, fmt_tick(t)) for t in nice_ticks(*x_range, 4)]
    out = _open(width, height, label) + _axes(f, ticks, x_ticks, y_label, zero_line=False)
    out.append(f'<line x1="{f.x(max(x_range[0], y_range[0])):.1f}" y1="{f.y(max(x_range[0], y_range[0])):.1f}" '
               f'x2="{f.x(min(x_range[1], y_range[1])):.1f}" y2="{f.y(min(x_range[1], y_range[1])):.1f}" '
               f'stroke="#9ca3af" stroke-dasharray="4 3"/>')
    for px, py in points:
        out.append(f'<circle cx="{f.x(px):.1f}" cy="{f.y(py):.1f}" r="3" fill="#ea580c" fill-opacity="0.45">'
                   f'<title>{escape(f"{x_label} {px:+.2f}, {y_label} {py:+.2f}")}</title></circle>')
    out.append(f'<text x="{f.right}" y="{f.bottom + 28}" text-anchor="end" fill="#374151">{escape(x_label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(items: Sequence[tuple[str, float]], width: int = 340, row_height: int = 22,
              label: str = "bars") -> Markup:
    """Horizontal bars, one per (name, value), coloured by name, with the value written beside each."""
    height = 8 + row_height * max(1, len(items))
    top = max([v for _, v in items] + [1.0])
    left, right = 80, width - 50
    out = _open(width, height, label)
    for i, (name, value) in enumerate(items):
        y = 4 + i * row_height
        w = (right - left) * value / top
        out.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" fill="#111827">{escape(name)}</text>')
        out.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row_height - 8}" '
                   f'fill="{colour(name, i)}" rx="2"><title>{escape(f"{name}: {fmt_tick(value)}")}</title></rect>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}" fill="#111827">{escape(fmt_tick(value))}</text>')
    out.append("</svg>")
    return Markup("".join(out))


__all__ = ["Interval", "PALETTE", "Series", "bar_chart", "colour", "day_ticks", "fmt_tick", "interval_chart",
           "line_chart", "nice_ticks", "scatter_chart"]
