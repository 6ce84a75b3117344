"""Building a search index (worker side): embed a dataset with a model, write the FAISS files.

The ``indexes`` row is the work item (:mod:`app.search.indexes` holds its transitions): a
worker claims it, embeds every member with the model's test transform (the DSBN branch of
:func:`~app.search.indexes.embedding_domain`), writes the files into a staging folder that is
renamed into place, and records the outcome with the dataset revision it read. A claim can
also be a sync of a ready index whose dataset changed since (:mod:`worker.index_sync`).
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Model, SearchIndex, SearchIndexStatus
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.search.indexes import (
    ITEMS_FILE,
    claim_index,
    dataset_items,
    dataset_revision,
    embedding_domain,
    finish_index,
)
from worker.embedding import embed_images
from worker.index_sync import sync_index

__all__ = ["build_index"]

logger = logging.getLogger(__name__)


def build_index(
    settings: Settings, factory: sessionmaker[Session], index_id: int, worker: str
) -> str:
    """Claim and build index ``index_id`` (or sync it, when that is what it needs); returns
    its final status (or ``skipped``, or the sync's outcome).

    Exceptions become a ``failed`` row with the message; they never escape (the worker lives
    on). A row deleted during the build leaves no files behind.
    """
    from trainer.index import FeatureIndex

    claimed = claim_index(factory, index_id, worker, settings.index_claim_timeout_s)
    if claimed is None:
        return "skipped"
    if claimed == "sync":
        return sync_index(settings, factory, index_id, worker)
    storage = StorageLayout(settings.data_dir)
    final = storage.index_dir(index_id)
    staging = final.parent / f".{index_id}.building"
    started = time.perf_counter()
    try:
        with factory() as session:
            row = session.get(SearchIndex, index_id)
            model = session.get(Model, row.model_id) if row is not None else None
            if row is None or model is None:
                raise ValueError("the index or its model was deleted")
            revision = dataset_revision(session, row.dataset_id)
            paths, items = dataset_items(session, storage, row.dataset_id)
            model_path = storage.root / model.path
            domain = embedding_domain(session, model, row.dataset_id)
        if not paths:
            raise ValueError("the dataset has no images")
        features_np = embed_images(settings, storage, model_path, domain, paths)
        index = FeatureIndex.build(
            features_np,
            np.arange(len(paths), dtype=np.int64),
            ivf_threshold=settings.index_ivf_threshold,
            memory_bytes=settings.index_memory_bytes,
            kind=settings.index_type,
        )
        shutil.rmtree(staging, ignore_errors=True)
        index.save(staging, features_np)
        np.save(staging / ITEMS_FILE, items)
        shutil.rmtree(final, ignore_errors=True)  # a half-finished earlier attempt
        staging.rename(final)
        ok = finish_index(
            factory,
            index_id,
            worker,
            status=SearchIndexStatus.READY.value,
            kind=index.kind,
            size=index.size,
            dim=index.dim,
            build_seconds=round(time.perf_counter() - started, 3),
            error=None,
            revision=revision,
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
            finish_index(
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
