"""Living collections: append images to a dataset, delete them (one, or by a retention
filter), and switch the index searches by collection use (its live-index alias).

Every change commits first and then tells a worker: the dataset's ready indexes follow
(:mod:`worker.index_sync`: new images embedded and added, deleted ones dropped, same index id),
and ``/search`` never returns a deleted image from the moment its request returned
(:mod:`app.search.liveness`).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import ClientDisconnect

from app.api.datasets import (
    DatasetImageOut,
    DatasetOut,
    RejectedFile,
    body_errors,
    refuse_form_without_file,
)
from app.api.deps import AppSettings, DbSession, Dispatch, SessionFactory, Storage
from app.api.rate_limits import UploadRateLimit
from app.api.schemas import INVALID_INPUT, MAX_ID, ErrorDetail, ValidationErrorDetail
from app.api.uploads import MAX_PARTS, receive_multipart, work_folder
from app.core.orm import Dataset, DatasetStatus, SearchIndex, SearchIndexStatus, Split, as_utc
from app.datasets.append import AppendOptions, Upload, append_images
from app.datasets.removal import ImageNotFound, MemberFilter, delete_image, delete_members
from app.datasets.service import DatasetNotFound
from app.jobs.dispatch import Dispatcher
from app.jobs.outbox import undispatched

__all__ = ["AppendForm", "AppendResult", "DeleteFilter", "LiveIndex", "router"]

router = APIRouter(tags=["collections"])

MAX_FILES = MAX_PARTS - 4  # the other parts: split, camid, captured_at and a spare
_NO_FILE = "Field required: one or more images (file parts)"


class AppendForm(BaseModel):
    """The text fields of ``POST /datasets/{id}/images`` (files are the ``file`` parts)."""

    split: Split | None = Field(default=None, description="default: train (or the archive's)")
    camid: int | None = Field(default=None, ge=0, le=MAX_ID)
    captured_at: datetime | None = Field(
        default=None, description="when the camera took them (ISO 8601; no zone: UTC)"
    )


class AppendResult(BaseModel):
    images: list[DatasetImageOut] = Field(
        description="the images now in the dataset (also those it already held: same bytes)"
    )
    added: int = Field(description="how many of them are new")
    rejected: list[RejectedFile]


class DeleteFilter(BaseModel):
    """Which images of the dataset to delete; at least one condition (all must hold)."""

    model_config = {"extra": "forbid"}

    captured_before: datetime | None = Field(default=None, description="retention: older ones")
    captured_after: datetime | None = None
    split: Split | None = None
    camid: int | None = Field(default=None, ge=0, le=MAX_ID)

    @model_validator(mode="after")
    def _some_condition(self) -> DeleteFilter:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("give at least one condition (e.g. captured_before)")
        return self


class Deleted(BaseModel):
    deleted: int


class LiveIndex(BaseModel):
    model_config = {"extra": "forbid"}

    index_id: int = Field(ge=1, le=MAX_ID)


_APPEND_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "array",
                        "maxItems": MAX_FILES,
                        "items": {"type": "string", "format": "binary"},
                        "description": "images, or archives of images (.zip, .tar, .tar.gz...)",
                    },
                    "split": {"type": "string", "enum": [s.value for s in Split]},
                    "camid": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                    "captured_at": {"type": "string", "format": "date-time"},
                },
            }
        }
    },
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such dataset"}
}


def _dispatch_index_work(factory: sessionmaker[Session], dispatcher: Dispatcher) -> None:
    """Tell a worker about the index syncs (and builds) that wait for one."""
    with factory() as session:
        ids = undispatched(session, SearchIndex)
    for index_id in ids:
        dispatcher.dispatch(SearchIndex, index_id)


def _form(fields: dict[str, str], *, file_received: bool = True) -> AppendForm:
    errors: list[dict[str, Any]] = []
    form = AppendForm()
    try:
        form = AppendForm.model_validate(fields)
    except ValidationError as exc:
        errors = body_errors(exc)
    if not file_received:
        errors.append({"loc": ("body", "file"), "msg": _NO_FILE, "type": "missing"})
    if errors:
        raise RequestValidationError(errors)
    return form


def _check_early_fields(fields: dict[str, str]) -> None:
    """Refuse wrong fields sent before the files (422) rather than receive the files first."""
    _form(fields)


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "dataset not found"}, status_code=404)


@router.post(
    "/datasets/{dataset_id}/images",
    status_code=201,
    response_model=AppendResult,
    openapi_extra={"requestBody": _APPEND_BODY},
    responses={
        **_NOT_FOUND,
        400: {"model": ErrorDetail, "description": "malformed multipart body"},
        413: {"model": ErrorDetail, "description": "larger than max_upload_bytes in all"},
        415: {"model": ErrorDetail, "description": "not multipart/form-data"},
        422: {
            "model": ValidationErrorDetail,
            "description": "invalid fields, unsafe archive, or no usable image",
        },
        429: {"model": ErrorDetail, "description": "rate limit reached (Retry-After)"},
    },
)
async def append(
    dataset_id: int,
    request: Request,
    factory: SessionFactory,
    settings: AppSettings,
    storage: Storage,
    dispatcher: Dispatch,
    _rate: UploadRateLimit,
) -> AppendResult | JSONResponse:
    """Add images to a dataset: one or more ``file`` parts, each an image or an archive of
    them, with optional ``split``, ``camid`` and ``captured_at`` for all of them. Same
    validation and limits as an upload; its ready indexes follow within seconds."""
    if not 1 <= dataset_id <= MAX_ID:
        return _not_found()
    refuse_form_without_file(request, _NO_FILE)
    async with work_folder(storage.tmp_dir) as work:
        try:
            received = await receive_multipart(
                request,
                work,
                max_file_bytes=settings.max_upload_bytes,
                max_files=MAX_FILES,
                on_file_start=_check_early_fields,
            )
        except ClientDisconnect:
            return JSONResponse({"detail": "the client disconnected"}, status_code=400)
        form = _form(received.fields, file_received=received.file_received)
        options = AppendOptions(
            split=form.split.value if form.split else None,
            camid=form.camid,
            captured_at=None if form.captured_at is None else as_utc(form.captured_at),
        )
        uploads = [Upload(f.path, f.filename) for f in received.files]
        try:
            result = await anyio.to_thread.run_sync(
                partial(
                    append_images,
                    uploads,
                    work,
                    dataset_id,
                    options,
                    settings=settings,
                    storage=storage,
                    factory=factory,
                )
            )
        except DatasetNotFound:
            return _not_found()
    await anyio.to_thread.run_sync(_dispatch_index_work, factory, dispatcher)
    images = [
        DatasetImageOut.of(m, result.images[m.image_id].width, result.images[m.image_id].height)
        for m in result.members
    ]
    rejected = [RejectedFile.model_validate(r) for r in result.rejected]
    return AppendResult(images=images, added=result.added, rejected=rejected)


@router.delete(
    "/images/{image_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"model": ErrorDetail, "description": "no such image"}, 422: INVALID_INPUT},
)
async def remove_image(
    image_id: int, factory: SessionFactory, storage: Storage, dispatcher: Dispatch
) -> Response:
    """Delete an image from every dataset holding it; searches stop returning it at once,
    its file goes once no running job or index build reads it."""
    if not 1 <= image_id <= MAX_ID:
        return JSONResponse({"detail": "image not found"}, status_code=404)
    try:
        await anyio.to_thread.run_sync(delete_image, factory, storage, image_id)
    except ImageNotFound:
        return JSONResponse({"detail": "image not found"}, status_code=404)
    await anyio.to_thread.run_sync(_dispatch_index_work, factory, dispatcher)
    return Response(status_code=204)


@router.post(
    "/datasets/{dataset_id}/images:delete",
    response_model=Deleted,
    responses={**_NOT_FOUND, 422: INVALID_INPUT},
)
async def remove_matching(
    dataset_id: int,
    body: DeleteFilter,
    factory: SessionFactory,
    storage: Storage,
    dispatcher: Dispatch,
) -> Deleted | JSONResponse:
    """Delete the dataset's images matching the filter (retention: ``captured_before``);
    returns how many went."""
    if not 1 <= dataset_id <= MAX_ID:
        return _not_found()
    where = MemberFilter(
        captured_before=None if body.captured_before is None else as_utc(body.captured_before),
        captured_after=None if body.captured_after is None else as_utc(body.captured_after),
        split=body.split.value if body.split else None,
        camid=body.camid,
    )
    try:
        count = await anyio.to_thread.run_sync(delete_members, factory, storage, dataset_id, where)
    except DatasetNotFound:
        return _not_found()
    await anyio.to_thread.run_sync(_dispatch_index_work, factory, dispatcher)
    return Deleted(deleted=count)


@router.put(
    "/datasets/{dataset_id}/live-index",
    response_model=DatasetOut,
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorDetail, "description": "the index is not ready"},
        422: INVALID_INPUT,
    },
)
def set_live_index(
    dataset_id: int, body: LiveIndex, session: DbSession
) -> DatasetOut | JSONResponse:
    """Make ``index_id`` (a ready index of this dataset, e.g. one built with a newer model)
    the one searches by collection use: one atomic switch, searches never pause."""
    dataset = session.get(Dataset, dataset_id) if 1 <= dataset_id <= MAX_ID else None
    if dataset is None or dataset.status != DatasetStatus.READY:
        return _not_found()
    index = session.get(SearchIndex, body.index_id)
    if index is None or index.dataset_id != dataset_id:
        msg = f"no index {body.index_id} of dataset {dataset_id}"
        loc = "body.index_id"
        return JSONResponse(
            {"detail": f"{loc}: {msg}", "errors": [{"loc": loc, "msg": msg, "type": "not_found"}]},
            status_code=422,
        )
    if index.status != SearchIndexStatus.READY.value:
        return JSONResponse(
            {"detail": f"index {index.id} is {index.status}, not ready"}, status_code=409
        )
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(live_index_id=index.id))
    session.commit()
    session.refresh(dataset)
    return DatasetOut.of(dataset)
