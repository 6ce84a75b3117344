"""``/models``: the encoders that succeeded jobs produced, and their ``model.pt`` files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, computed_field

from app.api.deps import DbSession, Storage
from app.api.schemas import INVALID_INPUT, MAX_ID, ErrorDetail, Limit, Offset, Page, paginate
from app.core.orm import Model

__all__ = ["ModelOut", "router"]

router = APIRouter(tags=["models"])

_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such model"},
    422: INVALID_INPUT,
}


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    job_id: int
    arch: str
    height: int
    width: int
    feature_dim: int
    metrics: dict[str, Any]
    size_bytes: int
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def download_url(self) -> str:
        return f"/models/{self.id}/download"


def _get(session: DbSession, model_id: int) -> Model | None:
    return session.get(Model, model_id) if 1 <= model_id <= MAX_ID else None


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "model not found"}, status_code=404)


@router.get("/models", response_model=Page[ModelOut], responses={422: INVALID_INPUT})
def list_models(session: DbSession, limit: Limit = 50, offset: Offset = 0) -> Page[ModelOut]:
    """Trained models, newest first."""
    return paginate(session, Model, [], Model.id.desc(), limit, offset, ModelOut.model_validate)


@router.get("/models/{model_id}", response_model=ModelOut, responses=_MODEL_ERRORS)
def get_model(model_id: int, session: DbSession) -> ModelOut | JSONResponse:
    row = _get(session, model_id)
    return _not_found() if row is None else ModelOut.model_validate(row)


@router.get(
    "/models/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the model.pt"},
        **_MODEL_ERRORS,
    },
)
def download_model(model_id: int, session: DbSession, storage: Storage) -> Any:
    """The single-file export (weights, architecture, input size, normalisation)."""
    row = _get(session, model_id)
    if row is None:
        return _not_found()
    root = storage.root.resolve()
    path = (root / row.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return JSONResponse({"detail": "model file missing"}, status_code=404)
    return FileResponse(path, media_type="application/octet-stream", filename=f"model-{row.id}.pt")
