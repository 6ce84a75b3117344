"""Where files live under the data directory, and a health probe for it.

Images are stored once, by content: ``DATA_DIR/images/ab/cd/<sha256>.<ext>`` (two levels of
256 folders keep directories small at millions of images). Uploads are staged in
``DATA_DIR/tmp`` — on the same filesystem, so moving a finished file into place is an atomic
``os.replace``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

__all__ = ["StorageHealth", "StorageLayout", "check_storage"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


@dataclass(frozen=True)
class StorageLayout:
    """Paths inside one data directory; pure computation except :meth:`ensure`."""

    root: Path

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def image_path(self, sha256: str, ext: str) -> Path:
        """Path of the image with this content hash (lowercase hex) and extension.

        Both parts are validated, so a path built from request data can never leave
        ``images_dir``.
        """
        digest = sha256.lower()
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        suffix = ext.lower().removeprefix(".")
        if not _EXTENSION.fullmatch(suffix):
            raise ValueError(f"bad file extension: {ext!r}")
        return self.images_dir / digest[:2] / digest[2:4] / f"{digest}.{suffix}"

    def ensure(self) -> None:
        """Create the data, images and tmp folders (idempotent)."""
        for folder in (self.root, self.images_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)


class StorageHealth(BaseModel):
    ok: bool
    path: str
    writable: bool
    free_bytes: int | None = None
    error: str | None = None


def check_storage(root: Path) -> StorageHealth:
    """Can the service write to ``root`` right now (really create a file), and how much room?"""
    writable = False
    error = None
    free = None
    try:
        if not root.is_dir():
            raise FileNotFoundError(f"data directory {root} does not exist")
        fd, name = tempfile.mkstemp(prefix=".health-", dir=root)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(name)
        writable = True
        free = shutil.disk_usage(root).free
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return StorageHealth(
        ok=writable, path=str(root), writable=writable, free_bytes=free, error=error
    )
