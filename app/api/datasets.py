"""``/datasets``: upload, list, inspect and delete image datasets, and list their images.

A *source* dataset (``labeled=true``) keeps its training identities; a *target*
(``labeled=false``) never stores them (query/gallery labels are kept, for evaluation only).
The upload is parsed from the raw request stream (see ``app.api.uploads``) and ingested in a
worker thread (see ``app.datasets.ingest``); nothing of a failed upload stays behind.
"""

from __future__ import annotations

import enum
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import func, select
from starlette.requests import ClientDisconnect

from app.api.deps import AppSettings, DbSession, SessionFactory, Storage
from app.api.rate_limits import UploadRateLimit
from app.api.schemas import (
    INVALID_INPUT,
    MAX_ID,
    ErrorDetail,
    Limit,
    Offset,
    Page,
    ValidationErrorDetail,
    paginate,
)
from app.api.uploads import receive_multipart, work_folder
from app.core.orm import Dataset, DatasetImage, DatasetStatus, Image, Split
from app.datasets.ingest import IngestOptions, ingest_archive
from app.datasets.service import DatasetInUse, DatasetNotFound, delete_dataset
from trainer.data.readers import LAYOUTS

__all__ = [
    "DatasetImageOut",
    "DatasetOut",
    "LayoutChoice",
    "UploadForm",
    "body_errors",
    "refuse_form_without_file",
    "router",
]

router = APIRouter(tags=["datasets"])


class LayoutChoice(enum.StrEnum):
    """How to read the archive: detect it, or one of the trainer's layouts (``LAYOUTS``)."""

    AUTO = "auto"
    MARKET1501 = "market1501"
    MSMT17 = "msmt17"
    VERI = "veri"
    VEHICLEID = "vehicleid"
    CSV = "csv"
    FOLDERS = "folders"


assert [c.value for c in LayoutChoice] == ["auto", *LAYOUTS], "keep in step with the readers"


# --------------------------------------------------------------------------------------
# models


class UploadForm(BaseModel):
    """The text fields of ``POST /datasets`` (the archive is the ``file`` part)."""

    name: str = Field(min_length=1, max_length=255, description="display name")
    labeled: bool = Field(description="true for a labeled source, false for a target")
    layout: LayoutChoice = Field(default=LayoutChoice.AUTO, description="archive layout")

    @field_validator("name", mode="before")
    @classmethod
    def _clean_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if any(not c.isprintable() for c in value):
                raise ValueError("must not contain control characters")
        return value


class SplitCounts(BaseModel):
    train: int
    query: int
    gallery: int


class RejectedFile(BaseModel):
    """A file of the archive that was left out, and why."""

    path: str
    reason: str


class DatasetOut(BaseModel):
    """A stored dataset."""

    id: int
    name: str
    labeled: bool
    layout: str = Field(description="the layout the archive was read with")
    num_images: int
    num_identities: int = Field(
        description="labeled identities stored (training and test identities counted apart)"
    )
    num_cameras: int
    splits: SplitCounts
    rejected: list[RejectedFile]
    created_at: datetime
    revision: int = Field(description="counts the appends and deletes of its images")
    live_index_id: int | None = Field(
        description="the index searches by collection use (POST /search with dataset_id)"
    )

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        return cls(
            id=row.id,
            name=row.name,
            labeled=row.labeled,
            layout=row.layout,
            num_images=row.num_images,
            num_identities=row.num_identities,
            num_cameras=row.num_cameras,
            splits=SplitCounts(train=row.num_train, query=row.num_query, gallery=row.num_gallery),
            rejected=[RejectedFile.model_validate(r) for r in row.rejected],
            created_at=row.created_at,
            revision=row.revision,
            live_index_id=row.live_index_id,
        )


class DatasetImageOut(BaseModel):
    """One image of a dataset; ``id`` is the (shared) image id used by ``/images/{id}``."""

    id: int
    dataset_id: int
    path: str = Field(description="path of the file in the uploaded archive")
    split: Split
    pid: int | None = Field(description="identity; always null for a target's training split")
    camid: int | None
    captured_at: datetime | None = Field(default=None, description="when the camera took it")
    width: int
    height: int
    url: str

    @classmethod
    def of(cls, member: DatasetImage, width: int, height: int) -> DatasetImageOut:
        return cls(
            id=member.image_id,
            dataset_id=member.dataset_id,
            path=member.original_path,
            split=Split(member.split),
            pid=member.pid,
            camid=member.camid,
            captured_at=member.captured_at,
            width=width,
            height=height,
            url=f"/images/{member.image_id}",
        )


Label = Annotated[int | None, Query(ge=0, le=MAX_ID)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such dataset"},
    422: INVALID_INPUT,
}

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "name", "labeled"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "contentMediaType": "application/octet-stream",
                        "description": "the archive: .zip, .tar, .tar.gz/.tgz (.tar.bz2, .tar.xz)",
                    },
                    "name": {"type": "string", "minLength": 1, "maxLength": 255},
                    "labeled": {
                        "type": "boolean",
                        "description": "true: labeled source; false: unlabeled target",
                    },
                    "layout": {
                        "type": "string",
                        "enum": [choice.value for choice in LayoutChoice],
                        "default": "auto",
                    },
                },
            }
        }
    },
}


# --------------------------------------------------------------------------------------
# helpers


_NO_FILE = "Field required: the archive"


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A form model's validation errors, located in the request body (for a 422)."""
    return [
        {"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]


def _form_errors(fields: dict[str, str], *, ignore_missing: bool) -> list[dict[str, Any]]:
    try:
        UploadForm.model_validate(fields)
    except ValidationError as exc:
        errors = body_errors(exc)
        return [e for e in errors if not (ignore_missing and e["type"] == "missing")]
    return []


def _check_early_fields(fields: dict[str, str]) -> None:
    """When the file part starts: refuse fields already sent and wrong (422), rather than
    receive gigabytes first; fields still to come are not missing yet."""
    errors = _form_errors(fields, ignore_missing=True)
    if errors:
        raise RequestValidationError(errors)


def _validate_form(fields: dict[str, str], *, file_received: bool) -> UploadForm:
    """The fields as an :class:`UploadForm`, or a 422 through the app's validation handler."""
    errors = _form_errors(fields, ignore_missing=False)
    if not file_received:
        errors.append({"loc": ("body", "file"), "msg": _NO_FILE, "type": "missing"})
    if errors:
        raise RequestValidationError(errors)
    return UploadForm.model_validate(fields)


def refuse_form_without_file(request: Request, missing: str) -> None:
    """A urlencoded form cannot carry files: the file is missing (422), not the media type."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        msg = f"{missing} (send multipart/form-data)"
        raise RequestValidationError([{"loc": ("body", "file"), "msg": msg, "type": "missing"}])


def _not_found(what: str = "dataset") -> JSONResponse:
    return JSONResponse({"detail": f"{what} not found"}, status_code=404)


def _get_ready(session: DbSession, dataset_id: int) -> Dataset | None:
    if not 1 <= dataset_id <= MAX_ID:
        return None
    row = session.get(Dataset, dataset_id)
    return row if row is not None and row.status == DatasetStatus.READY else None


# --------------------------------------------------------------------------------------
# routes


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        400: {"model": ErrorDetail, "description": "malformed multipart body"},
        413: {"model": ErrorDetail, "description": "upload larger than max_upload_bytes"},
        429: {"model": ErrorDetail, "description": "rate limit reached (Retry-After)"},
        415: {"model": ErrorDetail, "description": "not multipart, or the file is no archive"},
        422: {
            "model": ValidationErrorDetail,
            "description": "invalid fields, unsafe archive member, archive bomb, no usable "
            "image, or labeled=true without training labels",
        },
    },
)
async def create_dataset(
    request: Request,
    factory: SessionFactory,
    settings: AppSettings,
    storage: Storage,
    _rate: UploadRateLimit,
) -> DatasetOut | JSONResponse:
    """Upload an archive of images as a new dataset.

    Multipart fields: ``file`` (the archive), ``name``, ``labeled``, optional ``layout``. The
    archive is streamed to disk (never held in memory, counted against ``max_upload_bytes``),
    extracted safely, read with the layout readers, and every image is decoded once to
    validate it. Files that cannot be used are listed in ``rejected`` with the reason.
    """
    refuse_form_without_file(request, _NO_FILE)
    async with work_folder(storage.tmp_dir) as work:
        try:
            received = await receive_multipart(
                request,
                work / "archive",
                max_file_bytes=settings.max_upload_bytes,
                on_file_start=_check_early_fields,
            )
        except ClientDisconnect:
            return JSONResponse({"detail": "the client disconnected"}, status_code=400)
        form = _validate_form(received.fields, file_received=received.file_received)
        options = IngestOptions(name=form.name, labeled=form.labeled, layout=form.layout.value)
        dataset = await anyio.to_thread.run_sync(
            partial(
                ingest_archive,
                work / "archive",
                work,
                options,
                settings=settings,
                storage=storage,
                factory=factory,
            )
        )
    return DatasetOut.of(dataset)


@router.get("/datasets", response_model=Page[DatasetOut], responses={422: _ERRORS[422]})
def list_datasets(session: DbSession, limit: Limit = 50, offset: Offset = 0) -> Page[DatasetOut]:
    """The datasets, oldest first."""
    ready = Dataset.status == DatasetStatus.READY.value
    return paginate(session, Dataset, [ready], Dataset.id, limit, offset, DatasetOut.of)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=_ERRORS)
def get_dataset(dataset_id: int, session: DbSession) -> DatasetOut | JSONResponse:
    """One dataset, with its counts and rejected files."""
    row = _get_ready(session, dataset_id)
    return _not_found() if row is None else DatasetOut.of(row)


@router.delete(
    "/datasets/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses={**_ERRORS, 409: {"model": ErrorDetail, "description": "a job uses it"}},
)
def remove_dataset(dataset_id: int, factory: SessionFactory, storage: Storage) -> Response:
    """Delete a dataset; image files no other dataset references are removed too."""
    if not 1 <= dataset_id <= MAX_ID:
        return _not_found()
    try:
        delete_dataset(factory, storage, dataset_id)
    except DatasetNotFound:
        return _not_found()
    except DatasetInUse:
        return JSONResponse(
            {"detail": "the dataset is used by a queued or running job"}, status_code=409
        )
    return Response(status_code=204)


@router.get(
    "/datasets/{dataset_id}/images",
    response_model=Page[DatasetImageOut],
    responses=_ERRORS,
)
def list_dataset_images(
    dataset_id: int,
    session: DbSession,
    split: Annotated[Split | None, Query(description="only this split")] = None,
    pid: Label = None,
    camid: Label = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DatasetImageOut] | JSONResponse:
    """The images of a dataset in upload order, optionally filtered by split/pid/camid."""
    if _get_ready(session, dataset_id) is None:
        return _not_found()
    conditions = [DatasetImage.dataset_id == dataset_id]
    if split is not None:
        conditions.append(DatasetImage.split == split.value)
    if pid is not None:
        conditions.append(DatasetImage.pid == pid)
    if camid is not None:
        conditions.append(DatasetImage.camid == camid)
    total = session.scalar(select(func.count()).select_from(DatasetImage).where(*conditions)) or 0
    query = (
        select(DatasetImage, Image.width, Image.height)
        .join(Image, Image.id == DatasetImage.image_id)
        .where(*conditions)
        .order_by(DatasetImage.id)
        .limit(limit)
        .offset(offset)
    )
    items = [DatasetImageOut.of(*row) for row in session.execute(query)]
    return Page[DatasetImageOut](items=items, total=total, limit=limit, offset=offset)
