"""The HTML report of ``reid demo``: training curves as inline SVG and ranked search results.

Why hand-drawn SVG: the report must open in any browser from a fresh clone without plotting
libraries (matplotlib is not a dependency), and one self-contained file (thumbnails are
``data:`` URIs) can be mailed or attached to a CI run as is. Everything user- or data-derived
goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Hit",
    "QueryResult",
    "ReportData",
    "Series",
    "line_chart",
    "nice_ticks",
    "render_report",
]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    """One line of a chart: ``values[i]`` belongs to ``x[i]``; ``None`` leaves a gap."""

    name: str
    x: Sequence[float]
    values: Sequence[float | None]
    dashed: bool = False


@dataclass(frozen=True)
class Hit:
    """One ranked search result; ``correct`` is None when the truth is unknown."""

    rank: int
    image_uri: str
    score: float
    pid: int | None
    camid: int | None
    correct: bool | None


@dataclass(frozen=True)
class QueryResult:
    """A query and its ranked results: after adaptation (the service) and, optionally,
    before (the starting model)."""

    image_uri: str
    pid: int | None
    camid: int | None
    hits: list[Hit]
    image_id: int | None = None
    hits_before: list[Hit] | None = None


@dataclass
class ReportData:
    """Everything the report shows; produced by :mod:`demo`."""

    title: str
    map_before: float | None
    map_after: float | None
    rank1_before: float | None
    rank1_after: float | None
    epochs: list[dict]  # the job's per-epoch metrics (epoch, loss, clusters, mAP, ...)
    queries: list[QueryResult]
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, text) summary rows
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, url)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# charts


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (1, 2, 2.5 or 5 times 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value < hi + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "epoch",
    y_label: str = "",
    width: int = 380,
    height: int = 240,
    y_min: float | None = None,
    y_max: float | None = None,
) -> str:
    """An SVG line chart (markers on every point) with axes, round ticks and a legend.

    Missing values break the line; a chart without any value says so instead of failing.
    """
    esc = html.escape
    left, right, top, bottom = 52, 12, 28, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}" font-family="sans-serif" font-size="11" fill="#333">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="17" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{esc(title)}</text>',
    ]
    points = [
        (float(x), float(v))
        for s in series
        for x, v in zip(s.x, s.values, strict=False)
        if v is not None and math.isfinite(float(v))
    ]
    if not points:
        parts.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
            'font-size="14" fill="#999">no data</text></svg>'
        )
        return "".join(parts)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    y_ticks = nice_ticks(
        min(ys) if y_min is None else min(y_min, *ys), max(ys) if y_max is None else max(y_max, *ys)
    )
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_ticks = [t for t in nice_ticks(x_lo, x_hi, min(8, int(x_hi - x_lo) + 1)) if x_lo <= t <= x_hi]
    if all(x.is_integer() for x in xs):  # epochs: no tick at 2.5
        x_ticks = [t for t in x_ticks if float(t).is_integer()]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    for t in y_ticks:
        y = py(t)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e6e6e6"/>'
            f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in x_ticks:
        x = px(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" '
            f'stroke="#888"/><text x="{x:.1f}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<polyline points="{left},{top} {left},{top + plot_h} {left + plot_w},{top + plot_h}" '
        'stroke="#888" fill="none"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 30}" text-anchor="middle">'
        f"{esc(x_label)}</text>"
    )
    if y_label:
        parts.append(
            f'<text transform="translate(12 {top + plot_h / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_label)}</text>'
        )
    legend_x = left
    for i, s in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for x, v in zip(s.x, s.values, strict=False):
            if v is None or not math.isfinite(float(v)):
                segment = []
                segments.append(segment)
                continue
            segment.append(f"{px(float(x)):.1f},{py(float(v)):.1f}")
            if not s.dashed:
                parts.append(
                    f'<circle cx="{px(float(x)):.1f}" cy="{py(float(v)):.1f}" r="2.5" '
                    f'fill="{colour}"><title>{esc(s.name)} @ {_fmt(float(x))}: '
                    f"{_fmt(float(v))}</title></circle>"
                )
        for seg in segments:
            if len(seg) > 1:
                parts.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" '
                    f'stroke-width="2"{dash}/>'
                )
        legend_y = height - 10
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 16}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{legend_x + 20}" y="{legend_y}">{esc(s.name)}</text>'
        )
        legend_x += 28 + 6.5 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def _column(epochs: Sequence[dict], key: str, scale: float = 1.0) -> list[float | None]:
    out: list[float | None] = []
    for entry in epochs:
        value = entry.get(key)
        out.append(None if value is None else float(value) * scale)
    return out


def training_charts(
    epochs: Sequence[dict], map_before: float | None = None, rank1_before: float | None = None
) -> list[str]:
    """The three curves of a job's ``metrics``: loss, pseudo-label clusters, target mAP
    (and rank-1), the latter starting at epoch 0 with the model before adaptation."""
    xs = [int(e.get("epoch", i)) + 1 for i, e in enumerate(epochs)]
    loss = [Series("loss", xs, _column(epochs, "loss"))]
    for key, name in (("loss_source", "source"), ("loss_target", "target")):
        if any(e.get(key) is not None for e in epochs):
            loss.append(Series(name, xs, _column(epochs, key)))
    clusters = [
        Series("clusters", xs, _column(epochs, "clusters")),
        Series("un-clustered images", xs, _column(epochs, "unclustered")),
    ]
    quality = []
    for name, key, start in (("mAP", "mAP", map_before), ("rank-1", "rank1", rank1_before)):
        values = _column(epochs, key, 100)
        if start is None:
            quality.append(Series(name, xs, values))
        else:
            quality.append(Series(name, [0, *xs], [100 * start, *values]))
    return [
        line_chart("training loss per epoch", loss, y_label="loss"),
        line_chart("target pseudo-labels per epoch", clusters, y_label="count", y_min=0),
        line_chart(
            "target mAP / rank-1 (%)",
            quality,
            x_label="epoch (0: before adaptation)",
            y_label="%",
            y_min=0,
        ),
    ]


# --------------------------------------------------------------------------------------
# the page


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1260px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
.headline { font-size: 20px; padding: 10px 14px; background: #f3f7ff; border-radius: 6px;
  display: inline-block; }
.headline b { font-size: 24px; }
table.facts td { padding: 2px 12px 2px 0; vertical-align: top; }
table.facts td:first-child { color: #666; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { border: 1px solid #ddd; border-radius: 4px; }
.query { display: flex; align-items: flex-start; gap: 6px; margin: 14px 0;
  padding-bottom: 10px; border-bottom: 1px solid #eee; }
.query > figure.q { margin-right: 14px; }
.hits { display: flex; align-items: flex-start; gap: 6px; margin-bottom: 6px; }
.row-label { width: 70px; font-size: 12px; color: #555; padding-top: 56px; }
figure { margin: 0; text-align: center; font-size: 11px; width: 84px; white-space: nowrap; }
figure img { width: 64px; height: 128px; object-fit: contain; border: 4px solid #bbb;
  border-radius: 3px; background: #000; display: block; margin: 0 auto; }
figure.q img { border-color: #1f77b4; }
figure.ok img { border-color: #2ca02c; } figure.bad img { border-color: #d62728; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 8px; border-radius: 3px;
  color: #fff; font-size: 12px; }
.notes { color: #666; font-size: 13px; }
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _figure(uri: str, caption: str, css: str, tooltip: str = "") -> str:
    esc = html.escape
    return (
        f'<figure class="{css}" title="{esc(tooltip)}"><img src="{esc(uri)}" alt="{esc(caption)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _label(pid: int | None, camid: int | None) -> str:
    who = "id ?" if pid is None else f"id {pid}"
    return who + ("" if camid is None else f" · cam {camid}")


def _hits_row(label: str, hits: Sequence[Hit]) -> str:
    cells = [f'<div class="row-label">{html.escape(label)}</div>']
    for hit in hits:
        css = {True: "ok", False: "bad", None: ""}[hit.correct]
        mark = {True: "✓ ", False: "✗ ", None: ""}[hit.correct]
        cells.append(
            _figure(
                hit.image_uri,
                f"#{hit.rank} {mark}{hit.score:.3f}<br>{html.escape(_label(hit.pid, hit.camid))}",
                css,
                tooltip="same identity" if hit.correct else "",
            )
        )
    return '<div class="hits">' + "".join(cells) + "</div>"


def _query_row(q: QueryResult) -> str:
    query = _figure(q.image_uri, f"query<br>{html.escape(_label(q.pid, q.camid))}", "q")
    rows = [_hits_row("after adaptation", q.hits)]
    if q.hits_before is not None:
        rows.append(_hits_row("before", q.hits_before))
    return f'<div class="query">{query}<div>{"".join(rows)}</div></div>'


def _top1(queries: Sequence[QueryResult], before: bool = False) -> int:
    lists = [q.hits_before if before else q.hits for q in queries]
    return sum(1 for hits in lists if hits and hits[0].correct)


def render_report(data: ReportData) -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    esc = html.escape
    headline = (
        f"target mAP <b>{_pct(data.map_before)}</b> before adaptation → "
        f"<b>{_pct(data.map_after)}</b> after"
        f" &nbsp; (rank-1 {_pct(data.rank1_before)} → {_pct(data.rank1_after)})"
    )
    facts = "".join(
        f"<tr><td>{esc(label)}</td><td>{esc(text)}</td></tr>" for label, text in data.facts
    )
    links = "".join(f'<li><a href="{esc(url)}">{esc(label)}</a></li>' for label, url in data.links)
    charts = "".join(training_charts(data.epochs, data.map_before, data.rank1_before))
    hits_total = sum(len(q.hits) for q in data.queries)
    correct = sum(1 for q in data.queries for h in q.hits if h.correct)
    top1 = f"top-1 correct for {_top1(data.queries)} of {len(data.queries)} queries"
    if any(q.hits_before is not None for q in data.queries):
        top1 += f" after adaptation ({_top1(data.queries, before=True)} before)"
    queries = "".join(_query_row(q) for q in data.queries) or "<p>no searches were run</p>"
    notes = "".join(f"<p>{esc(n)}</p>" for n in data.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(data.title)}</title>
<style>{_CSS}</style></head><body>
<h1>{esc(data.title)}</h1>
<p class="headline">{headline}</p>
<h2>Run</h2>
<table class="facts">{facts}</table>
{f"<ul>{links}</ul>" if links else ""}
<h2>Training curves</h2>
<div class="charts">{charts}</div>
<h2>Searches in the target gallery</h2>
<p class="legend"><span style="background:#2ca02c">✓ same identity</span>
<span style="background:#d62728">✗ another identity</span>
{top1}; {correct} of {hits_total} results correct after adaptation. Scores are cosine
similarities; the query's own camera is excluded. After: the service's search (the adapted
model's index); before: the starting model, ranked locally.</p>
{queries}
<div class="notes">{notes}</div>
</body></html>
"""
