"""The FastAPI application: ``create_app(settings)``.

Error contract: every response the service produces, errors included, is JSON with a
``detail`` key — unknown routes (404), wrong methods (405), invalid input (422, with a
readable ``detail`` string and a structured ``errors`` list) and unexpected failures (500,
``{"detail": "internal error"}``, logged with the traceback). No request can take the server
down.

Adding a router: write ``app/api/<name>.py`` with a ``router`` and add it to
``PROTECTED_ROUTERS``; it then requires the API key like every other non-health endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import (
    collections,
    datasets,
    health,
    images,
    indexes,
    info,
    jobs,
    models_api,
    search,
)
from app.api.auth import require_api_key
from app.api.errors import DOMAIN_ERRORS, domain_error
from app.api.rate_limits import RateLimiter
from app.api.schemas import ErrorDetail
from app.core.db import create_db_engine, make_session_factory
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.jobs.dispatch import Dispatcher, QueueOnly
from app.search.indexes import IndexCache
from app.search.query import ModelCache
from app.ui.routes import mount_ui

__all__ = ["OPEN_ROUTERS", "PROTECTED_ROUTERS", "create_app"]

logger = logging.getLogger(__name__)

OPEN_ROUTERS: tuple[APIRouter, ...] = (health.router,)
PROTECTED_ROUTERS: tuple[APIRouter, ...] = (
    info.router,
    datasets.router,
    collections.router,
    images.router,
    jobs.router,
    models_api.router,
    indexes.router,
    search.router,
)


class CatchAllMiddleware:
    """Turn any unhandled exception into a logged 500 JSON response.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streaming bodies pass through untouched. If the
    response had already started, nothing valid can be sent any more: the exception goes on
    to the server, which closes that connection (and only that one).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=dict(exc.headers or {})
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with ``detail`` one readable line; the submitted values are not echoed back."""
    errors = [
        {
            "loc": _location(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": err.get("type"),
        }
        for err in exc.errors()
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


_MALFORMED_BODY: dict[str, Any] = {
    "description": "malformed request body (not decodable as its content type)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorDetail,
        "description": "missing or invalid API key (only when keys are configured)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"model": ErrorDetail, "description": "the API key's scope does not allow this"},
}


def _form_fields_without_null(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """A form field has no spelling for null (absent is the null): FastAPI's optional form
    fields (``anyOf: [T, {type: null}]``) become plain ``T``, not required. Without this,
    clients send the text ``null`` (a 422), and an optional list of files is not recognised
    as files (Swagger UI shows no file picker)."""
    schemas = document.get("components", {}).get("schemas", {})
    for media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        body = operation["requestBody"].get("content", {}).get(media_type, {}).get("schema", {})
        ref = body.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            body = schemas.get(ref.rsplit("/", 1)[-1], {})
        for name, prop in body.get("properties", {}).items():
            branches = prop.get("anyOf")
            if not isinstance(branches, list) or {"type": "null"} not in branches:
                continue
            others = [b for b in branches if b != {"type": "null"}]
            if len(others) == 1 and name not in body.get("required", []):
                del prop["anyOf"]
                prop.update({**others[0], **prop})


def _document_common_errors(app: FastAPI) -> None:
    """Declare, in the OpenAPI document, the 400 that any operation with a body can give:
    FastAPI/Starlette answer it themselves (``{"detail": "There was an error parsing the
    body"}``, ``"Invalid multipart data."``) before an endpoint runs. Also see
    :func:`_form_fields_without_null`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for path_item in document.get("paths", {}).values():
                for operation in path_item.values():
                    if isinstance(operation, dict) and "requestBody" in operation:
                        operation.setdefault("responses", {}).setdefault("400", _MALFORMED_BODY)
                        _form_fields_without_null(document, operation)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None, *, dispatcher: Dispatcher | None = None
) -> FastAPI:
    """Build the service for ``settings`` (default: read from the environment).

    Creating the app does not touch the database or the disk; the lifespan creates the data
    folders and starts ``dispatcher`` on startup, stops it and releases the connection pool
    on shutdown. The schema is migrated by ``reid serve`` / ``reid db upgrade``, not here.

    Jobs and index builds are rows in the database; ``dispatcher`` (see
    :mod:`app.jobs.dispatch`) tells a worker about each new one. Without one they wait for a
    worker that polls the database.
    """
    settings = settings if settings is not None else Settings()
    dispatcher = dispatcher if dispatcher is not None else QueueOnly()
    engine = create_db_engine(settings.effective_database_url)
    storage = StorageLayout(settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            storage.ensure()
            if swept := storage.sweep_tmp():
                logger.warning("removed %d stale temporary entries: %s", len(swept), swept)
        except OSError as exc:  # /health reports it; the rest may still work
            logger.error("cannot prepare data directory %s: %s", storage.root, exc)
        dispatcher.start(app.state.sessionmaker)
        try:
            yield
        finally:
            dispatcher.stop()
            engine.dispose()

    app = FastAPI(
        title="reid-service",
        description="Adapt re-identification models to new cameras (SpCL) and search images.",
        version=info.service_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_session_factory(engine)
    app.state.storage = storage
    app.state.dispatcher = dispatcher
    # /search: loaded indexes (LRU by bytes), encoders (each with its micro-batchers)
    app.state.index_cache = IndexCache(settings.index_cache_bytes)
    app.state.model_cache = ModelCache(settings.search_models_cached, settings.inference_engine)
    app.state.rate_limiter = RateLimiter()

    app.add_middleware(CatchAllMiddleware)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for error in DOMAIN_ERRORS:
        app.add_exception_handler(error, domain_error)  # type: ignore[arg-type]

    for router in OPEN_ROUTERS:
        app.include_router(router)
    for router in PROTECTED_ROUTERS:
        app.include_router(router, dependencies=[Depends(require_api_key)], responses=_UNAUTHORIZED)
    mount_ui(app)  # pages only: their data comes from the protected routers above
    _document_common_errors(app)
    return app
