"""Removing datasets, and the check that keeps a dataset in use from being removed.

Images are shared between datasets (stored once by content hash), so deleting a
dataset deletes its ``dataset_images`` rows (``ON DELETE CASCADE``) and then only those of
its images that no other dataset references, rows and files.

The order makes a concurrent upload of the same bytes safe: the orphaned files are moved
aside *before* the commit, while this transaction still holds the deleted ``images`` rows (an
upload inserting that hash waits for the outcome and then stores its own file); they are
deleted after the commit, or put back if it fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import ACTIVE_STATUSES, Dataset, DatasetImage, Image, Job, SearchIndex
from app.core.storage import StorageLayout

__all__ = ["DatasetInUse", "DatasetNotFound", "dataset_in_use", "delete_dataset"]

logger = logging.getLogger(__name__)

_CHUNK = 1000


class DatasetNotFound(LookupError):
    """No dataset with that id (or it is being deleted)."""


class DatasetInUse(RuntimeError):
    """A job uses the dataset; it cannot be deleted now."""


def dataset_in_use(session: Session, dataset_id: int) -> bool:
    """Is a queued or running job reading this dataset (as target, source or evaluation)?

    Finished jobs do not count: their references become NULL when the dataset goes.
    """
    reader = or_(
        Job.target_dataset_id == dataset_id,
        Job.source_dataset_id == dataset_id,
        Job.eval_dataset_id == dataset_id,
    )
    return bool(session.scalar(select(exists().where(Job.status.in_(ACTIVE_STATUSES), reader))))


def _orphan_candidates(session: Session, dataset_id: int) -> list[int]:
    query = select(DatasetImage.image_id).where(DatasetImage.dataset_id == dataset_id).distinct()
    return sorted(session.scalars(query))


def _delete_orphans(session: Session, image_ids: list[int]) -> list[tuple[str, str]]:
    """Delete the rows of those images nobody references any more; return (sha256, format)."""
    gone: list[tuple[str, str]] = []
    for start in range(0, len(image_ids), _CHUNK):
        chunk = image_ids[start : start + _CHUNK]
        stmt = (
            delete(Image)
            .where(
                Image.id.in_(chunk),
                ~exists().where(DatasetImage.image_id == Image.id),
            )
            .returning(Image.sha256, Image.format)
        )
        gone.extend((sha, fmt) for sha, fmt in session.execute(stmt))
    return gone


def delete_dataset(factory: sessionmaker[Session], storage: StorageLayout, dataset_id: int) -> int:
    """Delete a dataset, its unshared images and its search indexes; return how many image
    files went.

    Raises :class:`DatasetNotFound` or :class:`DatasetInUse`. Retried when a concurrent upload
    started referencing one of the images in the meantime (foreign-key error) or on deadlock.
    """

    def attempt() -> int:
        moved: list[tuple[Path, Path]] = []
        trash = Path(tempfile.mkdtemp(prefix="delete-", dir=_ensure(storage.tmp_dir)))
        try:
            with factory() as session:
                try:
                    if session.get(Dataset, dataset_id) is None:
                        raise DatasetNotFound(dataset_id)
                    if dataset_in_use(session, dataset_id):
                        raise DatasetInUse(dataset_id)
                    candidates = _orphan_candidates(session, dataset_id)
                    index_ids = list(
                        session.scalars(
                            select(SearchIndex.id).where(SearchIndex.dataset_id == dataset_id)
                        )
                    )
                    result = session.execute(delete(Dataset).where(Dataset.id == dataset_id))
                    if result.rowcount == 0:  # type: ignore[attr-defined]  # deleted meanwhile
                        raise DatasetNotFound(dataset_id)
                    for sha, fmt in _delete_orphans(session, candidates):
                        path = storage.image_path(sha, fmt)
                        aside = trash / path.name
                        try:
                            os.replace(path, aside)
                        except FileNotFoundError:
                            continue  # already missing: nothing to restore either
                        moved.append((path, aside))
                    session.commit()
                    for index_id in index_ids:  # rows went with the dataset (cascade)
                        shutil.rmtree(storage.index_dir(index_id), ignore_errors=True)
                    return len(moved)
                except BaseException:
                    _restore(moved)  # before the rollback releases the rows
                    raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    return retry_races(attempt, f"deleting dataset {dataset_id}")


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _restore(moved: list[tuple[Path, Path]]) -> None:
    for path, aside in moved:
        try:
            os.replace(aside, path)  # an identical file may have been stored meanwhile: same bytes
        except OSError as exc:
            logger.error("could not restore %s after a failed delete: %s", path, exc)
