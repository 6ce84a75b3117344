"""Following the adaptation job from the client side: progress lines, then its index.

Why polling ``GET /jobs/{id}`` rather than the SSE stream: the same information, and a plain
request per second works through any HTTP client, including the standard library's. A line
is printed for each new fact (phase, pseudo-labels, loss, mAP); on a terminal the iteration
count is a live line, elsewhere (CI logs) it is printed every 15 seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from demo.client import ApiClient, DemoError

__all__ = ["TERMINAL", "Console", "duration", "pct", "wait_index", "watch_job"]

TERMINAL = ("succeeded", "failed", "cancelled")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@dataclass
class Console:
    """Progress output: one line per step, flushed; a live line on a terminal."""

    stream: TextIO = field(default_factory=lambda: sys.stdout)
    live_open: bool = False

    @property
    def tty(self) -> bool:
        return self.stream.isatty()

    def line(self, text: str) -> None:
        if self.live_open:  # the live line is superseded: clear it
            self.stream.write("\r\033[K")
            self.live_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def live(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self.live_open = True


def _epoch_lines(job: dict, printed: set[tuple[int, str]]) -> list[str]:
    """Lines for per-epoch facts not shown yet: clusters, loss, mAP."""
    total = job["progress"]["epochs"]
    lines = []
    for entry in job["metrics"]:
        e = int(entry.get("epoch", 0))
        tag = f"epoch {e + 1}/{total}"
        if "clusters" in entry and (e, "clusters") not in printed:
            printed.add((e, "clusters"))
            n = entry["clusters"]
            radius = f" at eps {entry['eps']:g}" if entry.get("eps") is not None else ""
            lines.append(
                f"{tag}: pseudo-labels: {n} cluster{'s' * (n != 1)}, "
                f"{entry.get('unclustered', 0)} un-clustered target images{radius}"
            )
        if entry.get("loss") is not None and (e, "loss") not in printed:
            printed.add((e, "loss"))
            parts = [
                f"{name} {entry[key]:.3f}"
                for name, key in (("source", "loss_source"), ("target", "loss_target"))
                if entry.get(key) is not None
            ]
            lines.append(
                f"{tag} trained: loss {entry['loss']:.3f}"
                + (f" ({' + '.join(parts)})" if parts else "")
                + f", {entry.get('seconds', 0):.0f}s, {entry.get('images_per_s', 0):.1f} img/s"
            )
        if entry.get("mAP") is not None and (e, "mAP") not in printed:
            printed.add((e, "mAP"))
            lines.append(f"{tag}: target mAP {pct(entry['mAP'])}, rank-1 {pct(entry.get('rank1'))}")
    return lines


_PHASE_TEXT = {
    "initialising": "initialising: encoder, then a feature pass over both datasets for "
    "the hybrid memory",
    "clustering": "clustering the target (k-reciprocal Jaccard distance + DBSCAN)",
    "training": "training",
    "evaluating": "evaluating on the target's query/gallery",
    "indexing": "indexing the target dataset with the adapted model",
}


def watch_job(
    client: ApiClient,
    job_id: int,
    console: Console,
    poll_s: float = 1.0,
    queued_timeout_s: float = 120.0,
) -> dict:
    """Poll ``GET /jobs/{id}`` and print what changed until the job ends; the final job."""
    printed: set[tuple[int, str]] = set()
    last_phase: tuple[Any, ...] | None = None
    last_live = 0.0
    since = time.monotonic()
    while True:
        job = client.get(f"/jobs/{job_id}")
        progress = job["progress"]
        pct = f"[{100 * progress['fraction']:3.0f}%]"
        for text in _epoch_lines(job, printed):
            console.line(f"{pct} {text}")
        status, phase = job["status"], job["phase"]
        # the engine counts an epoch done before evaluating it: that one is ``epoch`` itself
        epoch = min(progress["epoch"] + (phase != "evaluating"), progress["epochs"])
        key = (status, phase, epoch if phase in ("clustering", "training", "evaluating") else 0)
        if status == "queued" and last_phase is None:
            console.line(f"job {job_id}: queued")
        result = {"evaluating": "mAP", "clustering": "clusters"}.get(phase)
        stale = result is not None and (epoch - 1, result) in printed  # shown: phase is over
        if key != last_phase and status == "running" and phase not in (None, "training"):
            where = f"epoch {epoch}/{progress['epochs']}: " if key[2] else ""
            if not stale:
                console.line(f"{pct} {where}{_PHASE_TEXT.get(phase, phase)}")
        last_phase = key
        if status == "queued" and time.monotonic() - since > queued_timeout_s:
            raise DemoError(f"job {job_id} was not started within {queued_timeout_s:.0f}s")
        if status in TERMINAL:
            return job
        if status == "running" and phase == "training":
            eta = job.get("eta_seconds")
            text = (
                f"{pct} epoch {epoch}/{progress['epochs']}: training, iteration "
                f"{progress['iteration']}/{progress['iterations']}"
                + (f", eta {duration(eta)}" if eta is not None else "")
            )
            if console.tty:
                console.live(text)
            elif time.monotonic() - last_live >= 15:
                console.line(text)
                last_live = time.monotonic()
        time.sleep(poll_s)


def wait_index(client: ApiClient, model_id: int, dataset_id: int, timeout_s: float = 900) -> dict:
    """The model's index of the target: built by the job's last phase (requested if absent)."""
    deadline = time.monotonic() + timeout_s
    requested = False
    while time.monotonic() < deadline:
        items = client.get("/indexes", model_id=model_id, dataset_id=dataset_id)["items"]
        if items and items[0]["status"] == "ready":
            return items[0]
        if items and items[0]["status"] == "failed":
            raise DemoError(f"index {items[0]['id']} failed: {items[0]['error']}")
        if not items and not requested:
            client.post_json("/indexes", {"model_id": model_id, "dataset_id": dataset_id})
            requested = True
        time.sleep(0.5)
    raise DemoError(f"the index of model {model_id} was not ready within {timeout_s:.0f}s")
