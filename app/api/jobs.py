"""``/jobs``: start an adaptation run, watch it (JSON or server-sent events), cancel it.

The request path only writes the row (and, with a broker, sends its id); training happens in
a worker (see ``worker/``). Everything a client sees comes from the row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Annotated, Any, get_type_hints

import anyio.to_thread
from fastapi import APIRouter, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import DbSession, Dispatch, SessionFactory
from app.api.schemas import INVALID_INPUT, MAX_ID, ErrorDetail, Limit, Offset, Page, paginate
from app.core.orm import TERMINAL_STATUSES, Job, JobPhase, JobStatus, utcnow
from app.jobs.state import JobInput, JobInputError, create_job, request_cancel
from trainer.config import RECIPES, TrainConfig

__all__ = ["JobOut", "JobRequest", "router"]

router = APIRouter(tags=["jobs"])

EVENT_POLL_S = 1.0
KEEPALIVE_S = 15.0  # a comment line this often while nothing changes: proxies cut idle streams


def _training_options_schema() -> dict[str, Any]:
    """The JSON schema of ``config``, read off :class:`TrainConfig`'s fields: the documented
    shape only. Validation stays ``TrainConfig``'s (``validate_config``), so the API and
    ``reid train`` accept exactly the same."""
    hints = get_type_hints(TrainConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        default = "set by the recipe" if f.default is None else f"default {f.default!r}"
        fields[f.name] = (hints[f.name], Field(default=None, description=default))
    model = create_model("TrainingOptions", __config__=ConfigDict(extra="forbid"), **fields)
    schema = model.model_json_schema()
    schema["properties"]["recipe"]["enum"] = list(RECIPES)  # forms offer the choices
    return schema


class EpochMetrics(BaseModel):
    """One epoch of a job; each key appears once its step has happened."""

    epoch: int
    clusters: int | None = Field(None, description="target clusters kept this epoch")
    unclustered: int | None = Field(None, description="target instances left un-clustered")
    threshold: float | None = Field(None, description="self-paced reliability threshold")
    clustering_seconds: float | None = None
    eps: float | None = Field(None, description="the DBSCAN radius used")
    loss: float | None = None
    loss_source: float | None = None
    loss_target: float | None = None
    lr: float | None = None
    images_per_s: float | None = None
    seconds: float | None = None
    mAP: float | None = Field(None, description="on the evaluation split, when evaluated")
    rank1: float | None = None
    rank5: float | None = None
    rank10: float | None = None


TrainingOptions = Annotated[dict[str, Any], WithJsonSchema(_training_options_schema())]
MetricsList = Annotated[
    list[dict[str, Any]],
    WithJsonSchema({"type": "array", "items": EpochMetrics.model_json_schema()}),
]


class JobRequest(BaseModel):
    """``POST /jobs``: the datasets and the ``reid train`` options by name."""

    model_config = ConfigDict(extra="forbid")

    target_dataset_id: int = Field(ge=1, le=MAX_ID, description="unlabeled target dataset")
    source_dataset_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="labeled source; absent: unsupervised"
    )
    eval_dataset_id: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="labeled query/gallery to report mAP on; default: the target's own, "
        "when labeled",
    )
    config: TrainingOptions = Field(
        default_factory=dict,
        description="training options by their `reid train` names (recipe, arch, pretrained, "
        "epochs, iters, batch_size, eps, ...); unset ones take the trainer's defaults, and "
        "`recipe` ('recommended', the default, or 'paper') sets pooling, eps, camera_contrast, "
        "camera_centring and flip unless given",
    )


class Progress(BaseModel):
    epoch: int = Field(description="epochs completed (the current one, 0-based)")
    epochs: int
    iteration: int = Field(description="iterations done in the current epoch")
    iterations: int
    fraction: float = Field(ge=0, le=1)


class JobOut(BaseModel):
    id: int
    status: JobStatus
    phase: JobPhase | None
    target_dataset_id: int | None
    source_dataset_id: int | None
    eval_dataset_id: int | None
    config: TrainingOptions
    progress: Progress
    eta_seconds: float | None
    metrics: MetricsList
    model_id: int | None
    error: str | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        total = max(job.epochs * job.iterations, 1)
        done = min(job.epoch * job.iterations + job.iteration, total)
        fraction = 1.0 if job.status == JobStatus.SUCCEEDED else done / total
        eta = None
        if job.status == JobStatus.RUNNING and job.started_at is not None and 0 < fraction < 1:
            elapsed = (utcnow() - job.started_at).total_seconds()
            eta = round(max(elapsed, 0.0) * (1 - fraction) / fraction, 1)
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            phase=JobPhase(job.phase) if job.phase else None,
            target_dataset_id=job.target_dataset_id,
            source_dataset_id=job.source_dataset_id,
            eval_dataset_id=job.eval_dataset_id,
            config=dict(job.config),
            progress=Progress(
                epoch=job.epoch,
                epochs=job.epochs,
                iteration=job.iteration,
                iterations=job.iterations,
                fraction=round(fraction, 6),
            ),
            eta_seconds=eta,
            metrics=[dict(m) for m in job.metrics],
            model_id=job.model_id,
            error=job.error,
            attempts=job.attempts,
            worker=job.worker,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such job"},
    422: INVALID_INPUT,
}


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "job not found"}, status_code=404)


def _get(session: DbSession, job_id: int) -> Job | None:
    return session.get(Job, job_id) if 1 <= job_id <= MAX_ID else None


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "the job this Idempotency-Key already created"},
        422: INVALID_INPUT,
    },
)
async def submit_job(
    body: JobRequest,
    factory: SessionFactory,
    dispatcher: Dispatch,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, description="retry-safe submission")
    ] = None,
) -> JSONResponse:
    """Queue an adaptation job (202). Invalid datasets or options: 422 naming the field."""
    given = JobInput(
        target_dataset_id=body.target_dataset_id,
        source_dataset_id=body.source_dataset_id,
        eval_dataset_id=body.eval_dataset_id,
        config=dict(body.config),
    )
    try:
        job, created = await anyio.to_thread.run_sync(
            partial(create_job, factory, given, idempotency_key)
        )
    except JobInputError as exc:
        raise RequestValidationError(
            [{"loc": exc.loc, "msg": exc.msg, "type": "value_error"}]
        ) from None
    # A retry of a still-queued job sends its id again: if the first send was lost (broker
    # down), the retry repairs it; a duplicate message is dropped by the worker's claim.
    if created or job.status == JobStatus.QUEUED:
        await anyio.to_thread.run_sync(dispatcher.dispatch, Job, job.id)
    return JSONResponse(JobOut.of(job).model_dump(mode="json"), status_code=202 if created else 200)


@router.get("/jobs", response_model=Page[JobOut], responses={422: INVALID_INPUT})
def list_jobs(
    session: DbSession,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[JobOut]:
    """Jobs, newest first."""
    conditions = [] if status is None else [Job.status == status.value]
    return paginate(session, Job, conditions, Job.id.desc(), limit, offset, JobOut.of)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_JOB_ERRORS)
def get_job(job_id: int, session: DbSession) -> JobOut | JSONResponse:
    """Status, phase, progress, ETA and per-epoch metrics of one job."""
    job = _get(session, job_id)
    return _not_found() if job is None else JobOut.of(job)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, responses=_JOB_ERRORS)
def cancel_job(job_id: int, session: DbSession) -> JobOut | JSONResponse:
    """Cancel: a queued job never starts; a running one stops within an iteration and ends
    ``cancelled`` (its checkpoint is kept). A finished job is returned unchanged."""
    if _get(session, job_id) is None:
        return _not_found()
    job = request_cancel(session, job_id)
    if job is None:
        return _not_found()
    return JSONResponse(JobOut.of(job).model_dump(mode="json"), status_code=202)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events"},
        **_JOB_ERRORS,
    },
)
async def job_events(job_id: int, factory: SessionFactory) -> Any:
    """Server-sent events: the job (as ``GET /jobs/{id}``) whenever it changes, polled from
    the database every second; the stream ends after a terminal status. A comment line every
    ``KEEPALIVE_S`` keeps proxies from closing a stream that waits on a queued job."""

    def load() -> dict[str, Any] | None:
        with factory() as session:
            job = session.get(Job, job_id) if 1 <= job_id <= MAX_ID else None
            return None if job is None else JobOut.of(job).model_dump(mode="json")

    first = await anyio.to_thread.run_sync(load)
    if first is None:
        return _not_found()

    async def events() -> AsyncIterator[ServerSentEvent]:
        current: dict[str, Any] | None = first
        last: str | None = None
        while current is not None:
            comparable = {k: v for k, v in current.items() if k != "eta_seconds"}
            text = json.dumps(comparable, sort_keys=True)
            if text != last:
                last = text
                yield ServerSentEvent(data=json.dumps(current), event="job")
            if JobStatus(current["status"]) in TERMINAL_STATUSES:
                return
            await asyncio.sleep(EVENT_POLL_S)
            current = await anyio.to_thread.run_sync(load)

    # sse-starlette stops the generator when the client goes and sends the keep-alive comment
    return EventSourceResponse(
        events(),
        ping=KEEPALIVE_S,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
