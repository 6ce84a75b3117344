"""``GET /health``: can this instance serve requests? Open to everyone (load balancers)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import AppSettings, DbEngine
from app.core.db import DatabaseHealth, check_database
from app.core.storage import StorageHealth, check_storage

router = APIRouter(tags=["health"])


class HealthReport(BaseModel):
    status: Literal["ok", "unavailable"]
    database: DatabaseHealth
    storage: StorageHealth


@router.get(
    "/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "database or storage failing"}},
)
def health(engine: DbEngine, settings: AppSettings) -> JSONResponse:
    """Database ``SELECT 1`` (with latency) and data directory writable (with free bytes).

    200 when both are fine, 503 otherwise; the body says which part failed and why.
    """
    database = check_database(engine)
    storage = check_storage(settings.data_dir)
    ok = database.ok and storage.ok
    report = HealthReport(status="ok" if ok else "unavailable", database=database, storage=storage)
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if ok else 503)
