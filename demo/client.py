"""The demo's client for the service's API (httpx).

Proxies from the environment are ignored (the service is on loopback). Errors become
:class:`ApiError` carrying the status and the service's ``detail`` line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ApiClient", "ApiError", "DemoError"]


class DemoError(RuntimeError):
    """A failure ``reid demo`` explains in one line (exit status 1)."""


class ApiError(DemoError):
    """A request that failed: HTTP status (0 when the service could not be reached) and detail."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {path} -> {status or 'no response'}: {detail}")
        self.status = status
        self.detail = detail


class ApiClient:
    """JSON requests against ``base_url``, with the API key when the service needs one."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, trust_env=False
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, tuple[str, bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request; the decoded JSON answer (or the bytes with ``raw``)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        form = {k: _form_value(v) for k, v in (data or {}).items() if v is not None}
        try:
            response = self._http.request(
                method,
                path,
                params=query or None,
                json=json_body,
                data=form or None,
                files=files,
                headers=headers,
                timeout=timeout or self.timeout,
            )
        except httpx.HTTPError as exc:
            raise ApiError(method, path, 0, str(exc) or type(exc).__name__) from None
        if response.is_error:
            raise ApiError(method, path, response.status_code, _detail(response.content))
        if raw:
            return response.content
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post_json(self, path: str, payload: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json_body=payload, **kwargs)

    def post_form(
        self,
        path: str,
        fields: Mapping[str, Any],
        files: Mapping[str, tuple[str, bytes]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return self.request("POST", path, data=fields, files=files, timeout=timeout)

    def upload(self, archive: Path, name: str, labeled: bool, timeout: float = 1800.0) -> Any:
        """``POST /datasets``: the archive as the ``file`` part (read whole: demo-sized)."""
        return self.post_form(
            "/datasets",
            {"name": name, "labeled": labeled},
            {"file": (archive.name, archive.read_bytes())},
            timeout=timeout,
        )


def _form_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _detail(data: bytes) -> str:
    try:
        payload = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip()[:500] or "(empty answer)"
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return json.dumps(payload)[:500]
