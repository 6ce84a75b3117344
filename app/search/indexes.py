"""Search indexes: the ``indexes`` row's state machine and the API's cache of loaded ones.

An index is a dataset (all splits) embedded by one model with exactly the model's test
transform, L2-normalised, in a FAISS inner-product index (score = cosine). Next to
``trainer.index``'s files the folder holds ``items.npy``: one int64 row per vector
``(dataset_image_id, image_id, dataset_id, split code, pid, camid)``, FAISS ids being row
numbers, so results and filters need no database query per hit.

Building runs on a worker (``worker.index_build``): the ``indexes`` row is the work item
(``building`` → ``ready`` | ``failed``), claimed atomically like a job. The API loads indexes
lazily in a thread and keeps them in an LRU bounded by bytes (``REID_INDEX_CACHE_BYTES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.cache import LoadingCache
from app.core.orm import (
    Job,
    Model,
    SearchIndex,
    SearchIndexStatus,
    Split,
    utcnow,
)
from app.core.storage import StorageLayout
from app.datasets.members import dataset_members

__all__ = [
    "ITEMS_FILE",
    "NO_LABEL",
    "SPLIT_CODES",
    "SPLIT_NAMES",
    "IndexCache",
    "LoadedIndex",
    "claim_index",
    "claim_lapsed",
    "create_index",
    "dataset_items",
    "embedding_domain",
    "finish_index",
    "pending_index_ids",
    "release_lapsed_claims",
]

ITEMS_FILE = "items.npy"
SPLIT_CODES = {Split.TRAIN.value: 0, Split.QUERY.value: 1, Split.GALLERY.value: 2}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}
NO_LABEL = np.iinfo(np.int64).min  # pid/camid unknown (unlabeled dataset)
# columns of items.npy
COL_MEMBER, COL_IMAGE, COL_DATASET, COL_SPLIT, COL_PID, COL_CAMID = range(6)


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


def claim_index(
    factory: sessionmaker[Session], index_id: int, worker: str, claim_timeout_s: float
) -> bool:
    """Atomically take a building index nobody holds (or whose claim lapsed)."""
    with factory() as session:
        result = session.execute(
            update(SearchIndex)
            .where(
                SearchIndex.id == index_id,
                SearchIndex.status == SearchIndexStatus.BUILDING.value,
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
        return getattr(result, "rowcount", 0) == 1


def pending_index_ids(session: Session, claim_timeout_s: float, limit: int = 10) -> list[int]:
    """Building indexes a worker may take now, oldest first."""
    query = (
        select(SearchIndex.id)
        .where(
            SearchIndex.status == SearchIndexStatus.BUILDING.value,
            or_(SearchIndex.worker.is_(None), claim_lapsed(claim_timeout_s)),
        )
        .order_by(SearchIndex.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def release_lapsed_claims(session: Session, claim_timeout_s: float) -> int:
    """Unclaim the builds whose claim lapsed (their worker died) and mark them undispatched,
    so the next recovery pass sends them once more; returns how many."""
    result = session.execute(
        update(SearchIndex)
        .where(
            SearchIndex.status == SearchIndexStatus.BUILDING.value,
            SearchIndex.worker.is_not(None),
            claim_lapsed(claim_timeout_s),
        )
        .values(worker=None, dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def _label(value: int | None) -> int:
    return NO_LABEL if value is None else int(value)


def dataset_items(
    session: Session, storage: StorageLayout, dataset_id: int
) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to the images folder) and the items array of a dataset."""
    members = dataset_members(session, storage, dataset_id)
    rows = [(m.id, m.image_id, dataset_id, SPLIT_CODES[m.split], _label(m.pid), _label(m.camid))
            for m in members]  # fmt: skip
    items = np.array(rows, dtype=np.int64).reshape(len(rows), 6)
    return [m.path for m in members], items


def finish_index(
    factory: sessionmaker[Session], index_id: int, worker: str, **values: object
) -> bool:
    """End ``worker``'s build of ``index_id`` with ``values`` (status, sizes, error); False
    when the row was deleted or another worker holds it."""
    with factory() as session:
        result = session.execute(
            update(SearchIndex)
            .where(
                SearchIndex.id == index_id,
                SearchIndex.worker == worker,
                SearchIndex.status == SearchIndexStatus.BUILDING.value,
            )
            .values(finished_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return getattr(result, "rowcount", 0) == 1


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

    @property
    def nbytes(self) -> int:
        return int(self.index.size * self.index.dim * 4 + self.items.nbytes)  # type: ignore[attr-defined]

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
        items = np.load(folder / ITEMS_FILE, allow_pickle=False)
        if items.shape != (index.size, 6):
            raise ValueError(f"{folder}: items do not match the index")
        return cls(index_id, index, items, folder)


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
