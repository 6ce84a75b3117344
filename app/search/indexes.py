"""Search indexes: the ``indexes`` row's state machine and the API's cache of loaded ones.

An index is a dataset (all splits) embedded by one model with exactly the model's test
transform, L2-normalised, in a FAISS inner-product index (score = cosine). Next to
``trainer.index``'s files the folder holds ``items.npy``: one int64 row per vector
``(dataset_image_id, image_id, dataset_id, split code, pid, camid, captured_at)`` (the
capture time in epoch seconds), FAISS ids being row numbers, so results and filters need no
database query per hit. Indexes written before capture times existed have six columns and
load with the seventh unknown.

Building runs on a worker (``worker.index_build``): the ``indexes`` row is the work item
(``building`` → ``ready`` | ``failed``), claimed atomically like a job. The API loads indexes
lazily in a thread and keeps them in an LRU bounded by bytes (``REID_INDEX_CACHE_BYTES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.cache import LoadingCache
from app.core.orm import (
    Dataset,
    Job,
    Model,
    SearchIndex,
    SearchIndexStatus,
    Split,
    utcnow,
)
from app.core.storage import StorageLayout
from app.datasets.members import Member, dataset_members

__all__ = [
    "ITEMS_FILE",
    "ITEM_COLUMNS",
    "NO_LABEL",
    "SPLIT_CODES",
    "SPLIT_NAMES",
    "IndexCache",
    "LoadedIndex",
    "claim_index",
    "claim_lapsed",
    "create_index",
    "dataset_items",
    "dataset_revision",
    "embedding_domain",
    "epoch_seconds",
    "finish_index",
    "finish_sync",
    "items_of",
    "make_live_if_first",
    "needs_work",
    "pending_index_ids",
    "read_items",
    "release_lapsed_claims",
]

ITEMS_FILE = "items.npy"
SPLIT_CODES = {Split.TRAIN.value: 0, Split.QUERY.value: 1, Split.GALLERY.value: 2}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}
NO_LABEL = np.iinfo(np.int64).min  # pid/camid unknown (unlabeled dataset)
# columns of items.npy
COL_MEMBER, COL_IMAGE, COL_DATASET, COL_SPLIT, COL_PID, COL_CAMID, COL_CAPTURED = range(7)
ITEM_COLUMNS = 7


# --------------------------------------------------------------------------------------
# the work item


def create_index(
    session: Session, model_id: int, dataset_id: int, job_id: int | None = None
) -> SearchIndex:
    """A new ``building`` row (committed), waiting for a worker."""
    row = SearchIndex(model_id=model_id, dataset_id=dataset_id, job_id=job_id)
    session.add(row)
    session.commit()
    return row


def claim_lapsed(claim_timeout_s: float) -> ColumnElement[bool]:
    """The rule for a lost build: its claim is older than ``claim_timeout_s`` (a build only
    claims once, so a live worker's claim never gets that old: keep the timeout above the
    longest build)."""
    return SearchIndex.claimed_at < utcnow() - timedelta(seconds=claim_timeout_s)


def _behind() -> ColumnElement[bool]:
    """A ready index whose dataset changed since its version was written: it needs a sync."""
    dataset_revision = (
        select(Dataset.revision).where(Dataset.id == SearchIndex.dataset_id).scalar_subquery()
    )
    return and_(
        SearchIndex.status == SearchIndexStatus.READY.value,
        SearchIndex.revision < dataset_revision,
    )


def needs_work() -> ColumnElement[bool]:
    """The rows a worker has something to do for: a build, or a sync."""
    return or_(SearchIndex.status == SearchIndexStatus.BUILDING.value, _behind())


def claim_index(
    factory: sessionmaker[Session], index_id: int, worker: str, claim_timeout_s: float
) -> str | None:
    """Atomically take an index build or sync nobody holds (or whose claim lapsed); returns
    what was claimed, ``build`` or ``sync``, or None."""
    with factory() as session:
        result = session.execute(
            update(SearchIndex)
            .where(
                SearchIndex.id == index_id,
                needs_work(),
                or_(
                    SearchIndex.worker.is_(None),
                    SearchIndex.worker == worker,
                    claim_lapsed(claim_timeout_s),
                ),
            )
            .values(worker=worker, claimed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if getattr(result, "rowcount", 0) != 1:
            return None
        status = session.scalar(select(SearchIndex.status).where(SearchIndex.id == index_id))
        return "build" if status == SearchIndexStatus.BUILDING.value else "sync"


def pending_index_ids(session: Session, claim_timeout_s: float, limit: int = 10) -> list[int]:
    """Index builds and syncs a worker may take now, oldest first."""
    query = (
        select(SearchIndex.id)
        .where(
            needs_work(),
            or_(SearchIndex.worker.is_(None), claim_lapsed(claim_timeout_s)),
        )
        .order_by(SearchIndex.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def release_lapsed_claims(session: Session, claim_timeout_s: float) -> int:
    """Unclaim the builds and syncs whose claim lapsed (their worker died, or a sync failed
    and waits this long before the next try) and mark them undispatched, so the next
    recovery pass sends them once more; returns how many."""
    result = session.execute(
        update(SearchIndex)
        .where(
            SearchIndex.status.in_(
                (SearchIndexStatus.BUILDING.value, SearchIndexStatus.READY.value)
            ),
            SearchIndex.worker.is_not(None),
            claim_lapsed(claim_timeout_s),
        )
        .values(worker=None, dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def dataset_revision(session: Session, dataset_id: int) -> int:
    """Read *before* the members an index is made of: a change committed in between then
    leaves the index behind (synced again), never ahead of what it holds."""
    return session.scalar(select(Dataset.revision).where(Dataset.id == dataset_id)) or 0


def make_live_if_first(session: Session, index_id: int, dataset_id: int) -> None:
    """The first ready index of a collection becomes its live one (searches by collection)."""
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.live_index_id.is_(None))
        .values(live_index_id=index_id)
        .execution_options(synchronize_session=False)
    )


def _label(value: int | None) -> int:
    return NO_LABEL if value is None else int(value)


def epoch_seconds(moment: datetime | None) -> int:
    """A capture time as stored in the items array (:data:`NO_LABEL` when unknown)."""
    return NO_LABEL if moment is None else int(moment.timestamp())


def items_of(members: Sequence[Member], dataset_id: int) -> np.ndarray:
    """The items array rows of these members."""
    rows = [
        (m.id, m.image_id, dataset_id, SPLIT_CODES[m.split], _label(m.pid), _label(m.camid),
         epoch_seconds(m.captured_at))
        for m in members
    ]  # fmt: skip
    return np.array(rows, dtype=np.int64).reshape(len(rows), ITEM_COLUMNS)


def dataset_items(
    session: Session, storage: StorageLayout, dataset_id: int
) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to the images folder) and the items array of a dataset."""
    members = dataset_members(session, storage, dataset_id)
    return [m.path for m in members], items_of(members, dataset_id)


def read_items(folder: Path, size: int) -> np.ndarray:
    """The items array of an index folder (an older six-column one gets unknown times)."""
    items = np.load(folder / ITEMS_FILE, allow_pickle=False)
    if items.ndim == 2 and items.shape[1] == ITEM_COLUMNS - 1:
        items = np.hstack([items, np.full((len(items), 1), NO_LABEL, np.int64)])
    if items.shape != (size, ITEM_COLUMNS):
        raise ValueError(f"{folder}: items do not match the index")
    return items


def _finish(
    session: Session, index_id: int, worker: str, claimed_in: SearchIndexStatus, **values: object
) -> bool:
    """``worker``'s claim on ``index_id`` (in state ``claimed_in``) ends with ``values``."""
    result = session.execute(
        update(SearchIndex)
        .where(
            SearchIndex.id == index_id,
            SearchIndex.worker == worker,
            SearchIndex.status == claimed_in.value,
        )
        .values(worker=None, claimed_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


def finish_index(
    factory: sessionmaker[Session], index_id: int, worker: str, **values: object
) -> bool:
    """End ``worker``'s build of ``index_id`` with ``values`` (status, sizes, error) and
    release the claim (a later sync is claimed afresh); False when the row was deleted or
    another worker holds it. A build that became ready makes its index the collection's live
    one if it has none."""
    with factory() as session:
        done = _finish(
            session, index_id, worker, SearchIndexStatus.BUILDING, finished_at=utcnow(), **values
        )
        if done and values.get("status") == SearchIndexStatus.READY.value:
            dataset_id = session.scalar(
                select(SearchIndex.dataset_id).where(SearchIndex.id == index_id)
            )
            if dataset_id is not None:
                make_live_if_first(session, index_id, dataset_id)
        session.commit()
        return done


def finish_sync(
    factory: sessionmaker[Session], index_id: int, worker: str, **values: object
) -> bool:
    """Switch ``worker``'s synced index to its new version (``version``, ``revision``,
    ``size``...) and release the claim, in one update; False when the row was deleted or
    another worker holds it (the new version's files are then the caller's to remove)."""
    with factory() as session:
        done = _finish(session, index_id, worker, SearchIndexStatus.READY, error=None, **values)
        session.commit()
        return done


def embedding_domain(session: Session, model: Model, dataset_id: int) -> str:
    """The DSBN branch that embeds ``dataset_id`` with ``model``: ``source`` for the source
    dataset of the job that adapted the model (its images are of the source domain),
    ``target`` for everything else. Index builds and the queries against them both ask here."""
    job = session.get(Job, model.job_id)
    if job is None or job.source_dataset_id != dataset_id or job.target_dataset_id == dataset_id:
        return "target"
    return "source"


# --------------------------------------------------------------------------------------
# the API's cache


@dataclass
class LoadedIndex:
    """An index in memory with its items; the feature matrix is memory-mapped on demand."""

    index_id: int
    index: object  # trainer.index.FeatureIndex (imported lazily: faiss is heavy)
    items: np.ndarray
    folder: Path
    _features: np.ndarray | None = None
    # rows whose members were deleted after this version was written (learnt by searches,
    # see app.search.liveness); replaced, never changed in place: the compute thread reads it
    removed: np.ndarray | None = None

    def mark_removed(self, rows: np.ndarray) -> None:
        mask = np.zeros(len(self.items), bool) if self.removed is None else self.removed.copy()
        mask[rows] = True
        self.removed = mask

    @property
    def removed_count(self) -> int:
        return 0 if self.removed is None else int(self.removed.sum())

    @property
    def nbytes(self) -> int:
        per_vector = self.index.bytes_per_vector  # type: ignore[attr-defined]
        return int(self.index.size * per_vector + self.items.nbytes)  # type: ignore[attr-defined]

    @property
    def features(self) -> np.ndarray:
        """The N × d matrix: a flat index's own storage (already in memory), else the stored
        file, memory-mapped (only the pages an exact scan touches)."""
        if self._features is None:
            from trainer.index import FEATURES_FILE

            vectors = self.index.vectors()  # type: ignore[attr-defined]
            if vectors is None:
                vectors = np.load(self.folder / FEATURES_FILE, mmap_mode="r")
            self._features = vectors
        return self._features

    @classmethod
    def load(cls, index_id: int, folder: Path) -> LoadedIndex:
        from trainer.index import FeatureIndex

        index = FeatureIndex.load(folder)
        return cls(index_id, index, read_items(folder, index.size), folder)


class IndexCache(LoadingCache[LoadedIndex]):
    """The API's loaded indexes, an LRU bounded by bytes (the most recent one always stays)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, weight=lambda e: e.nbytes)

    @property
    def total_bytes(self) -> int:
        return self.total

    def get_index(self, index_id: int, folder: Path, version: str = "") -> LoadedIndex:
        """The loaded index (blocking); ``version``: the row's build time."""
        return self.get(index_id, version, lambda: LoadedIndex.load(index_id, folder))
