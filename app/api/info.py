"""``GET /info``: version and upload limits, so clients can check a file before sending it."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import AppSettings

router = APIRouter(tags=["service"])


class UploadLimits(BaseModel):
    max_upload_bytes: int
    max_archive_members: int
    max_uncompressed_bytes: int
    max_compression_ratio: float
    max_image_pixels: int


class ServiceInfo(BaseModel):
    name: str
    version: str
    limits: UploadLimits


def service_version() -> str:
    try:
        return metadata.version("reid-service")
    except metadata.PackageNotFoundError:
        return "unknown"


@router.get("/info", response_model=ServiceInfo)
def info(settings: AppSettings) -> ServiceInfo:
    """Service name, version and the upload limits in force."""
    limits = UploadLimits(**settings.model_dump(include=set(UploadLimits.model_fields)))
    return ServiceInfo(name="reid-service", version=service_version(), limits=limits)
