"""``/indexes``: FAISS indexes of a dataset under a model, built by the worker."""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update

from app.api.deps import DbSession, Dispatch, Indexes, SessionFactory, Storage
from app.api.schemas import INVALID_INPUT, MAX_ID, ErrorDetail, Limit, Offset, Page, paginate
from app.core.orm import Dataset, DatasetStatus, Model, SearchIndex
from app.search.indexes import create_index

__all__ = ["IndexOut", "IndexRequest", "router"]

router = APIRouter(tags=["indexes"])

_INDEX_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such index"},
    422: INVALID_INPUT,
}


class IndexRequest(BaseModel):
    model_config = {"extra": "forbid"}

    model_id: int = Field(ge=1, le=MAX_ID)
    dataset_id: int = Field(ge=1, le=MAX_ID)


class IndexOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    model_id: int
    dataset_id: int
    job_id: int | None
    status: str
    type: str | None = Field(
        validation_alias="kind",
        description="flat or flat16 (exact), ivf or ivfpq (inverted lists)",
    )
    size: int
    dim: int | None
    build_seconds: float | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    revision: int = Field(description="the dataset revision it holds (behind: a sync is due)")
    version: int = Field(description="bumped by every sync (appends and deletes followed)")


def _get(session: DbSession, index_id: int) -> SearchIndex | None:
    return session.get(SearchIndex, index_id) if 1 <= index_id <= MAX_ID else None


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "index not found"}, status_code=404)


def _unknown(field: str, msg: str) -> JSONResponse:
    loc = f"body.{field}"
    return JSONResponse(
        {"detail": f"{loc}: {msg}", "errors": [{"loc": loc, "msg": msg, "type": "not_found"}]},
        status_code=404,
    )


@router.post(
    "/indexes",
    status_code=202,
    response_model=IndexOut,
    responses={
        404: {"model": ErrorDetail, "description": "no such model or dataset"},
        422: INVALID_INPUT,
    },
)
def submit_index(body: IndexRequest, session: DbSession, dispatcher: Dispatch) -> Any:
    """Queue an index of the dataset (all splits) under the model; a worker builds it."""
    if session.get(Model, body.model_id) is None:
        return _unknown("model_id", f"no model with id {body.model_id}")
    dataset = session.get(Dataset, body.dataset_id)
    if dataset is None or dataset.status != DatasetStatus.READY:
        return _unknown("dataset_id", f"no dataset with id {body.dataset_id}")
    row = create_index(session, body.model_id, body.dataset_id)
    dispatcher.dispatch(SearchIndex, row.id)
    return JSONResponse(IndexOut.model_validate(row).model_dump(mode="json"), status_code=202)


@router.get("/indexes", response_model=Page[IndexOut], responses={422: INVALID_INPUT})
def list_indexes(
    session: DbSession,
    model_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    dataset_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[IndexOut]:
    """Indexes, newest first."""
    where = []
    if model_id is not None:
        where.append(SearchIndex.model_id == model_id)
    if dataset_id is not None:
        where.append(SearchIndex.dataset_id == dataset_id)
    order = SearchIndex.id.desc()
    return paginate(session, SearchIndex, where, order, limit, offset, IndexOut.model_validate)


@router.get("/indexes/{index_id}", response_model=IndexOut, responses=_INDEX_ERRORS)
def get_index(index_id: int, session: DbSession) -> IndexOut | JSONResponse:
    row = _get(session, index_id)
    return _not_found() if row is None else IndexOut.model_validate(row)


@router.delete(
    "/indexes/{index_id}", status_code=204, response_class=Response, responses=_INDEX_ERRORS
)
async def delete_index(
    index_id: int, factory: SessionFactory, storage: Storage, indexes: Indexes
) -> Response:
    """Remove the row, the files and the cached copy (a build in progress discards its work)."""

    def work() -> bool:
        with factory() as session:
            row = _get(session, index_id)
            if row is None:
                return False
            session.execute(  # no longer the collection's live index
                update(Dataset).where(Dataset.live_index_id == index_id).values(live_index_id=None)
            )
            session.delete(row)
            session.commit()
        indexes.drop(index_id)
        shutil.rmtree(storage.index_dir(index_id), ignore_errors=True)
        return True

    if not await anyio.to_thread.run_sync(work):
        return _not_found()
    return Response(status_code=204)
