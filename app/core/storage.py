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
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

__all__ = ["StorageHealth", "StorageLayout", "check_storage"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
STALE_TMP_S = 24 * 3600.0  # tmp entries untouched this long were left by a crash


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

    def job_dir(self, job_id: int) -> Path:
        """A job's run folder: checkpoints, events, the model file."""
        return self.root / "jobs" / str(job_id)

    def index_dir(self, index_id: int) -> Path:
        """A search index's folder: its first build's files (FAISS index, features, items)
        and, once images were appended or deleted, the later versions' subfolders."""
        return self.root / "indexes" / str(index_id)

    def index_version_dir(self, index_id: int, version: int) -> Path:
        """The files of one version of an index (version 0: the build, in :meth:`index_dir`)."""
        folder = self.index_dir(index_id)
        return folder if version == 0 else folder / f"v{version}"

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

    def sweep_tmp(self, idle_s: float = STALE_TMP_S) -> list[str]:
        """Remove what a crashed process left in ``tmp`` (upload and delete folders).

        An entry goes only when nothing in it changed for ``idle_s``: another API process
        sharing the data directory may be streaming an upload there right now, and every
        chunk it writes refreshes the newest modification time. Returns the names removed.
        """
        removed = []
        now = time.time()
        for entry in self.tmp_dir.iterdir() if self.tmp_dir.is_dir() else ():
            try:
                if now - _newest_mtime(entry) < idle_s:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError:  # vanished meanwhile, or not ours to remove: leave it
                continue
            removed.append(entry.name)
        return removed


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and, for a folder, of everything inside it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


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
