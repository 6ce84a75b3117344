"""``GET /images/{id}``: the bytes of one stored image, with its content type.

Image ids are the shared, content-addressed ``images`` rows (``DatasetImageOut.id``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from app.api.deps import DbSession, Storage
from app.api.schemas import MAX_ID, ErrorDetail, ValidationErrorDetail
from app.core.orm import Image

__all__ = ["MEDIA_TYPES", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["images"])

MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "bmp": "image/bmp",
    "webp": "image/webp",
}

_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the image file as uploaded",
            "content": {media: _BINARY for media in MEDIA_TYPES.values()},
        },
        404: {"model": ErrorDetail, "description": "no such image"},
        422: {"model": ValidationErrorDetail, "description": "invalid input"},
    },
)
def get_image(
    image_id: int,
    session: DbSession,
    storage: Storage,
) -> Response:
    """The stored file (exactly the uploaded bytes); the type comes from its decoded format."""
    row = session.get(Image, image_id) if 1 <= image_id <= MAX_ID else None
    if row is None:
        return JSONResponse({"detail": "image not found"}, status_code=404)
    path = storage.image_path(row.sha256, row.format)
    if not path.is_file():
        logger.error("image %d is in the database but its file %s is missing", row.id, path)
        return JSONResponse({"detail": "image file missing from storage"}, status_code=404)
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(row.format, "application/octet-stream"),
        headers={"ETag": f'"{row.sha256}"'},
    )
