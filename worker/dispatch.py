"""The dispatchers a service process can get: the Celery sender (scale-out: a queued row's id
goes to the Redis queue) or the embedded worker (single machine)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.jobs.dispatch import Dispatcher, WorkRow
from app.jobs.outbox import send_and_mark
from worker.celery_app import make_celery
from worker.embedded import EmbeddedWorker
from worker.tasks import task_for

__all__ = ["CeleryDispatcher", "celery_sender", "dispatcher_for"]

logger = logging.getLogger(__name__)


def celery_sender(celery: Celery, settings: Settings) -> Callable[[WorkRow, int], None]:
    """``send(row, row_id)``: one message on the worker queue for the row's task."""

    def send(row: WorkRow, row_id: int) -> None:
        celery.send_task(task_for(row), args=[row_id], queue=settings.worker_queue)

    return send


class CeleryDispatcher:
    """Sends each id, then records ``dispatched_at`` (:func:`app.jobs.outbox.send_and_mark`);
    a send that fails is retried by the workers' recovery pass."""

    def __init__(self, settings: Settings) -> None:
        self.celery = make_celery(settings)
        self._send = celery_sender(self.celery, settings)
        self._factory: sessionmaker[Session] | None = None

    def start(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def stop(self) -> None:
        pass

    def dispatch(self, row: WorkRow, row_id: int) -> None:
        if self._factory is None:  # the app was not started; the row simply waits
            logger.error("%s %d queued before the dispatcher started", row.__tablename__, row_id)
            return
        send_and_mark(self._send, self._factory, row, row_id)


def dispatcher_for(settings: Settings) -> Dispatcher:
    """Celery when a broker is configured, else a worker thread in this process."""
    if settings.broker_url:
        return CeleryDispatcher(settings)
    return EmbeddedWorker(settings)
