"""Domain errors as HTTP responses, decided in one table.

Domain code raises exceptions that say what went wrong (``detail``, a message safe to show);
which status a client sees is the API's choice, made here and nowhere else.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from app.api.uploads import MalformedUpload, NotMultipart
from app.datasets.archives import ArchiveError, NotAnArchive, UploadTooLarge

__all__ = ["DOMAIN_ERRORS", "domain_error", "status_for"]

# the most specific class first wins (looked up along the exception's MRO)
_STATUS: dict[type[Exception], int] = {
    UploadTooLarge: 413,
    NotAnArchive: 415,
    NotMultipart: 415,
    MalformedUpload: 400,
    ArchiveError: 422,  # unsafe, bomb, corrupt, unusable fields, nothing to ingest
}
DOMAIN_ERRORS: tuple[type[Exception], ...] = (ArchiveError,)  # the roots the handler takes


def status_for(exc: Exception) -> int:
    """The HTTP status for a domain error (its nearest class in the table)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    raise TypeError(f"{type(exc).__name__} is not a domain error")


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    """``{"detail": ...}`` with the table's status."""
    return JSONResponse({"detail": getattr(exc, "detail", str(exc))}, status_code=status_for(exc))
