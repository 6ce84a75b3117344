"""A dataset's images as the workers read them: one row per member, in upload order.

Training inputs and index builds both start from this list, so the path of a stored image
and the order of a dataset's members are decided here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.orm import DatasetImage, Image
from app.core.storage import StorageLayout

__all__ = ["Member", "dataset_members"]


@dataclass(frozen=True)
class Member:
    """One image of a dataset; ``path`` is relative to the storage's images folder."""

    id: int  # the dataset_images row
    image_id: int
    split: str
    pid: int | None
    camid: int | None
    path: str


def dataset_members(
    session: Session,
    storage: StorageLayout,
    dataset_id: int,
    splits: Sequence[str] | None = None,
) -> list[Member]:
    """The members of ``dataset_id`` (only those in ``splits`` when given), oldest first."""
    query = (
        select(
            DatasetImage.id,
            DatasetImage.image_id,
            DatasetImage.split,
            DatasetImage.pid,
            DatasetImage.camid,
            Image.sha256,
            Image.format,
        )
        .join(Image, Image.id == DatasetImage.image_id)
        .where(DatasetImage.dataset_id == dataset_id)
        .order_by(DatasetImage.id)
    )
    if splits is not None:
        query = query.where(DatasetImage.split.in_(list(splits)))
    root = storage.images_dir
    return [
        Member(
            row_id,
            image_id,
            split,
            pid,
            camid,
            storage.image_path(sha, fmt).relative_to(root).as_posix(),
        )
        for row_id, image_id, split, pid, camid, sha, fmt in session.execute(query)
    ]
