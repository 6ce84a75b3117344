"""API-key authentication, as a dependency that routers carry.

With ``REID_API_KEYS`` set, a request must present one of the keys as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; otherwise 401 with
``WWW-Authenticate: Bearer``. Keys are compared in constant time against *every* configured
key, so response timing reveals neither a key's prefix nor which key matched. With no keys
configured the dependency lets everything through, and ``reid serve`` refuses to listen on
anything but loopback unless told ``--insecure`` (see :func:`check_bind_allowed`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import AppSettings

__all__ = [
    "InsecureBindError",
    "check_bind_allowed",
    "is_loopback",
    "key_matches",
    "require_api_key",
]

# auto_error=False: a missing header is ours to answer (401 + WWW-Authenticate, JSON body).
# Declaring both schemes also puts an "Authorize" button in /docs.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def key_matches(candidate: str, keys: Sequence[str]) -> bool:
    """Constant-time membership test: every key is compared, whatever matched before."""
    given = candidate.encode("utf-8")  # bytes: compare_digest rejects non-ASCII str
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("utf-8"))
    return matched


def require_api_key(
    settings: AppSettings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """Router dependency: pass when auth is off or a presented key is valid, else 401."""
    if not settings.api_keys:
        return
    presented = [c for c in (bearer.credentials if bearer else None, api_key) if c]
    valid = False
    for candidate in presented:
        valid |= key_matches(candidate, settings.api_keys)
    if not valid:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key" if presented else "API key required",
            headers={"WWW-Authenticate": "Bearer"},
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
