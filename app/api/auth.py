"""API-key authentication with scopes, as a dependency that routers carry.

With ``REID_API_KEYS`` set, a request must present one of the keys as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; otherwise 401 with
``WWW-Authenticate: Bearer``. Each entry is ``[SCOPE=]KEY``: the scope ``read`` (listings,
image bytes, downloads, ``POST /search``), ``write`` (also uploads, jobs, deletes) or ``admin``
(everything; the default, so plain keys keep working), and the key itself or ``sha256:<hex>``,
its SHA-256, so the configuration need not hold the secret (``reid keys new`` prints both). A
valid key without the scope a request needs gets 403. Presented keys are hashed and compared in
constant time against *every* configured digest, so response timing reveals neither a key's
prefix nor which key matched. With no keys configured the dependency lets everything through,
and ``reid serve`` refuses to listen on anything but loopback unless told ``--insecure`` (see
:func:`check_bind_allowed`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import AppSettings
from app.core.api_keys import SCOPES, digest, parse_keys

__all__ = [
    "InsecureBindError",
    "check_bind_allowed",
    "is_loopback",
    "key_matches",
    "require_api_key",
    "required_scope",
]

_READ_POSTS = frozenset({"/search"})  # POSTs that only read

# auto_error=False: a missing header is ours to answer (401 + WWW-Authenticate, JSON body).
# Declaring both schemes also puts an "Authorize" button in /docs.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def key_matches(candidate: str, keys: Sequence[str]) -> str | None:
    """The best scope ``candidate`` has among the configured ``keys``, or None; constant
    time: every configured digest is compared, whatever matched before."""
    given = digest(candidate)
    best = -1
    for key in parse_keys(tuple(keys)):
        if hmac.compare_digest(given, key.digest):
            best = max(best, SCOPES.index(key.scope))
    return SCOPES[best] if best >= 0 else None


def required_scope(method: str, path: str) -> str:
    """What a request needs: reading (safe methods, ``POST /search``) or writing."""
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path in _READ_POSTS):
        return "read"
    return "write"


def require_api_key(
    request: Request,
    settings: AppSettings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """Router dependency: pass when auth is off or a presented key has the scope the request
    needs; 401 without a valid key, 403 with one that may not do this."""
    if not settings.api_keys:
        return
    presented = [c for c in (bearer.credentials if bearer else None, api_key) if c]
    scopes = [s for s in (key_matches(c, settings.api_keys) for c in presented) if s]
    if not scopes:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key" if presented else "API key required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    needed = required_scope(request.method, request.url.path)
    if max(SCOPES.index(s) for s in scopes) < SCOPES.index(needed):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"this API key may only {'/'.join(sorted(set(scopes)))}; "
            f"{request.method} {request.url.path} needs a {needed} key",
        )


# --------------------------------------------------------------------------------------
# bind check for `reid serve`


class InsecureBindError(ValueError):
    """Refusing to expose an unauthenticated server beyond this machine."""


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (also bracketed or IPv4-mapped); nothing else."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # another host name: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_bind_allowed(host: str, api_keys: Sequence[str], insecure: bool) -> None:
    """Raise :class:`InsecureBindError` for a non-loopback host without keys or ``--insecure``."""
    if api_keys or insecure or is_loopback(host):
        return
    raise InsecureBindError(
        f"refusing to listen on {host!r} without authentication: set REID_API_KEYS, "
        "bind a loopback address (127.0.0.1, ::1, localhost), or pass --insecure"
    )
