"""``POST /search``: rank a dataset's images by similarity to query images.

Uploads use FastAPI's ``UploadFile`` (Starlette spools each part to a temporary file past
1 MB, so memory stays flat); each image is then read with a byte cap
(``REID_SEARCH_MAX_IMAGE_BYTES``, 413 beyond) and decoded once (415 when it is not an image).
Database look-ups, decoding and model and index loading run in one worker-thread hop; the
forward and the FAISS search run in the batcher's compute thread: the event loop only awaits.
Queries of concurrent requests are micro-batched through the model and searched together,
one index search per micro-batch (:class:`app.search.query.MicroBatcher`).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import AppSettings, Indexes, Models, SessionFactory, Storage
from app.api.rate_limits import SearchRateLimit
from app.api.schemas import MAX_ID, ErrorDetail, ValidationErrorDetail
from app.core.orm import (
    Dataset,
    DatasetStatus,
    Image,
    Model,
    SearchIndex,
    SearchIndexStatus,
    Split,
    as_utc,
)
from app.core.storage import StorageLayout
from app.search.indexes import (
    COL_CAMID,
    COL_DATASET,
    COL_IMAGE,
    COL_PID,
    COL_SPLIT,
    SPLIT_NAMES,
    IndexCache,
    embedding_domain,
    epoch_seconds,
)
from app.search.liveness import removed_rows
from app.search.query import Filters, ModelCache, exact_search, label

__all__ = ["MAX_OFFSET", "MAX_TOP_K", "SearchHit", "SearchResponse", "router"]

router = APIRouter(tags=["search"])

MAX_TOP_K = 1000
MAX_OFFSET = 10_000
_LIVENESS_ROUNDS = 3  # searches again after finding deleted hits (see app.search.liveness)


class SearchHit(BaseModel):
    image_id: int
    dataset_id: int
    split: str
    pid: int | None
    camid: int | None
    score: float
    url: str


class SearchResponse(BaseModel):
    model_id: int
    index_id: int
    results: list[list[SearchHit]]


class _Failure(Exception):
    """An error response, raised from helpers running in threads."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class _Target:
    model_id: int
    index_id: int
    model_path: Any
    index_folder: Any
    model_version: str  # creation / build times: the caches' guard against reused ids
    index_version: str
    domain: str  # the DSBN branch the index was embedded with (queries must match)
    behind: bool  # images were deleted or added since this version: check hits (liveness)


def _resolve(
    factory: sessionmaker[Session],
    storage: StorageLayout,
    model_id: int | None,
    index_id: int | None,
    dataset_id: int | None = None,
) -> _Target:
    """The index to search (given; else the newest ready one of the model; else the live
    index of the collection) and its model."""
    with factory() as session:
        if index_id is None and model_id is None:
            assert dataset_id is not None
            dataset = session.get(Dataset, dataset_id)
            if dataset is None or dataset.status != DatasetStatus.READY:
                raise _Failure(404, "dataset not found")
            if dataset.live_index_id is None:
                raise _Failure(
                    409, f"dataset {dataset_id} has no live index yet: build one (POST /indexes)"
                )
            index_id = dataset.live_index_id
        if index_id is not None:
            row = session.get(SearchIndex, index_id)
            if row is None:
                raise _Failure(404, "index not found")
            if model_id is not None and row.model_id != model_id:
                raise _Failure(422, f"index {index_id} was not built with model {model_id}")
        else:
            assert model_id is not None
            if session.get(Model, model_id) is None:
                raise _Failure(404, "model not found")
            row = session.scalar(
                select(SearchIndex)
                .where(
                    SearchIndex.model_id == model_id,
                    SearchIndex.status == SearchIndexStatus.READY.value,
                )
                .order_by(SearchIndex.id.desc())
                .limit(1)
            )
            if row is None:
                building = session.scalar(
                    select(SearchIndex.id).where(
                        SearchIndex.model_id == model_id,
                        SearchIndex.status == SearchIndexStatus.BUILDING.value,
                    )
                )
                if building is not None:
                    raise _Failure(409, f"index {building} of model {model_id} is still building")
                raise _Failure(404, f"model {model_id} has no ready index")
        if row.status == SearchIndexStatus.BUILDING.value:
            raise _Failure(409, f"index {row.id} is still building")
        if row.status != SearchIndexStatus.READY.value:
            raise _Failure(409, f"index {row.id} failed: {row.error}")
        model = session.get(Model, row.model_id)
        if model is None:
            raise _Failure(404, "model not found")
        revision = row.revision  # first the index's, then the dataset's (see liveness)
        dataset_revision = session.scalar(
            select(Dataset.revision).where(Dataset.id == row.dataset_id)
        )
        return _Target(
            model.id,
            row.id,
            storage.root / model.path,
            storage.index_version_dir(row.id, row.version),
            model_version=str(model.created_at),
            index_version=f"{row.finished_at}/{row.version}",
            domain=embedding_domain(session, model, row.dataset_id),
            behind=dataset_revision is not None and dataset_revision > revision,
        )


def _decode(data: bytes, max_pixels: int, name: str) -> Any:
    from trainer.data.images import ImageError, load_rgb

    try:
        return load_rgb(io.BytesIO(data), max_pixels=max_pixels)
    except ImageError as exc:
        raise _Failure(415, f"{name}: not a readable image ({exc})") from exc


def _stored_image(factory: sessionmaker[Session], storage: StorageLayout, image_id: int) -> bytes:
    with factory() as session:
        row = session.get(Image, image_id) if 1 <= image_id <= MAX_ID else None
        if row is None:
            raise _Failure(404, "image not found")
        path = storage.image_path(row.sha256, row.format)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Failure(404, "image file missing from storage") from exc


def _load_model(models: ModelCache, target: _Target) -> Any:
    try:
        return models.get_model(
            target.model_id, target.model_path, target.model_version, target.domain
        )
    except (OSError, ValueError) as exc:  # file gone or unreadable: nothing to search with
        raise _Failure(404, f"model {target.model_id} file unusable: {exc}") from exc


def _load_index(indexes: IndexCache, target: _Target) -> Any:
    try:
        return indexes.get_index(target.index_id, target.index_folder, target.index_version)
    except (OSError, ValueError) as exc:
        raise _Failure(404, f"index {target.index_id} files unusable: {exc}") from exc


@router.post(
    "/search",
    response_model=SearchResponse,
    responses={
        404: {"model": ErrorDetail, "description": "unknown model, index or image"},
        409: {"model": ErrorDetail, "description": "the index is not ready"},
        413: {"model": ErrorDetail, "description": "an image is too large"},
        415: {"model": ErrorDetail, "description": "a file is not an image"},
        422: {"model": ValidationErrorDetail, "description": "invalid input"},
        429: {"model": ErrorDetail, "description": "rate limit reached (Retry-After)"},
    },
)
async def search(
    _rate: SearchRateLimit,
    settings: AppSettings,
    factory: SessionFactory,
    storage: Storage,
    models: Models,
    indexes: Indexes,
    image: Annotated[list[UploadFile] | None, File(description="query image(s)")] = None,
    image_id: Annotated[
        list[int] | None, Form(description="stored query image id(s), repeatable")
    ] = None,
    model_id: Annotated[int | None, Form(ge=1, le=MAX_ID)] = None,
    index_id: Annotated[int | None, Form(ge=1, le=MAX_ID)] = None,
    top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
    offset: Annotated[
        int, Form(ge=0, le=MAX_OFFSET, description="skip this many hits: the next page")
    ] = 0,
    dataset_id: Annotated[
        int | None,
        Form(
            ge=1,
            le=MAX_ID,
            description="without model_id and index_id: search this collection's live index",
        ),
    ] = None,
    split: Annotated[Split | None, Form()] = None,
    camid: Annotated[int | None, Form(ge=0, le=MAX_ID)] = None,
    exclude_camid: Annotated[int | None, Form(ge=0, le=MAX_ID)] = None,
    min_score: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    captured_after: Annotated[
        datetime | None,
        Form(description="only images captured at or after (ISO 8601; no zone: UTC)"),
    ] = None,
    captured_before: Annotated[
        datetime | None, Form(description="only images captured before (ISO 8601)")
    ] = None,
    aggregate: Annotated[
        Literal["mean", "max"] | None,
        Form(
            description="the queries are one tracklet (one person in several frames) and get "
            "one list: mean = their re-normalised mean embedding, max = each gallery image "
            "scored by its best match; unset: one list per query"
        ),
    ] = None,
    group_by: Annotated[
        Literal["camid"] | None, Form(description="camid: only the best hit of each camera")
    ] = None,
    rerank: Annotated[
        bool,
        Form(
            description="re-order the top 100 (or top_k) by k-reciprocal re-ranking; scores "
            "stay cosine similarities; not with aggregate=max"
        ),
    ] = False,
) -> Any:
    """Query by uploaded image(s) or stored image(s); one ranked result list per query, or one
    for the whole tracklet with ``aggregate``."""
    files = image or []
    stored = image_id or []
    if bool(files) == bool(stored):
        return _invalid("body.image", "give one or more image files, or image_id (not both)")
    if any(not 1 <= i <= MAX_ID for i in stored):
        return _invalid("body.image_id", f"image ids lie in 1..{MAX_ID}")
    if rerank and aggregate == "max":
        return _invalid("body.rerank", "rerank needs one query vector: use aggregate=mean")
    if model_id is None and index_id is None and dataset_id is None:
        return _invalid("body.model_id", "give model_id, index_id or dataset_id")
    if len(files) + len(stored) > settings.search_max_images:
        return _invalid("body.image", f"at most {settings.search_max_images} images per request")
    try:
        raw: list[tuple[str, bytes]] = []
        for f in files:
            data = await f.read(settings.search_max_image_bytes + 1)
            if len(data) > settings.search_max_image_bytes:
                raise _Failure(
                    413, f"{f.filename}: larger than {settings.search_max_image_bytes} bytes"
                )
            raw.append((f.filename or "image", data))
        filters = Filters(
            dataset_id,
            split.value if split else None,
            camid,
            exclude_camid,
            min_score,
            None if captured_after is None else epoch_seconds(as_utc(captured_after)),
            None if captured_before is None else epoch_seconds(as_utc(captured_before)),
        )

        def prepare() -> tuple[_Target, Any, Any, list[Any]]:
            """Everything blocking before the model, in one thread hop."""
            for stored_id in stored:
                raw.append((f"image {stored_id}", _stored_image(factory, storage, stored_id)))
            target = _resolve(factory, storage, model_id, index_id, dataset_id)
            loaded_model = _load_model(models, target)
            images = [_decode(data, settings.max_image_pixels, name) for name, data in raw]
            return target, loaded_model, _load_index(indexes, target), images

        target, loaded_model, loaded_index, images = await asyncio.to_thread(prepare)
    except _Failure as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    batcher = loaded_model.batcher(settings.search_batch_size, settings.search_batch_wait_ms / 1000)
    wanted = offset + top_k  # a page: the best offset + top_k, then the last top_k of them

    async def ranked() -> Hits:
        if aggregate or group_by or rerank:  # exact over the stored features
            return await exact_search(
                batcher, images, loaded_index, wanted, filters, aggregate, group_by, rerank
            )
        # the index; transformed in the compute thread
        return await batcher.search(images, loaded_index, wanted, filters, settings.index_nprobe)

    hits = await ranked()
    if target.behind:
        hits = await _live_hits(factory, loaded_index, hits, ranked)
    hits = [per_query[offset:] for per_query in hits]
    items = loaded_index.items
    results = [[_hit(items[row], score) for row, score in per_query] for per_query in hits]
    return SearchResponse(model_id=target.model_id, index_id=target.index_id, results=results)


Hits = list[list[tuple[int, float]]]


async def _live_hits(
    factory: sessionmaker[Session],
    loaded: Any,
    hits: Hits,
    ranked: Callable[[], Awaitable[Hits]],
) -> Hits:
    """``hits`` without deleted images: the rows found deleted are masked in the loaded index
    (in this and every later search) and the search runs again, a few rounds at most; what a
    delete racing with the last round removed is then dropped, even if the page gets short."""
    for _ in range(_LIVENESS_ROUNDS):
        rows = [row for per_query in hits for row, _ in per_query]
        gone = await asyncio.to_thread(removed_rows, factory, loaded, rows)
        if gone.size == 0:
            return hits
        loaded.mark_removed(gone)
        hits = await ranked()
    rows = [row for per_query in hits for row, _ in per_query]
    gone_rows = set((await asyncio.to_thread(removed_rows, factory, loaded, rows)).tolist())
    return [[h for h in per_query if h[0] not in gone_rows] for per_query in hits]


def _hit(item: np.ndarray, score: float) -> SearchHit:
    image_id = int(item[COL_IMAGE])
    return SearchHit(
        image_id=image_id,
        dataset_id=int(item[COL_DATASET]),
        split=SPLIT_NAMES[int(item[COL_SPLIT])],
        pid=label(int(item[COL_PID])),
        camid=label(int(item[COL_CAMID])),
        score=score,
        url=f"/images/{image_id}",
    )


def _invalid(loc: str, msg: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"{loc}: {msg}", "errors": [{"loc": loc, "msg": msg, "type": "value_error"}]},
        status_code=422,
    )
