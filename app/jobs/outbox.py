"""Which queued jobs and index builds the broker has not taken yet (Celery profile).

The database is the source of truth and a broker message only wakes a worker up. The API
sends an id right after committing its row and records ``dispatched_at`` once the broker has
accepted it. A send that failed (broker down, network) leaves ``dispatched_at`` NULL, and
every worker's recovery pass sends those ids again. A second message for the same id (a pass
racing with the API's own send) is harmless: the worker's atomic claim drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Job, JobStatus, SearchIndex, utcnow
from app.jobs.dispatch import WorkRow
from app.search.indexes import needs_work

__all__ = ["mark_dispatched", "send_and_mark", "undispatched"]

logger = logging.getLogger(__name__)


def _waiting(row: WorkRow) -> Select[tuple[int]]:
    """Rows that need a message: queued jobs, unclaimed index builds and syncs."""
    if row is Job:
        return select(Job.id).where(Job.status == JobStatus.QUEUED.value)
    return select(SearchIndex.id).where(needs_work(), SearchIndex.worker.is_(None))


def undispatched(session: Session, row: WorkRow, limit: int = 100) -> list[int]:
    """Ids of ``row`` waiting for a worker that no broker message is known to carry."""
    query = _waiting(row).where(row.dispatched_at.is_(None)).order_by(row.id).limit(limit)
    return list(session.scalars(query))


def mark_dispatched(factory: sessionmaker[Session], row: WorkRow, row_id: int) -> None:
    """Record that the broker took ``row_id``'s message."""
    with factory() as session:
        session.execute(
            update(row)
            .where(row.id == row_id)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def send_and_mark(
    send: Callable[[WorkRow, int], None], factory: sessionmaker[Session], row: WorkRow, row_id: int
) -> bool:
    """Send ``row_id``'s message, then record that the broker took it. A failed send only
    logs and returns False: the row stays undispatched for the next recovery pass."""
    try:
        send(row, row_id)
    except Exception as exc:
        logger.error("could not send %s %d to the broker: %s", row.__tablename__, row_id, exc)
        return False
    mark_dispatched(factory, row, row_id)
    return True
