"""The HTML report of ``reid demo``: training curves and ranked search results.

One self-contained file (thumbnails, the chart library and the chart code are ``data:`` URIs)
that can be mailed or attached to a CI run as is and opens offline; its charts are drawn by
the web UI's own chart module, so the report and the job page show the same curves.
Everything user- or data-derived goes through :func:`html.escape` (or escaped JSON).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

__all__ = [
    "Hit",
    "QueryResult",
    "ReportData",
    "chart_points",
    "render_report",
]


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
# charts: the web UI's chart module (app/ui/static/js/charts.js, uPlot), embedded


_STATIC = resources.files("app.ui") / "static"
_CHART_FILES = {"uplot": "vendor/uplot/uPlot.esm.js", "charts": "js/charts.js"}


def _data_url(path: str) -> str:
    payload = base64.b64encode((_STATIC / path).read_bytes()).decode()
    return f"data:text/javascript;base64,{payload}"


def _finite(value: object) -> object:
    """NaN and infinities (a diverged loss) become gaps: JSON has no spelling for them."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def chart_points(
    epochs: Sequence[dict], map_before: float | None = None, rank1_before: float | None = None
) -> list[dict]:
    """The job's per-epoch metrics as the chart module takes them; the model before
    adaptation, when measured, is a point at epoch 0 of the retrieval chart."""
    points = [{k: _finite(v) for k, v in entry.items()} for entry in epochs]
    if map_before is not None or rank1_before is not None:
        points.insert(0, {"epoch": -1, "mAP": map_before, "rank1": rank1_before})
    return points


def chart_scripts(points: Sequence[dict], container_id: str = "charts") -> str:
    """Script tags drawing ``points`` into the element ``container_id`` with the same code as
    the job page: an import map of ``data:`` URLs keeps the report one self-contained file.
    The metrics travel as JSON with ``<`` escaped, so no value can close the script."""
    imports = {name: _data_url(path) for name, path in _CHART_FILES.items()}
    metrics = json.dumps(list(points), allow_nan=False).replace("<", "\\u003c")
    return (
        f'<script type="importmap">{json.dumps({"imports": imports})}</script>'
        f'<script type="application/json" id="chart-metrics">{metrics}</script>'
        '<script type="module">import { trainingCharts } from "charts";'
        f'trainingCharts(document.getElementById("{container_id}"),'
        'JSON.parse(document.getElementById("chart-metrics").textContent));</script>'
    )


def chart_css() -> str:
    """uPlot's stylesheet, inlined next to the report's own."""
    return (_STATIC / "vendor/uplot/uPlot.min.css").read_text()


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
.charts figure.chart { width: auto; border: 1px solid #ddd; border-radius: 4px; padding: 4px; }
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
    charts = chart_scripts(chart_points(data.epochs, data.map_before, data.rank1_before))
    hits_total = sum(len(q.hits) for q in data.queries)
    correct = sum(1 for q in data.queries for h in q.hits if h.correct)
    top1 = f"top-1 correct for {_top1(data.queries)} of {len(data.queries)} queries"
    if any(q.hits_before is not None for q in data.queries):
        top1 += f" after adaptation ({_top1(data.queries, before=True)} before)"
    queries = "".join(_query_row(q) for q in data.queries) or "<p>no searches were run</p>"
    notes = "".join(f"<p>{esc(n)}</p>" for n in data.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(data.title)}</title>
<style>{chart_css()}{_CSS}</style></head><body>
<h1>{esc(data.title)}</h1>
<p class="headline">{headline}</p>
<h2>Run</h2>
<table class="facts">{facts}</table>
{f"<ul>{links}</ul>" if links else ""}
<h2>Training curves</h2>
<div class="charts" id="charts"></div>
<noscript><p>The charts need JavaScript.</p></noscript>
{charts}
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
