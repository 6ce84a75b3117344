"""How work reaches a worker: the API hands the id of each queued row to a :class:`Dispatcher`.

The database is the queue in every profile; a dispatcher only makes a worker notice sooner.
``create_app`` takes one and never chooses it, so the HTTP side imports no worker code: the
``reid`` command (the composition root) passes the embedded worker (single machine) or the
Celery sender (scale-out), and a service with neither leaves rows for a DB-polling
``reid worker``.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Job, SearchIndex

__all__ = ["Dispatcher", "QueueOnly", "WorkRow"]

WorkRow = type[Job] | type[SearchIndex]  # the two kinds of work item


class Dispatcher(Protocol):
    def start(self, factory: sessionmaker[Session]) -> None:
        """At app startup, with the app's session factory."""

    def stop(self) -> None:
        """At app shutdown."""

    def dispatch(self, row: WorkRow, row_id: int) -> None:
        """``row_id`` of ``row`` was just committed waiting (or still waits): tell a worker.
        Must not raise for a worker or broker that is away; the row stays queued."""


class QueueOnly:
    """No notification: rows wait in the database for a worker that polls it."""

    def start(self, factory: sessionmaker[Session]) -> None:
        pass

    def stop(self) -> None:
        pass

    def dispatch(self, row: WorkRow, row_id: int) -> None:
        pass
