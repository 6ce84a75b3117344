"""Removing images from collections: one image everywhere, or a dataset's images by filter.

``DELETE /images/{id}`` forgets an image: every dataset lets go of it. ``POST
/datasets/{id}/images:delete`` removes a dataset's members matching a filter (retention:
``captured_before``). Both run one transaction per batch that deletes the members, recounts
each affected dataset and bumps its revision (its indexes are synced by the worker; searches
never return a removed member from the commit on, see :mod:`app.search.liveness`), and drops
the images no dataset holds any more (:mod:`app.datasets.orphans`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import Dataset, DatasetImage, DatasetStatus, Image
from app.core.storage import StorageLayout
from app.datasets.members import members_changed
from app.datasets.orphans import Trash, drop_orphans, readers_active
from app.datasets.service import DatasetNotFound

__all__ = ["ImageNotFound", "MemberFilter", "delete_image", "delete_members"]

BATCH = 5000  # members removed per transaction (bounded locks and statement sizes)


class ImageNotFound(LookupError):
    """No image with that id."""


@dataclass(frozen=True)
class MemberFilter:
    """Which members of a dataset to remove (all given conditions must hold)."""

    captured_before: datetime | None = None
    captured_after: datetime | None = None
    split: str | None = None
    camid: int | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.captured_before is not None:
            out.append(DatasetImage.captured_at < self.captured_before)
        if self.captured_after is not None:
            out.append(DatasetImage.captured_at >= self.captured_after)
        if self.split is not None:
            out.append(DatasetImage.split == self.split)
        if self.camid is not None:
            out.append(DatasetImage.camid == self.camid)
        return out


def _remove(session: Session, storage: StorageLayout, trash: Trash, member_ids: list[int]) -> int:
    """Delete these members (in the caller's transaction) and whatever that orphans."""
    rows = session.execute(
        select(DatasetImage.dataset_id, DatasetImage.image_id).where(
            DatasetImage.id.in_(member_ids)
        )
    ).all()
    if not rows:
        return 0
    datasets = sorted({d for d, _ in rows})
    session.execute(delete(DatasetImage).where(DatasetImage.id.in_(member_ids)))
    for dataset_id in datasets:
        members_changed(session, dataset_id)
    keep = readers_active(session, datasets)
    drop_orphans(session, storage, [i for _, i in rows], trash, keep_files=keep)
    return len(rows)


def delete_image(factory: sessionmaker[Session], storage: StorageLayout, image_id: int) -> int:
    """Remove the image from every dataset (and its file, once nothing reads it); returns how
    many memberships went. Raises :class:`ImageNotFound`."""

    def attempt() -> int:
        with factory() as session, Trash(storage) as trash:
            if session.get(Image, image_id) is None:
                raise ImageNotFound(image_id)
            held = select(DatasetImage.id).where(DatasetImage.image_id == image_id)
            removed = _remove(session, storage, trash, list(session.scalars(held)))
            session.commit()
            return removed

    return retry_races(attempt, f"deleting image {image_id}")


def delete_members(
    factory: sessionmaker[Session],
    storage: StorageLayout,
    dataset_id: int,
    where: MemberFilter,
) -> int:
    """Remove the members of ``dataset_id`` matching ``where``, in batches; returns how many.
    Raises :class:`~app.datasets.service.DatasetNotFound`."""
    conditions = [DatasetImage.dataset_id == dataset_id, *where.conditions()]

    def batch() -> int:
        with factory() as session, Trash(storage) as trash:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None or dataset.status != DatasetStatus.READY:
                raise DatasetNotFound(dataset_id)
            ids = list(
                session.scalars(
                    select(DatasetImage.id)
                    .where(*conditions)
                    .order_by(DatasetImage.id)
                    .limit(BATCH)
                )
            )
            removed = _remove(session, storage, trash, ids) if ids else 0
            session.commit()
            return removed

    total = 0
    while removed := retry_races(batch, f"deleting images of dataset {dataset_id}"):
        total += removed
    return total
