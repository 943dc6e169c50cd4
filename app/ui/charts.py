"""Pictures for the web UI, drawn server-side as SVG text (no plotting library at run time).

Every label is escaped; every number is formatted here, so a chart is safe to put into a page as
is. Colours come from one sequential ramp (light to dark blue) for the heat map and one accent
for bars and lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

BAR = "#3b6ea5"
ACCENT = "#c0392b"
FONT = 'font-family="sans-serif" font-size="11"'


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" {FONT}><title>{escape(title)}</title>' + "".join(body) + "</svg>"
    )


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.3g}"


def bars(labels: Sequence[str], values: Sequence[float], title: str, width: int = 560, color: str = BAR) -> str:
    """Horizontal bars, one per label, the value written after each."""
    row, left, right = 20, 130, 60
    height = row * len(labels) + 10
    top = max(values, default=0) or 1
    body = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = 5 + i * row
        w = (width - left - right) * (v / top)
        body.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(str(label))}</text>')
        body.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{_num(v)}</text>')
    return _svg(width, height, body, title)


def columns(
    labels: Sequence[str], values: Sequence[float], title: str, width: int = 560, height: int = 200, xlabel: str = ""
) -> str:
    """Vertical columns (a histogram) with the labels under them."""
    left, bottom, top_pad = 40, 36, 14
    n = max(len(values), 1)
    step = (width - left - 10) / n
    top = max(values, default=0) or 1
    plot_h = height - bottom - top_pad
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#888"/>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * (v / top)
        x = left + i * step
        body.append(
            f'<rect x="{x + 2:.1f}" y="{height - bottom - h:.1f}" width="{step - 4:.1f}" '
            f'height="{h:.1f}" fill="{BAR}"/>'
        )
        body.append(
            f'<text x="{x + step / 2:.1f}" y="{height - bottom - h - 3:.1f}" text-anchor="middle">{_num(v)}</text>'
        )
        body.append(
            f'<text x="{x + step / 2:.1f}" y="{height - bottom + 13}" text-anchor="middle">{escape(str(label))}</text>'
        )
    if xlabel:
        body.append(f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    return _svg(width, height, body, title)


def histogram(values: Sequence[float], title: str, bins: int = 10, low: float = 0.0, high: float = 1.0) -> str:
    """Counts of ``values`` in equal bins over [low, high]."""
    counts = [0] * bins
    for v in values:
        k = int((min(max(v, low), high) - low) / (high - low) * bins)
        counts[min(k, bins - 1)] += 1
    edges = [low + (high - low) * i / bins for i in range(bins)]
    return columns([f"{e:.1f}" for e in edges], counts, title, xlabel="confidence (left edge of each bin)")


def line(values: Sequence[float], title: str, xlabel: str = "epoch", width: int = 560, height: int = 200) -> str:
    """A line through ``values`` at x = 1, 2, ..., with the first and last values written."""
    left, bottom, pad = 50, 30, 14
    if not values:
        return _svg(width, 40, ['<text x="10" y="24">no values yet</text>'], title)
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (width - left - pad) * (i / max(n - 1, 1))
        y = pad + (height - bottom - pad) * (1 - (v - lo) / span)
        return x, y

    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(values)))
    body = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - pad}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
        f'<polyline points="{pts}" fill="none" stroke="{ACCENT}" stroke-width="2"/>',
        f'<text x="{left - 4}" y="{pad + 4}" text-anchor="end">{_num(hi)}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{_num(lo)}</text>',
        f'<text x="{left}" y="{height - bottom + 14}" text-anchor="middle">1</text>',
        f'<text x="{width - pad}" y="{height - bottom + 14}" text-anchor="middle">{n}</text>',
        f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>',
    ]
    for i, v in enumerate(values):
        x, y = xy(i, v)
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{ACCENT}"/>')
    return _svg(width, height, body, title)


def _ramp(t: float) -> str:
    """White to dark blue."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (31, 78, 140))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    labels: Sequence[str], matrix: Sequence[Sequence[float]], title: str, row_title: str, col_title: str
) -> str:
    """A square heat map: ``matrix[i][j]`` in cell (row i, column j), the count written in the cell."""
    n = len(labels)
    cell, left, top = 34, 130, 120
    width, height = left + n * cell + 10, top + n * cell + 30
    peak = max((v for r in matrix for v in r), default=0) or 1
    body = [
        f'<text x="{left + n * cell / 2:.0f}" y="12" text-anchor="middle">{escape(col_title)}</text>',
        f'<text x="10" y="{top + n * cell + 22}">{escape(row_title)}</text>',
    ]
    for j, label in enumerate(labels):
        x = left + j * cell + cell / 2
        body.append(
            f'<text x="{x:.0f}" y="{top - 6}" transform="rotate(-60 {x:.0f} {top - 6})">{escape(str(label))}</text>'
        )
    for i, label in enumerate(labels):
        y = top + i * cell
        body.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.0f}" text-anchor="end">{escape(str(label))}</text>')
        for j in range(n):
            v = matrix[i][j]
            t = v / peak
            body.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{_ramp(t)}" stroke="#fff">'
                f"<title>{escape(str(label))} won over {escape(str(labels[j]))}: {_num(v)}</title></rect>"
            )
            if v:
                fill = "#fff" if t > 0.5 else "#222"
                body.append(
                    f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4:.0f}" text-anchor="middle" '
                    f'fill="{fill}">{_num(v)}</text>'
                )
    return _svg(width, height, body, title)


def posterior_bar(p: float, width: int = 220) -> str:
    """One probability as a small bar with its value."""
    w = width * min(max(p, 0.0), 1.0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width + 50} 16" width="{width + 50}" height="16" '
        f'{FONT}><rect x="0" y="2" width="{width}" height="12" fill="#e8eef5"/>'
        f'<rect x="0" y="2" width="{w:.1f}" height="12" fill="{BAR}"/>'
        f'<text x="{width + 6}" y="13">{p:.3f}</text></svg>'
    )
