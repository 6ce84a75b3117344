"""``/models``: the encoders that succeeded jobs produced, and their ``model.pt`` files."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, computed_field

from app.api.deps import DbSession, Storage
from app.api.schemas import INVALID_INPUT, MAX_ID, ErrorDetail, Limit, Offset, Page, paginate
from app.core.orm import Model
from trainer.models.onnx_export import exported_next_to

__all__ = ["ModelOut", "router"]

logger = logging.getLogger(__name__)

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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def onnx_url(self) -> str:
        return f"/models/{self.id}/download?format=onnx"


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
        200: {
            "content": {"application/octet-stream": {}},
            "description": "the model.pt, or its ONNX export",
        },
        500: {"model": ErrorDetail, "description": "the ONNX export failed"},
        **_MODEL_ERRORS,
    },
)
def download_model(
    model_id: int,
    session: DbSession,
    storage: Storage,
    format: Annotated[
        Literal["pt", "onnx"],
        Query(
            description="pt: the single-file PyTorch export (weights, architecture, input "
            "size, normalisation); onnx: the embedding as an ONNX graph (input `images` "
            "float32 N x 3 x H x W normalised, output `embeddings` N x d L2-normalised; "
            "metadata height, width, mean, std, feature_dim, arch, source_sha256), exported "
            "on the first request"
        ),
    ] = "pt",
) -> Any:
    """The trained model as a file."""
    row = _get(session, model_id)
    if row is None:
        return _not_found()
    root = storage.root.resolve()
    path = (root / row.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return JSONResponse({"detail": "model file missing"}, status_code=404)
    if format == "onnx":
        try:
            path = exported_next_to(path)
        except (ValueError, OSError) as exc:
            logger.exception("ONNX export of model %d failed", model_id)
            return JSONResponse({"detail": f"ONNX export failed: {exc}"}, status_code=500)
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"model-{row.id}{path.suffix}"
    )
