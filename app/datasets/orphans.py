"""Images no dataset holds any more: their rows and files go, safely and exactly once.

Images are shared between datasets (stored once by content hash). Whoever removes members
(a dataset delete, an image delete, retention) passes the image ids they held to
:func:`drop_orphans` in the same transaction: the rows of those nobody references any more
are deleted and their files moved aside *before* the commit, while the transaction still holds
the deleted rows (an upload inserting that hash waits for the outcome and then stores its own
file); :class:`Trash` deletes them after the commit, or puts them back if it fails.

A file a running reader may still open (a job training on the dataset, an index build or
sync embedding it) is not deleted at once: its row is marked ``orphaned_at`` and
:func:`collect_orphans` (run by every worker's recovery pass) removes it once no reader that
started before that moment is left.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import DatasetImage, Image, Job, JobStatus, SearchIndex, utcnow
from app.core.storage import StorageLayout

__all__ = ["Trash", "collect_orphans", "drop_orphans", "readers_active"]

logger = logging.getLogger(__name__)

_CHUNK = 1000


class Trash:
    """A folder for files moved aside inside a transaction: emptied on exit; on an error
    (exit with an exception) the files are first put back where they were."""

    def __init__(self, storage: StorageLayout) -> None:
        storage.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="delete-", dir=storage.tmp_dir))
        self.moved: list[tuple[Path, Path]] = []

    def move(self, path: Path) -> None:
        aside = self.folder / path.name
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return  # already missing: nothing to restore either
        self.moved.append((path, aside))

    def __enter__(self) -> Trash:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None:
            for path, aside in self.moved:
                try:  # an identical file may have been stored meanwhile: same bytes
                    os.replace(aside, path)
                except OSError as error:
                    logger.error("could not restore %s after a failed delete: %s", path, error)
            self.moved.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _unreferenced(image_ids: Sequence[int]):  # type: ignore[no-untyped-def]
    return Image.id.in_(image_ids), ~exists().where(DatasetImage.image_id == Image.id)


def drop_orphans(
    session: Session,
    storage: StorageLayout,
    image_ids: Sequence[int],
    trash: Trash,
    *,
    keep_files: bool = False,
) -> int:
    """Of ``image_ids``, the images no dataset references any more: delete their rows and
    move their files into ``trash``; with ``keep_files`` (a reader may still open them) only
    mark them ``orphaned_at`` instead. Returns how many were orphans."""
    ids = sorted(set(image_ids))
    count = 0
    for start in range(0, len(ids), _CHUNK):
        where = _unreferenced(ids[start : start + _CHUNK])
        if keep_files:
            result = session.execute(
                update(Image)
                .where(*where)
                .values(orphaned_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            count += int(getattr(result, "rowcount", 0) or 0)
            continue
        stmt = delete(Image).where(*where).returning(Image.sha256, Image.format)
        for sha, fmt in session.execute(stmt):
            trash.move(storage.image_path(sha, fmt))
            count += 1
    return count


def readers_active(session: Session, dataset_ids: Sequence[int]) -> bool:
    """May a running job or a claimed index build/sync still open files of these datasets?"""
    ids = list(dataset_ids)
    job = exists().where(
        Job.status == JobStatus.RUNNING.value,
        or_(
            Job.target_dataset_id.in_(ids),
            Job.source_dataset_id.in_(ids),
            Job.eval_dataset_id.in_(ids),
        ),
    )
    build = exists().where(SearchIndex.dataset_id.in_(ids), SearchIndex.worker.is_not(None))
    return bool(session.scalar(select(job)) or session.scalar(select(build)))


def collect_orphans(factory: sessionmaker[Session], storage: StorageLayout) -> int:
    """Remove the marked orphans no reader can need any more: every running job started and
    every index claim was taken after the image was orphaned (those read the members without
    it). Returns how many went."""

    def attempt() -> int:
        with factory() as session, Trash(storage) as trash:
            oldest_job = session.scalar(
                select(Job.started_at)
                .where(Job.status == JobStatus.RUNNING.value)
                .order_by(Job.started_at)
                .limit(1)
            )
            oldest_claim = session.scalar(
                select(SearchIndex.claimed_at)
                .where(SearchIndex.worker.is_not(None))
                .order_by(SearchIndex.claimed_at)
                .limit(1)
            )
            query = select(Image.id).where(Image.orphaned_at.is_not(None))
            for moment in (oldest_job, oldest_claim):
                if moment is not None:
                    query = query.where(Image.orphaned_at < moment)
            ids = list(session.scalars(query.limit(10 * _CHUNK)))
            if not ids:
                return 0
            count = drop_orphans(session, storage, ids, trash)
            session.commit()
            return count

    count = retry_races(attempt, "collecting orphaned images")
    if count:
        logger.info("collected %d orphaned images", count)
    return count
