"""The single-machine worker: a thread in the ``reid serve`` process, the database its queue.

Why a DB-polling thread rather than Celery with a local transport: the jobs table already is
a durable queue with an atomic claim (the same one the Celery task uses), so polling it needs
no broker state that could disagree with the database, survives restarts by construction
(queued rows are simply still queued, a running row whose heartbeat lapsed is reaped), and
runs exactly the code the Celery task runs (:func:`worker.runner.execute_job`). One job at a
time, like one solo Celery worker per GPU. On shutdown the running job is stopped at the next
iteration, checkpointed and put back in the queue; it resumes on the next start.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.jobs.dispatch import WorkRow
from app.jobs.state import queued_job_ids
from app.search.indexes import pending_index_ids
from worker.index_build import build_index
from worker.reclaim import reclaim_lost_work
from worker.runner import execute_job, worker_name

__all__ = ["EmbeddedWorker"]

logger = logging.getLogger(__name__)


class EmbeddedWorker:
    """Polls for queued jobs every ``poll_interval_s`` and runs them one by one; as the
    app's :class:`~app.jobs.dispatch.Dispatcher` it wakes up when a row is queued."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.name = worker_name("embedded")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, factory: sessionmaker[Session] | None = None) -> None:
        """Start polling (with ``factory``'s sessions when given: the app's)."""
        if factory is not None:
            self.factory = factory
        if self.factory is None:
            raise ValueError("EmbeddedWorker.start needs a session factory")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="reid-embedded-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (called after a job was queued), not at the next poll."""
        self._wake.set()

    def dispatch(self, row: WorkRow, row_id: int) -> None:
        self.wake()

    def stop(self, timeout: float | None = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> bool:
        """Put lost work back, then run the oldest queued job, else build the oldest waiting
        index; False when there was nothing to do."""
        reclaim_lost_work(self.factory, self.settings)
        with self.factory() as session:
            ids = queued_job_ids(session, limit=1)
        for job_id in ids:
            if self._stop.is_set():
                return False
            execute_job(self.settings, self.factory, job_id, worker=self.name, shutdown=self._stop)
            return True
        with self.factory() as session:
            index_ids = pending_index_ids(session, self.settings.index_claim_timeout_s, limit=1)
        for index_id in index_ids:
            if self._stop.is_set():
                return False
            build_index(self.settings, self.factory, index_id, self.name)
            return True
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the DB may be away for a while; keep polling
                logger.exception("embedded worker: poll failed")
                busy = False
            if not busy:
                self._wake.wait(self.settings.poll_interval_s)
                self._wake.clear()
