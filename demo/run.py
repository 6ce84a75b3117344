"""``reid demo``: the whole product on one machine, from nothing to a search report.

Steps: draw a synthetic labeled source (daylight) and unlabeled target (night), start the
service in this process, upload both over HTTP, measure the starting model's target mAP,
run a short SpCL adaptation job while printing its progress, wait for its index, search a
few target queries, and write ``OUT/report.html``. Everything after the synthesis goes
through the public API, so the demo exercises exactly what a user's client would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from app.core.settings import Settings, load_settings
from demo.client import ApiClient, DemoError
from demo.data import (
    SOURCE_STYLE,
    TARGET_STYLE,
    evaluate_start,
    load_start,
    pack,
    rank_before,
    resolve_pretrained,
    synthesize,
)
from demo.plan import DemoOptions, Plan, make_plan
from demo.report import QueryResult, ReportData, render_report
from demo.searches import pick_queries, search_queries
from demo.service import DemoService
from demo.watch import Console, duration, pct, wait_index, watch_job

__all__ = ["OWNED", "demo_settings", "prepare_out", "run_demo"]

MARKER = ".reid-demo"  # marks a folder as the demo's own: only then may a rerun clear it
OWNED = ("data", "service", "report.html", "summary.json", "service.log")


# --------------------------------------------------------------------------------------
# small helpers


@dataclass
class _Timer:
    spans: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans[name] = time.perf_counter() - start


# --------------------------------------------------------------------------------------
# the output folder, settings and logs


def _lock(marker: Path) -> Any:
    """An exclusive lock on the marker: a second demo on the same folder is refused."""
    handle = marker.open("a+")  # held (and locked) for the whole run
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - not POSIX: no lock
        pass
    except OSError:
        handle.close()
        raise DemoError(f"another reid demo is using {marker.parent}") from None
    return handle


def prepare_out(out: Path) -> tuple[Path, Any, bool]:
    """Claim ``out`` (absolute): create it, or clear a previous demo's files in it.

    A non-empty folder without the demo's marker is refused, so ``--out`` can never wipe
    someone's data. Returns (folder, lock handle, whether a previous demo was cleared).
    """
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} exists and is not a folder; choose another --out")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.exists():
        raise DemoError(
            f"{out} is not empty and was not made by reid demo; choose another --out or remove it"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(marker)
    cleared = False
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
            cleared = True
        elif path.exists():
            path.unlink()
            cleared = True
    return out, lock, cleared


def demo_settings(out: Path, port: int) -> tuple[Settings, list[str]]:
    """The service's settings: the user's ``REID_*`` values, except where the demo must own
    them (its own SQLite and data folder, loopback, the embedded worker). Also returns the
    names of the variables overridden, to tell the user."""
    data_dir = out / "service"
    settings = load_settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{(data_dir / 'reid.db').as_posix()}",
        broker_url="",  # blank = none: the embedded worker runs the job
        host="127.0.0.1",
        port=port,
    )
    overridden = [
        f"REID_{name}"
        for name in ("DATA_DIR", "DATABASE_URL", "BROKER_URL", "HOST", "PORT")
        if os.environ.get(f"REID_{name}")
    ]
    return settings, overridden


@contextmanager
def _logging_to(path: Path, level: str) -> Iterator[None]:
    """Service logs to ``path``; only warnings reach the terminal (progress is printed)."""
    root = logging.getLogger()
    previous = root.level
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in (file_handler, console):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(min(logging.getLevelName(level), logging.WARNING))
    try:
        yield
    finally:
        for handler in (file_handler, console):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous)


# --------------------------------------------------------------------------------------
# the run


@dataclass
class _State:
    """What the run learned so far; the report and summary.json are written from it."""

    options: DemoOptions
    plan: Plan
    out: Path
    url: str = ""
    warning: str | None = None
    config: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)
    job: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    results: list[QueryResult] = field(default_factory=list)
    timer: _Timer = field(default_factory=_Timer)
    started: float = field(default_factory=time.perf_counter)


def run_demo(options: DemoOptions, stream: TextIO | None = None) -> int:
    """Run the demo; 0 on success. Raises :class:`DemoError` / :class:`ApiError`."""
    console = Console(stream or sys.stdout)
    plan = make_plan(options)
    out, lock, cleared = prepare_out(options.out)
    try:
        settings, overridden = demo_settings(out, options.port)
        service = DemoService(settings)
        service.bind()  # a busy port fails now, before minutes of work
        with _logging_to(out / "service.log", settings.log_level):
            try:
                if cleared:
                    console.line(f"reid demo: starting over in {out} (previous demo removed)")
                if overridden:
                    names = ", ".join(overridden)
                    console.line(f"reid demo: ignoring {names} (the demo's own service)")
                state = _State(options, plan, out)
                _prepare_data(state, console)
                service.start()
                state.url = service.url
                key = settings.api_keys[0] if settings.api_keys else None
                _adapt_and_search(state, ApiClient(service.url, key), console)
                _write_outputs(state, console)
                if options.keep_running:
                    _keep_running(state, console, key is not None)
            finally:
                service.stop()  # a running job is checkpointed and left queued
        return 0
    finally:
        lock.close()


def _prepare_data(state: _State, console: Console) -> None:
    """Synthetic datasets and their archives (before the service: nothing waits on it)."""
    state.warning = resolve_pretrained(state.plan.arch)[1]
    if state.warning:
        console.line(state.warning)
    data = state.out / "data"
    with state.timer.span("synthesis"):
        state.counts = synthesize(data, state.plan, state.options.seed)
        for name in state.counts:
            pack(data / name, data / f"{name}.zip")
    for name, style in (("source", SOURCE_STYLE), ("target", TARGET_STYLE)):
        c = state.counts[name]
        console.line(
            f"synth {name}: {style} style, {c['identities']} people, {c['cameras']} cameras, "
            f"{c['train']} train / {c['query']} query / {c['gallery']} gallery images"
        )


def _upload(state: _State, client: ApiClient, console: Console) -> None:
    with state.timer.span("upload"):
        for name, labeled in (("source", True), ("target", False)):
            t0 = time.perf_counter()
            row = client.upload(state.out / "data" / f"{name}.zip", f"demo-{name}", labeled)
            state.datasets[name] = row
            s = row["splits"]
            console.line(
                f"uploaded {name} as dataset {row['id']} "
                f"({'labeled' if labeled else 'unlabeled'}): {row['num_images']} images, "
                f"{s['train']} train / {s['query']} query / {s['gallery']} gallery, "
                f"{len(row['rejected'])} rejected ({time.perf_counter() - t0:.1f}s)"
            )


def _adapt_and_search(state: _State, client: ApiClient, console: Console) -> None:
    """Everything over HTTP: uploads, the job, its index, the searches (plus the local
    baseline of the starting model, measured before the job takes the CPU)."""
    plan, say, timer = state.plan, console.line, state.timer
    health = client.get("/health")
    say(f"service: {state.url} (embedded worker), health {health.get('status')}")
    _upload(state, client, console)
    target_id = state.datasets["target"]["id"]

    pretrained = "none" if state.warning else "imagenet"
    state.config = plan.job_config(pretrained, 1, state.options.device, state.options.workers)
    say(f"evaluating the starting model ({plan.arch}, {pretrained} weights) on the target")
    with timer.span("evaluation before"):
        start = load_start(state.out / "data" / "target", state.config, state.options.device)
        state.before = evaluate_start(start)
    say(f"target mAP before adaptation: {pct(state.before['mAP'])} "
        f"(rank-1 {pct(state.before['rank1'])})")  # fmt: skip

    body = {
        "source_dataset_id": state.datasets["source"]["id"],
        "target_dataset_id": target_id,
        "config": state.config,
    }
    job = client.post_json("/jobs", body)
    say(f"job {job['id']}: SpCL adaptation, {plan.epochs} epochs x {plan.iters} iterations, "
        f"batch {plan.batch_size} source + {plan.batch_size} target images")  # fmt: skip
    with timer.span("adaptation job"):
        state.job = job = watch_job(client, job["id"], console)
    if job["status"] != "succeeded":
        raise DemoError(f"job {job['id']} {job['status']}: {job.get('error') or 'no error given'}")
    evaluated = [e for e in job["metrics"] if e.get("mAP") is not None]
    state.after = evaluated[-1] if evaluated else {}
    say(f"job {job['id']} succeeded: model {job['model_id']} "
        f"({duration(timer.spans['adaptation job'])})")  # fmt: skip

    with timer.span("index wait"):
        state.index = wait_index(client, job["model_id"], target_id)
    say(f"index {state.index['id']}: {state.index['size']} target images, {state.index['type']}")

    with timer.span("searches"):
        picked = pick_queries(client, target_id, plan.queries)
        results = search_queries(client, job["model_id"], target_id, picked, top_k=8)
    with timer.span("rankings before"):
        ranked = rank_before(start, picked, top_k=8)
    state.results = [replace(q, hits_before=b) for q, b in zip(results, ranked, strict=True)]
    top1 = sum(1 for q in state.results if q.hits and q.hits[0].correct)
    top1_before = sum(1 for q in state.results if q.hits_before and q.hits_before[0].correct)
    say(f"searched {len(results)} target queries: top-1 correct for {top1} "
        f"({top1_before} with the starting model)")  # fmt: skip


def _write_outputs(state: _State, console: Console) -> None:
    """report.html, summary.json, and the before/after lines."""
    say = console.line
    total = time.perf_counter() - state.started
    report_path = state.out / "report.html"
    report_path.write_text(render_report(_report(state, total)), encoding="utf-8")
    before, after = state.before, state.after
    summary = {
        "map_before": before["mAP"],
        "rank1_before": before["rank1"],
        "map_after": after.get("mAP"),
        "rank1_after": after.get("rank1"),
        "seconds": {k: round(v, 1) for k, v in {**state.timer.spans, "total": total}.items()},
        "job": state.job,
        "index": state.index,
        "searches": [
            {"image_id": q.image_id, "pid": q.pid, "camid": q.camid,
             "hits": [{"pid": h.pid, "camid": h.camid, "score": h.score} for h in q.hits]}
            for q in state.results
        ],
    }  # fmt: skip
    (state.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    gain = (
        "" if after.get("mAP") is None else f" ({100 * (after['mAP'] - before['mAP']):+.1f} points)"
    )
    say("")
    say(f"target mAP before adaptation: {pct(before['mAP'])} (rank-1 {pct(before['rank1'])})")
    say(f"target mAP after adaptation:  {pct(after.get('mAP'))} (rank-1 {pct(after.get('rank1'))})")
    say(
        f"target mAP: {pct(before['mAP'])} before adaptation -> {pct(after.get('mAP'))} after{gain}"
    )
    say(f"report: {report_path}")
    say(f"done in {duration(total)}")


def _keep_running(state: _State, console: Console, key: bool) -> None:
    """Print how to use the running service, then wait for Ctrl-C."""
    url, job = state.url, state.job
    auth = " -H 'X-API-Key: <one of REID_API_KEYS>'" if key else ""
    lines = [
        "",
        f"The service keeps running at {url} with the demo's datasets, model and index.",
        f"  web UI:     {url}/ui/jobs/{job['id']}  (search with the model: {url}/ui/search)",
        f"  API docs:   {url}/docs",
        f"  datasets:   curl{auth} {url}/datasets",
        f"  the job:    curl{auth} {url}/jobs/{job['id']}",
        f"  the model:  curl{auth} -o model.pt {url}/models/{job['model_id']}/download",
    ]
    example = state.results[0] if state.results else None
    if example is not None and example.image_id is not None:
        lines += [
            f"  an image:   curl{auth} -o query.jpg {url}/images/{example.image_id}",
            f"  search:     curl{auth} -F image=@query.jpg -F model_id={job['model_id']} "
            f"-F top_k=5 -F split=gallery {url}/search",
        ]
    lines.append("Press Ctrl-C to stop it.")
    for line in lines:
        console.line(line)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.line("stopping the service")


def _recipe(job: dict[str, Any]) -> str:
    """The job's recipe and the DBSCAN radius it clustered with (chosen from the data)."""
    config = job["config"]
    eps = next((e["eps"] for e in job["metrics"] if e.get("eps") is not None), None)
    radius = f"eps {eps:g}" if eps is not None else "eps ?"
    if config.get("eps") == "auto":
        radius += " (chosen from the data)"
    return f"recipe {config.get('recipe', 'paper')}, {radius}"


def _report(state: _State, total: float) -> ReportData:
    plan, config, url = state.plan, state.config, state.url
    src, tgt = state.counts["source"], state.counts["target"]
    before, after, job = state.before, state.after, state.job
    ids = {name: row["id"] for name, row in state.datasets.items()}
    timings = ", ".join(f"{name} {duration(s)}" for name, s in state.timer.spans.items())
    facts = [
        ("source (labeled)", f"{SOURCE_STYLE} style (daylight): {src['train_identities']} "
         f"training people, {src['train']} images; dataset {ids['source']}"),
        ("target (unlabeled)", f"{TARGET_STYLE} style (night): {tgt['train']} training images, "
         f"no labels uploaded; evaluated on {tgt['query']} query / {tgt['gallery']} gallery "
         f"images of {tgt['test_identities']} other people; dataset {ids['target']}"),
        ("model", f"{plan.arch} {plan.height}x{plan.width}, {config['pretrained']} weights, "
         "domain-specific BN"),
        ("training", f"SpCL UDA, {plan.epochs} epochs x {plan.iters} iterations, batch "
         f"{plan.batch_size} + {plan.batch_size}, {_recipe(job)}, k1 {plan.k1}, k2 {plan.k2}, "
         f"seed {config['seed']}, device {config['device']}"),
        ("before", f"mAP {pct(before['mAP'])}, rank-1 {pct(before['rank1'])}, rank-5 "
         f"{pct(before.get('rank5'))} (the starting model, untrained)"),
        ("after", f"mAP {pct(after.get('mAP'))}, rank-1 {pct(after.get('rank1'))}, rank-5 "
         f"{pct(after.get('rank5'))} (job {job['id']}, model {job['model_id']})"),
        ("index", f"{state.index['id']}: {state.index['size']} images, {state.index['type']}"),
        ("time", f"{duration(total)} in all: {timings}"),
        ("command", "reid demo" + (" --quick" if state.options.quick else "")),
    ]  # fmt: skip
    links = [
        ("API docs", f"{url}/docs"),
        (f"job {job['id']}", f"{url}/jobs/{job['id']}"),
        (f"model {job['model_id']} (download)", f"{url}/models/{job['model_id']}/download"),
        ("target dataset", f"{url}/datasets/{ids['target']}"),
    ]
    notes = [
        "The links work while the service runs (reid demo --keep-running). The service's log "
        "is service.log next to this file; the numbers are in summary.json.",
    ]
    if state.warning:
        notes.insert(0, state.warning)
    return ReportData(
        title="reid demo: SpCL adaptation from daylight to night cameras",
        map_before=before["mAP"],
        map_after=after.get("mAP"),
        rank1_before=before["rank1"],
        rank1_after=after.get("rank1"),
        epochs=list(job["metrics"]),
        queries=state.results,
        facts=facts,
        links=links,
        notes=notes,
    )
