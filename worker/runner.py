"""Run one job: the single code path behind the Celery task and the embedded worker.

``execute_job`` claims the job in the database (atomic, so a duplicate or redelivered message
is a no-op), builds the trainer's inputs from the datasets' rows, runs ``SpCLTrainer``
with ``resume=True`` in ``DATA_DIR/jobs/<id>/`` (a second attempt continues from the
checkpoint), and records the outcome. Exceptions become a ``failed`` job with the message;
they never escape, so the worker process lives on.

A heartbeat thread refreshes ``heartbeat_at`` every ``heartbeat_interval_s`` even while the
engine is inside a long step (clustering, feature extraction) and reads ``cancel_requested``;
the engine's ``should_stop`` only reads a flag that thread sets, so stopping costs nothing
per iteration and happens within one iteration of the request (plus the check interval).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import (
    Job,
    JobPhase,
    JobStatus,
    Model,
    SearchIndex,
    SearchIndexStatus,
    Split,
)
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.datasets.members import dataset_members
from app.jobs.state import claim_job, finish_job, heartbeat, release_job
from app.search.indexes import create_index
from worker.index_build import build_index

__all__ = ["JobOutcome", "execute_job", "worker_name"]

logger = logging.getLogger(__name__)

_PHASES = frozenset(JobPhase)  # the engine phases a job row records


def worker_name(suffix: str = "") -> str:
    """``host:pid[:suffix]``: enough to find the process that holds a job."""
    return f"{socket.gethostname()}:{os.getpid()}{':' + suffix if suffix else ''}"


@dataclass
class JobOutcome:
    """What ``execute_job`` did: ``skipped`` when the claim failed (nothing to do)."""

    job_id: int
    status: str
    error: str | None = None


def _items(session: Session, storage: StorageLayout, dataset_id: int, splits: tuple[str, ...]):
    """Trainer items for the dataset's members in ``splits``, by split."""
    from trainer.data.readers import Item

    out: dict[str, list[Any]] = {s: [] for s in splits}
    for m in dataset_members(session, storage, dataset_id, splits):
        out[m.split].append(Item(path=m.path, pid=m.pid, camid=m.camid, split=m.split))
    return out


def _build_inputs(session: Session, storage: StorageLayout, job: Job) -> dict[str, Any]:
    from trainer.engine import DomainData, EvalData

    if job.target_dataset_id is None:
        raise ValueError("the target dataset was deleted")
    root = storage.images_dir
    train = Split.TRAIN.value
    target_items = _items(session, storage, job.target_dataset_id, (train,))[train]
    # the target's training labels are never read (they are not even stored)
    target_items = [replace(i, pid=None) for i in target_items]
    inputs: dict[str, Any] = {"target": DomainData(root, target_items)}
    if job.source_dataset_id is not None:
        source_items = _items(session, storage, job.source_dataset_id, (train,))[train]
        inputs["source"] = DomainData(root, source_items)
    if job.eval_dataset_id is not None:
        split = _items(
            session, storage, job.eval_dataset_id, (Split.QUERY.value, Split.GALLERY.value)
        )
        inputs["evaluation"] = EvalData(root, split["query"], split["gallery"])
    return inputs


@dataclass
class _Progress:
    """The job's progress as the engine reports it, written to the DB throttled."""

    epochs: int
    iterations: int
    metrics: list[dict[str, Any]]
    phase: str | None = None
    epoch: int = 0
    iteration: int = 0
    # where an earlier attempt had got to: a resumed run restarts from its last checkpoint,
    # possibly behind it, and what clients see must never move backwards
    floor: tuple[int, int] = (0, 0)
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def epoch_entry(self, epoch: int) -> dict[str, Any]:
        for entry in self.metrics:
            if entry.get("epoch") == epoch:
                return entry
        entry = {"epoch": epoch}
        self.metrics.append(entry)
        self.metrics.sort(key=lambda e: e["epoch"])
        return entry

    def columns(self) -> dict[str, Any]:
        epoch, iteration = max((self.epoch, self.iteration), self.floor)
        return {
            "phase": self.phase,
            "epoch": epoch,
            "iteration": iteration,
            "metrics": [dict(e) for e in self.metrics],
        }


class _JobRun:
    """Callback, cancellation flag and heartbeat of one running job."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        job: Job,
        worker: str,
        shutdown: threading.Event | None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.job_id = job.id
        self.worker = worker
        self.shutdown = shutdown or threading.Event()
        self.progress = _Progress(
            epochs=job.epochs,
            iterations=job.iterations,
            metrics=[dict(e) for e in job.metrics],
            floor=(job.epoch or 0, job.iteration or 0),
        )
        self.cancelled = threading.Event()
        self.lost = threading.Event()  # another worker owns the job now
        self.done = threading.Event()
        self.last_write = 0.0
        self.thread = threading.Thread(
            target=self._beat, name=f"job-{job.id}-heartbeat", daemon=True
        )

    # --- heartbeat thread
    def _beat(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, self.settings.cancel_check_interval_s)
        while not self.done.wait(interval):
            try:
                self.write(force=False, heartbeat_only=True)
            except Exception as exc:  # the DB may be briefly away; the next beat retries
                logger.warning("job %d: heartbeat failed: %s", self.job_id, exc)

    def write(self, force: bool, heartbeat_only: bool = False) -> None:
        with self.progress.lock:
            now = time.monotonic()
            if (
                not heartbeat_only
                and not force
                and (now - self.last_write < self.settings.progress_interval_s)
            ):
                return
            values = self.progress.columns() if (self.progress.dirty or force) else {}
            self.progress.dirty = False
            self.last_write = now
        owned, cancel = heartbeat(self.factory, self.job_id, self.worker, **values)
        if not owned:
            self.lost.set()
        if cancel:
            self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set() or self.shutdown.is_set()

    # --- engine callback
    def __call__(self, event: Any) -> None:
        from trainer import events as ev

        p = self.progress
        force = False
        with p.lock:
            p.dirty = True
            if isinstance(event, ev.Phase):
                p.phase = event.name if event.name in _PHASES else p.phase
                force = True
            elif isinstance(event, ev.RunStart):
                p.epoch, p.iteration = event.start_epoch, event.start_iteration
            elif isinstance(event, ev.EpochStart):
                p.epoch, p.iteration = event.epoch, 0
                p.epoch_entry(event.epoch).update(
                    clusters=event.clusters,
                    unclustered=event.unclustered,
                    threshold=event.threshold,
                    clustering_seconds=event.clustering_seconds,
                    eps=event.eps,
                )
            elif isinstance(event, ev.Iteration):
                p.epoch, p.iteration = event.epoch, event.iteration
            elif isinstance(event, ev.EpochEnd):
                p.epoch, p.iteration = event.epoch + 1, 0
                p.epoch_entry(event.epoch).update(
                    loss=event.loss,
                    loss_source=event.loss_source,
                    loss_target=event.loss_target,
                    lr=event.lr,
                    images_per_s=event.images_per_s,
                    seconds=event.seconds,
                )
                force = True
            elif isinstance(event, ev.Evaluation):
                p.epoch_entry(event.epoch).update(
                    mAP=event.mAP, rank1=event.rank1, rank5=event.rank5, rank10=event.rank10
                )
                force = True
            elif isinstance(event, ev.RunEnd):
                force = True
            else:
                p.dirty = isinstance(event, ev.CheckpointSaved) or p.dirty
        self.write(force=force)


def _register_model(
    factory: sessionmaker[Session],
    storage: StorageLayout,
    job_id: int,
    model_path: Path,
    evaluation: dict[str, float] | None,
) -> int:
    from trainer.models.export import load_model

    _, meta = load_model(model_path)
    with factory() as session:
        existing = session.scalar(select(Model).where(Model.job_id == job_id))
        if existing is not None:
            return existing.id
        row = Model(
            job_id=job_id,
            arch=str(meta["arch"]),
            height=int(meta["height"]),
            width=int(meta["width"]),
            feature_dim=int(meta["feature_dim"]),
            metrics=dict(evaluation or {}),
            path=model_path.relative_to(storage.root).as_posix(),
            size_bytes=model_path.stat().st_size,
        )
        session.add(row)
        session.commit()
        return row.id


def _index_target(
    settings: Settings,
    factory: sessionmaker[Session],
    run: _JobRun,
    model_id: int,
    dataset_id: int,
) -> None:
    """The ``indexing`` phase: index the target dataset (all splits) with the new model.

    The job's heartbeat keeps running meanwhile. A second attempt reuses the job's index row;
    a failed build is recorded on the index (the model stands: ``POST /indexes`` retries).
    """
    with run.progress.lock:
        run.progress.phase = JobPhase.INDEXING.value
        run.progress.dirty = True
    run.write(force=True)
    with factory() as session:
        row = session.scalar(select(SearchIndex).where(SearchIndex.job_id == run.job_id))
        if row is None:
            row = create_index(session, model_id, dataset_id, job_id=run.job_id)
        index_id, status = row.id, row.status
    if status == SearchIndexStatus.BUILDING.value:
        outcome = build_index(settings, factory, index_id, run.worker)
        logger.info("job %d: index %d %s", run.job_id, index_id, outcome)


def execute_job(
    settings: Settings,
    factory: sessionmaker[Session],
    job_id: int,
    *,
    worker: str | None = None,
    shutdown: threading.Event | None = None,
) -> JobOutcome:
    """Claim and run job ``job_id`` to a terminal state (or back to the queue on shutdown)."""
    from trainer.checkpoint import CHECKPOINT_NAME
    from trainer.config import TrainConfig
    from trainer.engine import SpCLTrainer

    worker = worker or worker_name()
    storage = StorageLayout(settings.data_dir)
    if not claim_job(factory, job_id, worker, settings.heartbeat_timeout_s, settings.max_attempts):
        logger.info("job %d: not claimable (running elsewhere or finished); skipped", job_id)
        return JobOutcome(job_id, "skipped")
    logger.info("job %d: claimed by %s", job_id, worker)
    run: _JobRun | None = None
    try:
        with factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            inputs = _build_inputs(session, storage, job)
            target_id = job.target_dataset_id
            config = TrainConfig.from_stored(dict(job.config))
        if settings.loader_workers is not None:
            config = replace(config, workers=settings.loader_workers)
        run = _JobRun(settings, factory, job, worker, shutdown)
        run.thread.start()
        trainer = SpCLTrainer(
            config, storage.job_dir(job_id), callback=run, should_stop=run.should_stop, **inputs
        )
        result = trainer.run(resume=True)
        if result.status == "succeeded" and result.model_path is not None:
            model_id = _register_model(
                factory, storage, job_id, Path(result.model_path), result.last_evaluation
            )
            if target_id is not None:
                _index_target(settings, factory, run, model_id, target_id)
        run.done.set()
        columns = run.progress.columns()
        if result.status == "succeeded" and result.model_path is not None:
            columns.update(phase=None, model_id=model_id, iteration=0, epoch=config.epochs)
            finish_job(factory, job_id, worker, JobStatus.SUCCEEDED, **columns)
            # the checkpoint (weights, optimiser, memory) only served resuming: free the disk
            (storage.job_dir(job_id) / CHECKPOINT_NAME).unlink(missing_ok=True)
            return JobOutcome(job_id, "succeeded")
        if run.cancelled.is_set():
            finish_job(factory, job_id, worker, JobStatus.CANCELLED, **columns)
            return JobOutcome(job_id, "cancelled")
        if run.lost.is_set():
            logger.warning("job %d: taken over by another worker; stopped", job_id)
            return JobOutcome(job_id, "lost")
        heartbeat(factory, job_id, worker, **columns)
        release_job(factory, job_id, worker)  # shutdown: resume from the checkpoint later
        return JobOutcome(job_id, "queued")
    except Exception as exc:
        logger.exception("job %d failed", job_id)
        message = f"{type(exc).__name__}: {exc}"[:4000]
        try:
            extra = run.progress.columns() if run is not None else {}
            finish_job(factory, job_id, worker, JobStatus.FAILED, error=message, **extra)
        except Exception:
            logger.exception("job %d: could not record the failure", job_id)
        return JobOutcome(job_id, "failed", message)
    finally:
        if run is not None:
            run.done.set()
            if run.thread.is_alive():
                run.thread.join(timeout=5)
