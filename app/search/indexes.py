"""Search indexes: building one (worker side) and the API's byte-bounded cache of loaded ones.

An index is a collection (all splits) embedded by one model with exactly the model's test
transform, L2-normalised, in a FAISS inner-product index (score = cosine). Next to
``trainer.index``'s files the folder holds ``items.npy``: one int64 row per vector
``(dataset_image_id, image_id, dataset_id, split code, pid, camid)``, FAISS ids being row
numbers, so results and filters need no database query per hit.

Building runs on a worker: the ``indexes`` row is the work item (``building`` → ``ready`` |
``failed``), claimed atomically like a job. The API loads indexes lazily in a thread and keeps
them in an LRU bounded by bytes (``REID_INDEX_CACHE_BYTES``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.cache import LoadingCache
from app.core.orm import (
    DatasetImage,
    Image,
    Job,
    Model,
    SearchIndex,
    SearchIndexStatus,
    Split,
    utcnow,
)
from app.core.settings import Settings
from app.core.storage import StorageLayout

__all__ = [
    "ITEMS_FILE",
    "NO_LABEL",
    "SPLIT_CODES",
    "SPLIT_NAMES",
    "IndexCache",
    "LoadedIndex",
    "build_index",
    "claim_index",
    "create_index",
    "index_dir",
    "pending_index_ids",
]

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.npy"
SPLIT_CODES = {Split.TRAIN.value: 0, Split.QUERY.value: 1, Split.GALLERY.value: 2}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}
NO_LABEL = np.iinfo(np.int64).min  # pid/camid unknown (unlabeled collection)
# columns of items.npy
COL_MEMBER, COL_IMAGE, COL_DATASET, COL_SPLIT, COL_PID, COL_CAMID = range(6)


def index_dir(storage: StorageLayout, index_id: int) -> Path:
    return storage.root / "indexes" / str(index_id)


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


def claim_index(
    factory: sessionmaker[Session], index_id: int, worker: str, claim_timeout_s: float
) -> bool:
    """Atomically take a building index nobody holds (or whose claim is stale)."""
    now = utcnow()
    with factory() as session:
        result = session.execute(
            update(SearchIndex)
            .where(
                SearchIndex.id == index_id,
                SearchIndex.status == SearchIndexStatus.BUILDING.value,
                or_(
                    SearchIndex.worker.is_(None),
                    SearchIndex.worker == worker,
                    SearchIndex.claimed_at < now - timedelta(seconds=claim_timeout_s),
                ),
            )
            .values(worker=worker, claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return getattr(result, "rowcount", 0) == 1


def pending_index_ids(session: Session, claim_timeout_s: float, limit: int = 10) -> list[int]:
    """Building indexes a worker may take now, oldest first."""
    stale = utcnow() - timedelta(seconds=claim_timeout_s)
    query = (
        select(SearchIndex.id)
        .where(
            SearchIndex.status == SearchIndexStatus.BUILDING.value,
            or_(SearchIndex.worker.is_(None), SearchIndex.claimed_at < stale),
        )
        .order_by(SearchIndex.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def _label(value: int | None) -> int:
    return NO_LABEL if value is None else int(value)


def collection_items(
    session: Session, storage: StorageLayout, dataset_id: int
) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to the images folder) and the items array of a collection."""
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
    paths: list[str] = []
    rows: list[tuple[int, ...]] = []
    for member, image, split, pid, camid, sha, fmt in session.execute(query):
        paths.append(storage.image_path(sha, fmt).relative_to(storage.images_dir).as_posix())
        rows.append((member, image, dataset_id, SPLIT_CODES[split], _label(pid), _label(camid)))
    items = np.array(rows, dtype=np.int64).reshape(len(rows), 6)
    return paths, items


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _finish(factory: sessionmaker[Session], index_id: int, worker: str, **values: object) -> bool:
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
    collection of the job that adapted the model (its images are of the source domain),
    ``target`` for everything else. Index builds and the queries against them both ask here."""
    job = session.get(Job, model.job_id)
    if job is None or job.source_dataset_id != dataset_id or job.target_dataset_id == dataset_id:
        return "target"
    return "source"


def build_index(
    settings: Settings, factory: sessionmaker[Session], index_id: int, worker: str
) -> str:
    """Claim and build index ``index_id``; returns its final status (or ``skipped``).

    Exceptions become a ``failed`` row with the message; they never escape (the worker lives
    on). A row deleted during the build leaves no files behind.
    """
    from trainer.embedder import Embedder
    from trainer.index import FeatureIndex

    if not claim_index(factory, index_id, worker, settings.index_claim_timeout_s):
        return "skipped"
    storage = StorageLayout(settings.data_dir)
    final = index_dir(storage, index_id)
    staging = final.parent / f".{index_id}.building"
    started = time.perf_counter()
    try:
        with factory() as session:
            row = session.get(SearchIndex, index_id)
            model = session.get(Model, row.model_id) if row is not None else None
            if row is None or model is None:
                raise ValueError("the index or its model was deleted")
            paths, items = collection_items(session, storage, row.dataset_id)
            model_path = storage.root / model.path
            domain = embedding_domain(session, model, row.dataset_id)
        if not paths:
            raise ValueError("the collection has no images")
        embedder = Embedder.load(model_path, _device(), domain)
        features = embedder.features(
            storage.images_dir, paths, workers=settings.loader_workers or 0
        )
        features_np = features.numpy()
        index = FeatureIndex.build(
            features_np,
            np.arange(len(paths), dtype=np.int64),
            ivf_threshold=settings.index_ivf_threshold,
        )
        shutil.rmtree(staging, ignore_errors=True)
        index.save(staging, features_np)
        np.save(staging / ITEMS_FILE, items)
        shutil.rmtree(final, ignore_errors=True)  # a half-finished earlier attempt
        staging.rename(final)
        ok = _finish(
            factory,
            index_id,
            worker,
            status=SearchIndexStatus.READY.value,
            kind=index.kind,
            size=index.size,
            dim=index.dim,
            build_seconds=round(time.perf_counter() - started, 3),
            error=None,
        )
        if not ok:  # deleted (or taken over) meanwhile
            with factory() as session:
                if session.get(SearchIndex, index_id) is None:
                    shutil.rmtree(final, ignore_errors=True)
            return "lost"
        logger.info("index %d: %d vectors (%s) built", index_id, index.size, index.kind)
        return SearchIndexStatus.READY.value
    except Exception as exc:
        logger.exception("index %d failed", index_id)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _finish(
                factory,
                index_id,
                worker,
                status=SearchIndexStatus.FAILED.value,
                error=f"{type(exc).__name__}: {exc}"[:4000],
                build_seconds=round(time.perf_counter() - started, 3),
            )
        except Exception:
            logger.exception("index %d: could not record the failure", index_id)
        return SearchIndexStatus.FAILED.value


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
        """The stored N × d matrix (memory-mapped: only the pages an exact scan touches)."""
        if self._features is None:
            from trainer.index import FEATURES_FILE

            self._features = np.load(self.folder / FEATURES_FILE, mmap_mode="r")
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
