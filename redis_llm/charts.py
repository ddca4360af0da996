"""Charts of the review desk, drawn on the server as inline SVG.

No chart library and no script: the page stays light, works under a strict
Content-Security-Policy, and prints. Every bar carries its value in a
``<title>`` (a tooltip) and in ``data-value`` (what the tests read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 640
BAR = 22          # the height of a horizontal bar
LABEL = 170       # the width of the label column of horizontal bars
COLUMNS_HEIGHT = 180


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _scale_top(high: float) -> float:
    """A round value at or above ``high`` for the end of an axis."""
    if high <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(high))
    for factor in (1, 2, 2.5, 5, 10):
        if high <= factor * step:
            return factor * step
    return 10 * step


def bars(name: str, title: str, rows: Sequence[tuple[str, float | None]], unit: str = "",
         top: float | None = None) -> Markup:
    """A horizontal bar chart: a bar per ``(label, value)``; a None value is
    drawn as "no data". ``top`` fixes the end of the scale (100 for scores)."""
    values = [value for _, value in rows if value is not None]
    end = top if top is not None else _scale_top(max(values, default=0))
    height = 30 + BAR * 1.5 * max(len(rows), 1)
    plot = WIDTH - LABEL - 70
    parts = [f'<svg class="chart" data-chart="{escape(name)}" role="img" '
             f'viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if not rows:
        parts.append('<text class="empty" x="10" y="40">no data yet</text>')
    for n, (label, value) in enumerate(rows):
        y = 20 + n * BAR * 1.5
        parts.append(f'<text class="label" x="{LABEL - 8}" y="{y + BAR * 0.7:.1f}" '
                     f'text-anchor="end">{escape(_short(label))}</text>')
        if value is None:
            parts.append(f'<text class="empty" x="{LABEL}" y="{y + BAR * 0.7:.1f}">no data</text>')
            continue
        width = plot * min(value / end, 1.0) if end else 0
        parts.append(f'<rect class="bar" data-value="{value:g}" x="{LABEL}" y="{y:.1f}" '
                     f'width="{max(width, 1):.1f}" height="{BAR}"><title>{escape(label)}: '
                     f'{_number(value)}{escape(unit)}</title></rect>')
        parts.append(f'<text class="value" x="{LABEL + width + 6:.1f}" y="{y + BAR * 0.7:.1f}">'
                     f'{_number(value)}{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def columns(name: str, title: str, points: Sequence[tuple[str, Sequence[float]]],
            series: Sequence[str]) -> Markup:
    """A column chart over time: per ``(label, values)`` point, a column per
    series side by side (results and reviewed, say), with a legend."""
    high = _scale_top(max((v for _, values in points for v in values), default=0))
    plot_top, plot_bottom, left = 30, COLUMNS_HEIGHT - 40, 50
    plot_width = WIDTH - left - 10
    slot = plot_width / max(len(points), 1)
    column = max(min(slot / (len(series) + 1), 40), 1)
    parts = [f'<svg class="chart" data-chart="{escape(name)}" role="img" '
             f'viewBox="0 0 {WIDTH} {COLUMNS_HEIGHT}" width="{WIDTH}" height="{COLUMNS_HEIGHT}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for n, label in enumerate(series):
        parts.append(f'<rect class="series-{n}" x="{left + n * 120}" y="8" width="12" height="12"/>'
                     f'<text class="legend" x="{left + n * 120 + 18}" y="19">{escape(label)}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{plot_bottom}" x2="{WIDTH - 10}" '
                 f'y2="{plot_bottom}"/><text class="tick" x="{left - 6}" y="{plot_top + 4}" '
                 f'text-anchor="end">{_number(high)}</text><text class="tick" x="{left - 6}" '
                 f'y="{plot_bottom}" text-anchor="end">0</text>')
    if not points:
        parts.append(f'<text class="empty" x="{left + 10}" y="{plot_bottom - 20}">no data yet</text>')
    every = max(1, math.ceil(len(points) / 8))  # at most about 8 time labels
    for n, (label, values) in enumerate(points):
        x = left + n * slot + (slot - column * len(series)) / 2
        for s, value in enumerate(values):
            h = (plot_bottom - plot_top) * value / high
            parts.append(f'<rect class="bar series-{s}" data-value="{value:g}" '
                         f'x="{x + s * column:.1f}" y="{plot_bottom - h:.1f}" '
                         f'width="{column:.1f}" height="{h:.1f}"><title>{escape(label)}: '
                         f'{_number(value)} {escape(series[s])}</title></rect>')
        if n % every == 0:
            parts.append(f'<text class="tick" x="{left + n * slot + slot / 2:.1f}" '
                         f'y="{plot_bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(label: str, most: int = 24) -> str:
    return label if len(label) <= most else label[:most - 1] + "…"
