"""The Celery profile's reaper: lost jobs and index builds are queued and sent again.

With ``acks_late`` a killed worker's message stays unacknowledged in Redis until the
visibility timeout (deliberately far above any job), so redelivery cannot be relied on to be
timely. Instead every ``reid worker`` runs this pass every ``heartbeat_timeout_s / 2``: lost
work is put back (:mod:`worker.reclaim`; each lapsed job goes to exactly one reaper, jobs
over ``max_attempts`` fail instead). Then every waiting job or index
build whose message the broker never took (:mod:`app.jobs.outbox`: the API's send failed, or it
was just requeued) is sent; a second delivery of any kind is dropped by the claim.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Job, SearchIndex
from app.core.settings import Settings
from app.jobs.outbox import send_and_mark, undispatched
from worker.dispatch import celery_sender
from worker.reclaim import reclaim_lost_work
from worker.tasks import session_factory

__all__ = ["recover_once", "send_undispatched", "start_recovery_thread"]

logger = logging.getLogger(__name__)


def recover_once(celery: Celery, settings: Settings) -> list[int]:
    """One pass; returns the ids of the jobs requeued because their worker was lost."""
    factory = session_factory(settings)
    requeued = reclaim_lost_work(factory, settings)
    send_undispatched(celery, settings, factory)
    return requeued


def send_undispatched(celery: Celery, settings: Settings, factory: sessionmaker[Session]) -> None:
    """Send every waiting job and index build no broker message is known to carry (a send
    that failed, or requeued above), recording each one the broker takes; stops at the first
    failed send (the broker is away: the next pass tries again)."""
    send = celery_sender(celery, settings)
    for row in (Job, SearchIndex):
        with factory() as session:
            ids = undispatched(session, row)
        for row_id in ids:
            if not send_and_mark(send, factory, row, row_id):
                return


def start_recovery_thread(celery: Celery, settings: Settings) -> threading.Event:
    """Run :func:`recover_once` periodically in a daemon thread; set the event to stop it."""
    stop = threading.Event()
    interval = max(settings.heartbeat_timeout_s / 2, 0.5)

    def loop() -> None:
        while not stop.wait(interval):
            try:
                recover_once(celery, settings)
            except Exception as exc:  # DB or broker away: try again next time
                logger.warning("reaper pass failed: %s", exc)

    threading.Thread(target=loop, name="reid-reaper", daemon=True).start()
    return stop
