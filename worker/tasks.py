"""The Celery tasks, thin on purpose: a job runs :func:`worker.runner.execute_job`, an index
build :func:`worker.index_build.build_index`; each message carries only the row's id."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, Task
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import Job
from app.core.settings import Settings
from app.jobs.dispatch import WorkRow

__all__ = ["INDEX_TASK_NAME", "TASK_NAME", "register_tasks", "session_factory", "task_for"]

TASK_NAME = "reid.run_job"
INDEX_TASK_NAME = "reid.build_index"


def task_for(row: WorkRow) -> str:
    """The task that carries the id of a ``row`` (a job, or an index build)."""
    return TASK_NAME if row is Job else INDEX_TASK_NAME


_factories: dict[tuple[int, str], sessionmaker[Session]] = {}
_lock = threading.Lock()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """One engine per process and database, made lazily: keyed by pid, so a prefork child
    never uses connections inherited from its parent (the reaper thread's)."""
    from app.core.db import create_db_engine, make_session_factory

    key = (os.getpid(), settings.effective_database_url)
    with _lock:
        if key not in _factories:
            _factories[key] = make_session_factory(create_db_engine(key[1]))
        return _factories[key]


def register_tasks(celery: Celery) -> None:
    # shared=False: each Celery app keeps its own task bound to its own settings (tests and
    # the API build several apps in one process)
    @celery.task(name=TASK_NAME, bind=True, shared=False, acks_late=True, ignore_result=True)
    def run_job(self: Task, job_id: int) -> dict[str, Any]:
        """Claim and run the job; a message for a job running elsewhere or done is dropped."""
        from worker.runner import execute_job

        settings: Settings = self.app.reid_settings
        outcome = execute_job(settings, session_factory(settings), int(job_id))
        return {"job_id": outcome.job_id, "status": outcome.status}

    @celery.task(name=INDEX_TASK_NAME, bind=True, shared=False, acks_late=True, ignore_result=True)
    def build_index(self: Task, index_id: int) -> dict[str, Any]:
        """Claim and build the index; a message for one built or held elsewhere is dropped."""
        from worker.index_build import build_index as build
        from worker.runner import worker_name

        settings: Settings = self.app.reid_settings
        status = build(settings, session_factory(settings), int(index_id), worker_name())
        return {"index_id": int(index_id), "status": status}
