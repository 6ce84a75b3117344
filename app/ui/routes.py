"""``/ui/``: the pages, their static files, and the headers that keep them safe.

Why shells: page loads in a browser cannot carry the ``Authorization`` header, so nothing a
key protects is rendered server-side. Every page is the same layout plus one ES module that
fetches what it shows from the API (the key from ``sessionStorage``) and writes it with
``textContent``, so user-supplied names and errors are never parsed as HTML.

Content-Security-Policy: scripts only from this origin, plus the one inline import map
(allowed by its hash, not ``unsafe-inline``), no plugins, no framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PAGES", "UI_PREFIX", "mount_ui"]

UI_PREFIX = "/ui"
STATIC = f"{UI_PREFIX}/static"
_HERE = Path(__file__).parent

# page name -> its title; the page's code is static/js/pages/<name>.js
PAGES: dict[str, str] = {
    "collections": "Collections",
    "collection": "Collection",
    "jobs": "Jobs",
    "job_new": "New job",
    "job": "Job",
    "search": "Search",
    "models": "Models",
}

# bare and extension-less specifiers of the vendored ES modules (see app.ui.vendor)
IMPORT_MAP: dict[str, Any] = {
    "imports": {
        "uplot": f"{STATIC}/vendor/uplot/uPlot.esm.js",
        "fetch-event-source": f"{STATIC}/vendor/fetch-event-source/fetch.js",
        f"{STATIC}/vendor/fetch-event-source/parse": f"{STATIC}/vendor/fetch-event-source/parse.js",
    }
}
IMPORT_MAP_JSON = json.dumps(IMPORT_MAP, separators=(",", ":"))


def _script_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CSP = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' '{_script_hash(IMPORT_MAP_JSON)}'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class UiHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` to every response under ``/ui`` (pages and static
    files alike; the API's JSON and ``/docs`` keep theirs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == UI_PREFIX or path.startswith(UI_PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


_templates = Jinja2Templates(directory=_HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(request: Request, name: str, **ids: int) -> HTMLResponse:
    context = {
        "page": name,
        "title": PAGES[name],
        "static": STATIC,
        "ui": UI_PREFIX,
        "import_map": IMPORT_MAP_JSON,
        "ids": ids,
    }
    return _templates.TemplateResponse(request, "page.html", context)


@router.get("/")
def root(request: Request) -> Response:
    """A browser (asks for HTML) goes to the UI; a client gets where things are."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"{UI_PREFIX}/", status_code=307)
    return JSONResponse({"ui": f"{UI_PREFIX}/", "docs": "/docs", "openapi": "/openapi.json"})


@router.get(UI_PREFIX)
def ui_root() -> Response:
    return RedirectResponse(f"{UI_PREFIX}/", status_code=307)


def _static_page(page: str) -> Callable[[Request], HTMLResponse]:
    def render(request: Request) -> HTMLResponse:
        return _page(request, page)

    return render


# pages that take no id: (path under /ui, the page's module in static/js/pages/)
for _path, _name in (("/", "collections"), ("/jobs", "jobs"), ("/jobs/new", "job_new"),
                     ("/search", "search"), ("/models", "models")):  # fmt: skip
    router.add_api_route(UI_PREFIX + _path, _static_page(_name), methods=["GET"], name=_name)


@router.get(f"{UI_PREFIX}/collections/{{dataset_id}}")
def collection_page(request: Request, dataset_id: int) -> HTMLResponse:
    return _page(request, "collection", dataset=dataset_id)


@router.get(f"{UI_PREFIX}/jobs/{{job_id}}")
def job_page(request: Request, job_id: int) -> HTMLResponse:
    return _page(request, "job", job=job_id)


def mount_ui(app: FastAPI) -> None:
    """Pages, static files and the security headers on ``app``."""
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.add_middleware(UiHeadersMiddleware)
