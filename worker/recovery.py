"""The Celery profile's reaper: jobs whose worker died are requeued and their ids sent again.

With ``acks_late`` a killed worker's message stays unacknowledged in Redis until the
visibility timeout (deliberately far above any job), so redelivery cannot be relied on to be
timely. Instead every ``reid worker`` runs this pass every ``heartbeat_timeout_s / 2``: the
conditional ``UPDATE … RETURNING`` in :func:`app.jobs.reap_lapsed` hands each lapsed job to
exactly one reaper, which sends a new message; a second delivery of any kind is dropped by
the claim. Jobs over ``max_attempts`` fail instead.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from app.jobs import reap_lapsed
from app.settings import Settings

__all__ = ["recover_once", "start_recovery_thread"]

logger = logging.getLogger(__name__)


def recover_once(celery: Celery, settings: Settings) -> list[int]:
    """One pass; returns the ids sent again."""
    from worker.celery_app import TASK_NAME
    from worker.tasks import session_factory

    requeued, failed = reap_lapsed(
        session_factory(settings), settings.heartbeat_timeout_s, settings.max_attempts
    )
    if failed:
        logger.warning("reaper: jobs %s failed after %d attempts", failed, settings.max_attempts)
    for job_id in requeued:
        logger.warning("reaper: job %d lost its worker; queued again", job_id)
        celery.send_task(TASK_NAME, args=[job_id], queue=settings.worker_queue)
    _resend_stale_indexes(celery, settings)
    return requeued


def _resend_stale_indexes(celery: Celery, settings: Settings) -> None:
    """Index builds nobody holds (lost message) or whose claim went stale: send them again
    (the claim drops duplicates)."""
    from app.indexes import pending_index_ids
    from worker.celery_app import INDEX_TASK_NAME
    from worker.tasks import session_factory

    with session_factory(settings)() as session:
        ids = pending_index_ids(session, settings.index_claim_timeout_s)
    for index_id in ids:
        celery.send_task(INDEX_TASK_NAME, args=[index_id], queue=settings.worker_queue)


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
