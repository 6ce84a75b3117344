"""The Celery profile's reaper: lost jobs and index builds are queued and sent again.

With ``acks_late`` a killed worker's message stays unacknowledged in Redis until the
visibility timeout (deliberately far above any job), so redelivery cannot be relied on to be
timely. Instead every ``reid worker`` runs this pass every ``heartbeat_timeout_s / 2``: the
conditional ``UPDATE … RETURNING`` in :func:`app.jobs.state.reap_lapsed` hands each lapsed job to
exactly one reaper; jobs over ``max_attempts`` fail instead. Then every waiting job or index
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
from app.jobs.outbox import mark_dispatched, release_stale_index_claims, undispatched
from app.jobs.state import reap_lapsed

__all__ = ["recover_once", "send_undispatched", "start_recovery_thread"]

logger = logging.getLogger(__name__)


def recover_once(celery: Celery, settings: Settings) -> list[int]:
    """One pass; returns the ids of the jobs requeued because their worker was lost."""
    from worker.tasks import session_factory

    factory = session_factory(settings)
    requeued, failed = reap_lapsed(factory, settings.heartbeat_timeout_s, settings.max_attempts)
    if failed:
        logger.warning("reaper: jobs %s failed after %d attempts", failed, settings.max_attempts)
    for job_id in requeued:
        logger.warning("reaper: job %d lost its worker; queued again", job_id)
    with factory() as session:
        if released := release_stale_index_claims(session, settings.index_claim_timeout_s):
            logger.warning("reaper: %d index builds lost their worker; queued again", released)
    send_undispatched(celery, settings, factory)
    return requeued


def send_undispatched(celery: Celery, settings: Settings, factory: sessionmaker[Session]) -> None:
    """Send every waiting job and index build no broker message is known to carry (a send
    that failed, or requeued above), recording each one the broker takes."""
    from worker.celery_app import task_for

    for row in (Job, SearchIndex):
        with factory() as session:
            ids = undispatched(session, row)
        for row_id in ids:
            celery.send_task(task_for(row), args=[row_id], queue=settings.worker_queue)
            mark_dispatched(factory, row, row_id)


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
