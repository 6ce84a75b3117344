"""Which queued jobs and index builds the broker has not taken yet (Celery profile).

The database is the source of truth and a broker message only wakes a worker up. The API
sends an id right after committing its row and records ``dispatched_at`` once the broker has
accepted it. A send that failed (broker down, network) leaves ``dispatched_at`` NULL, and
every worker's recovery pass sends those ids again. A second message for the same id (a pass
racing with the API's own send) is harmless: the worker's atomic claim drops it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Job, JobStatus, SearchIndex, SearchIndexStatus, utcnow

__all__ = ["mark_dispatched", "release_stale_index_claims", "undispatched"]

_Row = type[Job] | type[SearchIndex]


def _waiting(row: _Row) -> Select[tuple[int]]:
    """Rows that need a message: queued jobs, unclaimed index builds."""
    if row is Job:
        return select(Job.id).where(Job.status == JobStatus.QUEUED.value)
    return select(SearchIndex.id).where(
        SearchIndex.status == SearchIndexStatus.BUILDING.value, SearchIndex.worker.is_(None)
    )


def undispatched(session: Session, row: _Row, limit: int = 100) -> list[int]:
    """Ids of ``row`` waiting for a worker that no broker message is known to carry."""
    query = _waiting(row).where(row.dispatched_at.is_(None)).order_by(row.id).limit(limit)
    return list(session.scalars(query))


def mark_dispatched(factory: sessionmaker[Session], row: _Row, row_id: int) -> None:
    """Record that the broker took ``row_id``'s message."""
    with factory() as session:
        session.execute(
            update(row)
            .where(row.id == row_id)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def release_stale_index_claims(session: Session, claim_timeout_s: float) -> int:
    """Index builds claimed longer ago than ``claim_timeout_s`` and still building (their
    worker died): unclaim them so the next recovery pass sends them once more."""
    stale = utcnow() - timedelta(seconds=claim_timeout_s)
    result = session.execute(
        update(SearchIndex)
        .where(
            SearchIndex.status == SearchIndexStatus.BUILDING.value,
            SearchIndex.worker.is_not(None),
            SearchIndex.claimed_at < stale,
        )
        .values(worker=None, dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)
