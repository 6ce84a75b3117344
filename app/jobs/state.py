"""The job state machine, kept in the database so that no broker or worker can lose a job.

::

    queued ──claim──> running ──> succeeded | failed | cancelled
      │  ^               │
      │  └── reaper / ───┘  (heartbeat lapsed: requeued, or failed after max_attempts)
      │      shutdown
      └──cancel──> cancelled   (a queued job never starts)

Every transition is one conditional ``UPDATE … WHERE status = …`` so that two workers (or
a worker and the API) racing on a job cannot both win: the claim in particular is atomic,
which makes a redelivered broker message for a running or finished job harmless.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import (
    Dataset,
    DatasetImage,
    DatasetStatus,
    Job,
    JobStatus,
    Split,
    utcnow,
)
from trainer.config import TrainConfig

__all__ = [
    "JobInput",
    "JobInputError",
    "claim_job",
    "create_job",
    "finish_job",
    "heartbeat",
    "queued_job_ids",
    "reap_lapsed",
    "release_job",
    "request_cancel",
    "validate_config",
]


class JobInputError(ValueError):
    """Invalid job request; ``loc`` names the field (``body.config.epochs``, …)."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(loc)}: {msg}")
        self.loc = loc
        self.msg = msg


@dataclass(frozen=True)
class JobInput:
    target_dataset_id: int
    source_dataset_id: int | None
    eval_dataset_id: int | None
    config: dict[str, Any]


SERVICE_PRETRAINED = ("imagenet", "none")


def validate_config(values: dict[str, Any]) -> dict[str, Any]:
    """The full ``TrainConfig`` dict (defaults filled in), or :class:`JobInputError` naming
    the offending option: the trainer's own validation (types included), so API and CLI
    accept the same."""
    try:
        config = TrainConfig.from_dict(values)
    except TypeError as exc:  # a value of the wrong type reached a comparison
        raise JobInputError(("body", "config"), str(exc)) from None
    except ValueError as exc:
        message = str(exc)
        if message.startswith("unknown training option"):
            name = message.split(": ", 1)[-1].split(",")[0].strip()
        else:
            name = message.split(" ", 1)[0]
        raise JobInputError(("body", "config", name), message) from None
    if config.pretrained.lower() not in SERVICE_PRETRAINED:
        # a path would let any API client make the worker open files of its choice
        raise JobInputError(
            ("body", "config", "pretrained"),
            "'imagenet' or 'none' over the API (other ImageNet weights: put torchvision's file "
            "in the worker's $TORCH_HOME/hub/checkpoints)",
        )
    return config.to_dict()


def _ready(session: Session, dataset_id: int | None, field: str) -> Dataset:
    row = session.get(Dataset, dataset_id) if dataset_id is not None else None
    if row is None or row.status != DatasetStatus.READY:
        raise JobInputError(("body", field), f"no dataset with id {dataset_id}")
    return row


def _has_labeled_test_split(session: Session, dataset: Dataset) -> bool:
    if dataset.num_query == 0 or dataset.num_gallery == 0:
        return False
    unlabeled = exists().where(
        DatasetImage.dataset_id == dataset.id,
        DatasetImage.split.in_([Split.QUERY.value, Split.GALLERY.value]),
        DatasetImage.pid.is_(None) | DatasetImage.camid.is_(None),  # mAP/CMC need both
    )
    return not session.scalar(select(unlabeled))


def _check_input(session: Session, given: JobInput) -> JobInput:
    """Validate datasets and config; resolve the default evaluation dataset."""
    target = _ready(session, given.target_dataset_id, "target_dataset_id")
    if target.num_train == 0:
        raise JobInputError(("body", "target_dataset_id"), "the dataset has no train images")
    if given.source_dataset_id is not None:
        source = _ready(session, given.source_dataset_id, "source_dataset_id")
        if not source.labeled:
            raise JobInputError(("body", "source_dataset_id"), "a source dataset must be labeled")
        if source.num_train == 0:
            raise JobInputError(("body", "source_dataset_id"), "the dataset has no train images")
    eval_id = given.eval_dataset_id
    if eval_id is not None:
        evaluation = _ready(session, eval_id, "eval_dataset_id")
        if not _has_labeled_test_split(session, evaluation):
            raise JobInputError(
                ("body", "eval_dataset_id"), "the dataset has no labeled query and gallery"
            )
    elif _has_labeled_test_split(session, target):
        eval_id = target.id
    config = validate_config(given.config)
    return JobInput(target.id, given.source_dataset_id, eval_id, config)


def _request_hash(given: JobInput) -> str:
    body = {
        "target_dataset_id": given.target_dataset_id,
        "source_dataset_id": given.source_dataset_id,
        "eval_dataset_id": given.eval_dataset_id,
        "config": given.config,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def create_job(
    factory: sessionmaker[Session], given: JobInput, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Insert a queued job; returns ``(job, created)``.

    With an idempotency key, a repeat of the same request returns the first job
    (``created`` False) and the same key with another body is a :class:`JobInputError`. The
    hash covers the request *as sent* (before defaults), so a later change of defaults cannot
    turn a retry into a conflict.
    """
    request_hash = _request_hash(given)
    for _ in range(2):
        with factory() as session:
            if idempotency_key is not None:
                existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
                if existing is not None:
                    if existing.request_hash != request_hash:
                        raise JobInputError(
                            ("header", "Idempotency-Key"),
                            "this key was already used for a different request",
                        )
                    return existing, False
            checked = _check_input(session, given)
            job = Job(
                status=JobStatus.QUEUED.value,
                target_dataset_id=checked.target_dataset_id,
                source_dataset_id=checked.source_dataset_id,
                eval_dataset_id=checked.eval_dataset_id,
                config=checked.config,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                epochs=checked.config["epochs"],
                iterations=checked.config["iters"],
                metrics=[],
            )
            session.add(job)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if idempotency_key is None:
                    raise
                continue  # the same key was inserted concurrently: answer with that job
            return job, True
    raise RuntimeError("idempotency key race could not be resolved")  # pragma: no cover


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def claim_job(
    factory: sessionmaker[Session],
    job_id: int,
    worker: str,
    heartbeat_timeout_s: float,
    max_attempts: int | None = None,
) -> bool:
    """Atomically take a queued job (or one whose worker's heartbeat lapsed, while it has
    starts left) for ``worker``.

    False: it is running elsewhere, finished, cancelled, or unknown — the caller drops the
    message.
    """
    now = utcnow()
    lapsed = now - timedelta(seconds=heartbeat_timeout_s)
    with factory() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(
                    Job.status == JobStatus.QUEUED.value,
                    (Job.status == JobStatus.RUNNING.value)
                    & (Job.heartbeat_at < lapsed)
                    & (Job.attempts < (max_attempts if max_attempts is not None else 2**31 - 1)),
                ),
            )
            .values(
                status=JobStatus.RUNNING.value,
                worker=worker,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                phase=None,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return _rowcount(result) == 1


def heartbeat(
    factory: sessionmaker[Session], job_id: int, worker: str, **progress: Any
) -> tuple[bool, bool]:
    """Refresh the heartbeat (and write ``progress`` columns) while ``worker`` owns the job.

    Returns ``(owned, cancel_requested)``; not owned means the job was reaped and claimed by
    someone else, or finished: the caller must stop.
    """
    with factory() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value)
            .values(heartbeat_at=utcnow(), **progress)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        session.commit()
    return (row is not None, bool(row[0]) if row is not None else False)


def finish_job(
    factory: sessionmaker[Session],
    job_id: int,
    worker: str,
    status: JobStatus,
    **values: Any,
) -> bool:
    """Move a running job owned by ``worker`` to a terminal ``status``."""
    with factory() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value)
            .values(status=status.value, finished_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return _rowcount(result) == 1


def release_job(factory: sessionmaker[Session], job_id: int, worker: str) -> bool:
    """Give a running job back to the queue (worker shutting down); it resumes later from
    its checkpoint. The attempt is not counted against ``max_attempts``."""
    with factory() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING.value)
            .values(
                status=JobStatus.QUEUED.value,
                worker=None,
                heartbeat_at=None,
                attempts=Job.attempts - 1,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return _rowcount(result) == 1


def request_cancel(session: Session, job_id: int) -> Job | None:
    """Cancel: a queued job becomes ``cancelled`` at once; a running one gets the flag its
    worker polls. Finished jobs are left as they are. Returns the job (None: unknown)."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.expire_all()
    return session.get(Job, job_id)


def queued_job_ids(session: Session, limit: int = 10) -> list[int]:
    """Oldest queued jobs first (what the embedded worker takes next)."""
    query = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.cancel_requested.is_(False))
        .order_by(Job.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def reap_lapsed(
    factory: sessionmaker[Session],
    heartbeat_timeout_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> tuple[list[int], list[int]]:
    """Running jobs whose worker stopped heartbeating: requeue them (they resume from their
    checkpoint), or fail them once they used ``max_attempts`` starts. Returns
    ``(requeued, failed)`` ids."""
    now = now or utcnow()
    lapsed = now - timedelta(seconds=heartbeat_timeout_s)
    stale = (Job.status == JobStatus.RUNNING.value) & (Job.heartbeat_at < lapsed)
    with factory() as session:
        failed = list(
            session.scalars(
                update(Job)
                .where(stale, Job.attempts >= max_attempts)
                .values(
                    status=JobStatus.FAILED.value,
                    finished_at=now,
                    error=f"the worker was lost {max_attempts} time(s); giving up",
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        session.execute(
            update(Job)
            .where(stale, Job.cancel_requested.is_(True))
            .values(status=JobStatus.CANCELLED.value, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        requeued = list(
            session.scalars(
                update(Job)
                .where(stale, Job.attempts < max_attempts)
                .values(
                    status=JobStatus.QUEUED.value,
                    worker=None,
                    heartbeat_at=None,
                    dispatched_at=None,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
    return sorted(requeued), sorted(failed)
