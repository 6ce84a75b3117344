"""``/models``: the encoders that succeeded jobs produced, and their ``model.pt`` files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from app.api.datasets import _ERRORS, MAX_ID, ErrorDetail, Limit, Offset, Page
from app.api.deps import DbSession, get_storage
from app.core.orm import Model

__all__ = ["ModelOut", "router"]

router = APIRouter(tags=["models"])

_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such model"},
    422: _ERRORS[422],
}


class ModelOut(BaseModel):
    id: int
    job_id: int
    arch: str
    height: int
    width: int
    feature_dim: int
    metrics: dict[str, Any]
    size_bytes: int
    created_at: datetime
    download_url: str

    @classmethod
    def of(cls, row: Model) -> ModelOut:
        return cls(
            id=row.id,
            job_id=row.job_id,
            arch=row.arch,
            height=row.height,
            width=row.width,
            feature_dim=row.feature_dim,
            metrics=dict(row.metrics),
            size_bytes=row.size_bytes,
            created_at=row.created_at,
            download_url=f"/models/{row.id}/download",
        )


def _get(session: DbSession, model_id: int) -> Model | None:
    return session.get(Model, model_id) if 1 <= model_id <= MAX_ID else None


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "model not found"}, status_code=404)


@router.get("/models", response_model=Page[ModelOut], responses={422: _ERRORS[422]})
def list_models(session: DbSession, limit: Limit = 50, offset: Offset = 0) -> Page[ModelOut]:
    """Trained models, newest first."""
    total = session.scalar(select(func.count()).select_from(Model)) or 0
    rows = session.scalars(select(Model).order_by(Model.id.desc()).limit(limit).offset(offset))
    return Page[ModelOut](
        items=[ModelOut.of(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get("/models/{model_id}", response_model=ModelOut, responses=_MODEL_ERRORS)
def get_model(model_id: int, session: DbSession) -> ModelOut | JSONResponse:
    row = _get(session, model_id)
    return _not_found() if row is None else ModelOut.of(row)


@router.get(
    "/models/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the model.pt"},
        **_MODEL_ERRORS,
    },
)
def download_model(model_id: int, session: DbSession, request: Request) -> Any:
    """The single-file export (weights, architecture, input size, normalisation)."""
    row = _get(session, model_id)
    if row is None:
        return _not_found()
    root = get_storage(request).root.resolve()
    path = (root / row.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return JSONResponse({"detail": "model file missing"}, status_code=404)
    return FileResponse(path, media_type="application/octet-stream", filename=f"model-{row.id}.pt")
