"""Files that appear whole or not at all: model files, checkpoints and exports are read by
other processes (the API, a resumed run) while a worker may be writing or get killed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """``write(file)`` into a temp file in ``path``'s folder, fsync, then ``os.replace``.

    A reader never sees a torn file and a crash leaves the previous version intact. The new
    file keeps the old one's permissions, or gets 0o644 (``mkstemp`` alone would give 0o600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
