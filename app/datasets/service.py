"""Removing datasets, and the check that keeps a dataset in use from being removed.

Deleting a dataset deletes its ``dataset_images`` rows (``ON DELETE CASCADE``), its search
indexes, and then only those of its images that no other dataset references, rows and files
(:mod:`app.datasets.orphans`, which also makes a concurrent upload of the same bytes safe).
"""

from __future__ import annotations

import logging
import shutil

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import ACTIVE_STATUSES, Dataset, DatasetImage, Job, SearchIndex
from app.core.storage import StorageLayout
from app.datasets.orphans import Trash, drop_orphans

__all__ = ["DatasetInUse", "DatasetNotFound", "dataset_in_use", "delete_dataset"]

logger = logging.getLogger(__name__)


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


def _member_images(session: Session, dataset_id: int) -> list[int]:
    query = select(DatasetImage.image_id).where(DatasetImage.dataset_id == dataset_id).distinct()
    return sorted(session.scalars(query))


def delete_dataset(factory: sessionmaker[Session], storage: StorageLayout, dataset_id: int) -> int:
    """Delete a dataset, its unshared images and its search indexes; return how many image
    files went.

    Raises :class:`DatasetNotFound` or :class:`DatasetInUse`. Retried when a concurrent upload
    started referencing one of the images in the meantime (foreign-key error) or on deadlock.
    """

    def attempt() -> int:
        with factory() as session, Trash(storage) as trash:
            if session.get(Dataset, dataset_id) is None:
                raise DatasetNotFound(dataset_id)
            if dataset_in_use(session, dataset_id):
                raise DatasetInUse(dataset_id)
            candidates = _member_images(session, dataset_id)
            index_ids = list(
                session.scalars(select(SearchIndex.id).where(SearchIndex.dataset_id == dataset_id))
            )
            result = session.execute(delete(Dataset).where(Dataset.id == dataset_id))
            if result.rowcount == 0:  # type: ignore[attr-defined]  # deleted meanwhile
                raise DatasetNotFound(dataset_id)
            drop_orphans(session, storage, candidates, trash)
            session.commit()
            for index_id in index_ids:  # rows went with the dataset (cascade)
                shutil.rmtree(storage.index_dir(index_id), ignore_errors=True)
            return len(trash.moved)

    return retry_races(attempt, f"deleting dataset {dataset_id}")
