"""Typed progress events of a training run.

The engine reports through one callback; the CLI renders events as a progress bar and log lines
and appends them to `metrics.jsonl`, and the job worker stores them in the database. Each event
is a small frozen dataclass with a `kind` and a JSON-ready `to_dict()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStart(Event):
    kind: ClassVar[str] = "run_start"
    mode: str  # "uda" | "usl" | "source_only"
    epochs: int
    iters: int
    start_epoch: int
    start_iteration: int
    source_images: int
    source_classes: int
    target_images: int
    device: str


@dataclass(frozen=True)
class Phase(Event):
    """The run entered a phase: initialising, clustering, training or evaluating."""

    kind: ClassVar[str] = "phase"
    name: str
    epoch: int


@dataclass(frozen=True)
class EpsChosen(Event):
    """The DBSCAN radius chosen from the data (``eps="auto"``), with what each radius gave."""

    kind: ClassVar[str] = "eps_chosen"
    epoch: int
    eps: float
    score_by_eps: dict[str, float]  # radius (as text: JSON keys) → effective cluster number


@dataclass(frozen=True)
class EpochStart(Event):
    """Pseudo-labels of this epoch (zeros in source-only mode), clustered at radius ``eps``."""

    kind: ClassVar[str] = "epoch_start"
    epoch: int
    clusters: int
    unclustered: int
    threshold: float | None
    clustering_seconds: float
    eps: float


@dataclass(frozen=True)
class Iteration(Event):
    kind: ClassVar[str] = "iteration"
    epoch: int
    iteration: int  # 1-based: iterations done in this epoch
    iters: int
    loss: float
    loss_source: float | None
    loss_target: float | None
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epoch: int
    loss: float
    loss_source: float | None
    loss_target: float | None
    lr: float
    images_per_s: float
    seconds: float


@dataclass(frozen=True)
class Evaluation(Event):
    kind: ClassVar[str] = "evaluation"
    epoch: int
    mAP: float
    rank1: float
    rank5: float
    rank10: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    epoch: int
    iteration: int
    path: str


@dataclass(frozen=True)
class RunEnd(Event):
    kind: ClassVar[str] = "run_end"
    status: str  # "succeeded" | "cancelled"
    epochs_done: int
    model_path: str | None
    seconds: float


Callback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback."""
