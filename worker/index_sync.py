"""Keeping a ready index in step with its living collection (worker side).

When images are appended to or deleted from a dataset its revision moves past its indexes';
a worker then claims each such index (:func:`app.search.indexes.claim_index`) and:

1. reads the dataset's revision, *then* its members (a change committed in between leaves
   the index behind, to be synced again, never ahead);
2. keeps the stored vectors of the members still there and embeds only the new members
   (never the old ones again);
3. writes the result as the index's next version, a folder beside the current one, and
   switches the row to it in one update (same index id, ``size`` changes): API processes
   load the new version on their next search, and searches in flight finish on the old one,
   which stays one more version before it is removed.

A failed sync keeps its claim, so it is tried again once the claim lapses (not in a loop);
the index stays searchable on its current version all along.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Model, SearchIndex
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.datasets.members import dataset_members
from app.search.indexes import (
    COL_MEMBER,
    ITEMS_FILE,
    LoadedIndex,
    dataset_revision,
    embedding_domain,
    finish_sync,
    items_of,
)
from worker.embedding import embed_images

__all__ = ["sync_index"]

logger = logging.getLogger(__name__)


def _discard_version(storage: StorageLayout, index_id: int, version: int) -> None:
    """Remove an old version's files (version 0 lives in the index folder itself)."""
    if version < 0:
        return
    if version > 0:
        shutil.rmtree(storage.index_version_dir(index_id, version), ignore_errors=True)
        return
    from trainer.index import FEATURES_FILE, IDS_FILE, INDEX_FILE, META_FILE

    for name in (INDEX_FILE, IDS_FILE, FEATURES_FILE, META_FILE, ITEMS_FILE):
        (storage.index_dir(index_id) / name).unlink(missing_ok=True)


def sync_index(
    settings: Settings, factory: sessionmaker[Session], index_id: int, worker: str
) -> str:
    """Bring the claimed index ``index_id`` up to its dataset's revision; returns ``synced``,
    ``lost`` (deleted or taken over meanwhile) or ``failed`` (tried again later)."""
    storage = StorageLayout(settings.data_dir)
    started = time.perf_counter()
    staging = None
    try:
        with factory() as session:
            row = session.get(SearchIndex, index_id)
            model = session.get(Model, row.model_id) if row is not None else None
            if row is None or model is None:
                return "lost"
            revision = dataset_revision(session, row.dataset_id)
            members = dataset_members(session, storage, row.dataset_id)
            domain = embedding_domain(session, model, row.dataset_id)
            version, dataset_id, model_path = row.version, row.dataset_id, storage.root / model.path
        current = LoadedIndex.load(index_id, storage.index_version_dir(index_id, version))
        index, items = current.index, current.items
        live = np.fromiter((m.id for m in members), np.int64, len(members))
        keep = np.flatnonzero(np.isin(items[:, COL_MEMBER], live))
        held = set(items[keep, COL_MEMBER].tolist())
        new = [m for m in members if m.id not in held]
        kept = np.asarray(current.features[keep], np.float32)
        added = (
            embed_images(settings, storage, model_path, domain, [m.path for m in new])
            if new
            else np.zeros((0, index.dim), np.float32)
        )
        features = np.concatenate([kept, added])
        synced = index.with_rows(
            features,
            ivf_threshold=settings.index_ivf_threshold,
            memory_bytes=settings.index_memory_bytes,
            kind=settings.index_type,
        )
        all_items = np.concatenate([items[keep], items_of(new, dataset_id)])
        staging = storage.index_dir(index_id) / f".v{version + 1}.building"
        shutil.rmtree(staging, ignore_errors=True)
        synced.save(staging, features)
        np.save(staging / ITEMS_FILE, all_items)
        final = storage.index_version_dir(index_id, version + 1)
        shutil.rmtree(final, ignore_errors=True)  # a half-finished earlier attempt
        staging.rename(final)
        staging = None
        ok = finish_sync(
            factory,
            index_id,
            worker,
            version=version + 1,
            revision=revision,
            kind=synced.kind,
            size=synced.size,
        )
        if not ok:
            shutil.rmtree(final, ignore_errors=True)
            return "lost"
        _discard_version(storage, index_id, version - 1)  # the current one stays a while
        logger.info(
            "index %d: synced to version %d (%d kept, %d added, %d removed) in %.2fs",
            index_id,
            version + 1,
            len(keep),
            len(new),
            len(items) - len(keep),
            time.perf_counter() - started,
        )
        return "synced"
    except Exception:
        logger.exception("index %d: sync failed; tried again once its claim lapses", index_id)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return "failed"
