"""Command-line rendering of training events: a live progress line, log lines, metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from trainer.events import Event, Iteration

# Iteration events written to metrics.jsonl: every Nth, plus each epoch's last.
JSONL_ITERATION_STRIDE = 10


class ProgressReporter:
    """Callback for `SpCLTrainer` that shows progress on a terminal and logs every event."""

    def __init__(self, metrics_path: Path, stream: TextIO = sys.stderr) -> None:
        self.metrics = Path(metrics_path).open("a", encoding="utf-8")  # noqa: SIM115
        self.stream = stream
        self.live = stream.isatty()

    def close(self) -> None:
        self.metrics.close()

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Iteration) or (
            event.iteration % JSONL_ITERATION_STRIDE == 0 or event.iteration == event.iters
        ):
            self.metrics.write(json.dumps(event.to_dict()) + "\n")
            self.metrics.flush()
        line = self._describe(event)
        if line is None:
            return
        if isinstance(event, Iteration):
            if self.live:
                self.stream.write("\r" + line)
            elif event.iteration % max(1, event.iters // 5) == 0 or event.iteration == event.iters:
                self.stream.write(line + "\n")
            if self.live and event.iteration == event.iters:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def _describe(event: Event) -> str | None:
        d = event.to_dict()
        if event.kind == "iteration":
            done = int(20 * d["iteration"] / d["iters"])
            losses = " ".join(
                f"{name} {d[key]:.3f}"
                for name, key in (("src", "loss_source"), ("tgt", "loss_target"))
                if d[key] is not None
            )
            return (
                f"epoch {d['epoch'] + 1} [{'#' * done}{'.' * (20 - done)}] "
                f"{d['iteration']}/{d['iters']} loss {d['loss']:.3f} ({losses}) "
                f"lr {d['lr']:.2e} {d['images_per_s']:.1f} img/s"
            )
        if event.kind == "run_start":
            return (
                f"{d['mode']} on {d['device']}: {d['source_images']} source images "
                f"({d['source_classes']} classes), {d['target_images']} target images, "
                f"{d['epochs']} epochs x {d['iters']} iterations"
                + (f", resuming at epoch {d['start_epoch'] + 1}" if d["start_epoch"] else "")
            )
        if event.kind == "eps_chosen":
            tried = ", ".join(f"{e}: {n:.1f}" for e, n in d["score_by_eps"].items())
            return f"eps auto: {d['eps']:g} (effective number of clusters by radius: {tried})"
        if event.kind == "epoch_start":
            return (
                f"epoch {d['epoch'] + 1}: {d['clusters']} clusters, {d['unclustered']} "
                f"un-clustered at eps {d['eps']:g}, threshold {d['threshold']} "
                f"({d['clustering_seconds']:.1f}s)"
            )
        if event.kind == "epoch_end":
            return (
                f"epoch {d['epoch'] + 1} done: loss {d['loss']:.3f}, "
                f"{d['images_per_s']:.1f} img/s, {d['seconds']:.1f}s"
            )
        if event.kind == "evaluation":
            return (
                f"epoch {d['epoch'] + 1} evaluation: mAP {100 * d['mAP']:.1f}% "
                f"rank-1 {100 * d['rank1']:.1f}% rank-5 {100 * d['rank5']:.1f}% "
                f"rank-10 {100 * d['rank10']:.1f}%"
            )
        if event.kind == "run_end":
            return f"{d['status']} after {d['seconds']:.0f}s: {d['model_path'] or 'no model'}"
        return None
