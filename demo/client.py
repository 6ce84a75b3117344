"""A minimal HTTP client for the service's API, on the standard library alone.

Why not httpx: it is a development dependency only, and the demo must run from a plain
install. Proxies from the environment are ignored (the service is on loopback). Errors become
:class:`ApiError` carrying the status and the service's ``detail`` line.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ApiClient", "ApiError", "DemoError", "encode_multipart"]


class DemoError(RuntimeError):
    """A failure ``reid demo`` explains in one line (exit status 1)."""


class ApiError(DemoError):
    """A request that failed: HTTP status (0 when the service could not be reached) and detail."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {path} -> {status or 'no response'}: {detail}")
        self.status = status
        self.detail = detail


def encode_multipart(
    fields: Mapping[str, Any], files: Mapping[str, tuple[str, bytes]] | None = None
) -> tuple[bytes, str]:
    """``multipart/form-data`` body and its content type; ``files``: name -> (filename, bytes)."""
    boundary = f"reid-demo-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{text}\r\n".encode()
        )
    for name, (filename, data) in (files or {}).items():
        media = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {media}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class ApiClient:
    """JSON requests against ``base_url``, with the API key when the service needs one."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request; the decoded JSON answer (or the bytes with ``raw``)."""
        url = self.base_url + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            url += "?" + urllib.parse.urlencode(query)
        all_headers = {**self.headers, **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            all_headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, _detail(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(method, path, 0, str(reason)) from None
        if raw:
            return data
        return json.loads(data) if data else None

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
        body, content_type = encode_multipart(fields, files)
        return self.request("POST", path, body=body, content_type=content_type, timeout=timeout)

    def upload(self, archive: Path, name: str, labeled: bool, timeout: float = 1800.0) -> Any:
        """``POST /datasets``: the archive as the ``file`` part (read whole: demo-sized)."""
        return self.post_form(
            "/datasets",
            {"name": name, "labeled": labeled},
            {"file": (archive.name, archive.read_bytes())},
            timeout=timeout,
        )


def _detail(data: bytes) -> str:
    try:
        payload = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip()[:500] or "(empty answer)"
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return json.dumps(payload)[:500]
