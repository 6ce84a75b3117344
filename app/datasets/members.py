"""A dataset's images as the workers read them: one row per member, in upload order.

Training inputs and index builds both start from this list, so the path of a stored image
and the order of a dataset's members are decided here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import distinct, func, select, update
from sqlalchemy.orm import Session

from app.core.orm import Dataset, DatasetImage, Image, SearchIndex, SearchIndexStatus
from app.core.storage import StorageLayout

__all__ = ["Member", "dataset_members", "members_changed"]


@dataclass(frozen=True)
class Member:
    """One image of a dataset; ``path`` is relative to the storage's images folder."""

    id: int  # the dataset_images row
    image_id: int
    split: str
    pid: int | None
    camid: int | None
    path: str
    captured_at: datetime | None = None


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
            DatasetImage.captured_at,
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
            captured,
        )
        for row_id, image_id, split, pid, camid, captured, sha, fmt in session.execute(query)
    ]


def members_changed(session: Session, dataset_id: int) -> None:
    """After members were appended or deleted (in the caller's transaction): recount the
    dataset, bump its ``revision`` and mark its ready indexes undispatched, so the worker
    syncs them (and the recovery pass re-sends them should the API's own send fail)."""
    of_dataset = DatasetImage.dataset_id == dataset_id
    splits = dict(
        session.execute(
            select(DatasetImage.split, func.count()).where(of_dataset).group_by(DatasetImage.split)
        ).all()
    )
    identities = 0
    for split_cond in (DatasetImage.split == "train", DatasetImage.split != "train"):
        count = select(func.count(distinct(DatasetImage.pid))).where(of_dataset, split_cond)
        identities += session.scalar(count) or 0
    cameras = session.scalar(select(func.count(distinct(DatasetImage.camid))).where(of_dataset))
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(
            num_images=sum(splits.values()),
            num_train=splits.get("train", 0),
            num_query=splits.get("query", 0),
            num_gallery=splits.get("gallery", 0),
            num_identities=identities,  # training and test identities apart, as at upload
            num_cameras=cameras or 0,
            revision=Dataset.revision + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(SearchIndex)
        .where(
            SearchIndex.dataset_id == dataset_id,
            SearchIndex.status == SearchIndexStatus.READY.value,
        )
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
