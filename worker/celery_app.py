"""The Celery application (scale-out profile: Redis broker, one solo worker per GPU).

``celery -A worker.celery_app worker`` and ``reid worker`` use the module-level ``app``, built
from the environment's settings (``REID_BROKER_URL``). Results are not stored (the database
holds the outcome); tasks are acknowledged late and prefetched one at a time, so a worker
that dies mid-job leaves its message to be redelivered, and the claim in the database makes
a redelivery of a running or finished job a no-op.
"""

from __future__ import annotations

from celery import Celery

from app.core.orm import Job, SearchIndex
from app.core.settings import Settings

__all__ = ["INDEX_TASK_NAME", "TASK_NAME", "app", "make_celery", "task_for"]

TASK_NAME = "reid.run_job"
INDEX_TASK_NAME = "reid.build_index"


def task_for(row: type[Job] | type[SearchIndex]) -> str:
    """The task that carries the id of a ``row`` (a job, or an index build)."""
    return TASK_NAME if row is Job else INDEX_TASK_NAME


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with the training task registered."""
    from worker.tasks import register_tasks

    celery = Celery("reid", broker=settings.broker_url or "memory://", set_as_current=False)
    celery.conf.update(
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.worker_queue,
        task_routes={
            TASK_NAME: {"queue": settings.worker_queue},
            INDEX_TASK_NAME: {"queue": settings.worker_queue},
        },
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    celery.reid_settings = settings  # type: ignore[attr-defined]
    register_tasks(celery)
    return celery


app = make_celery(Settings())
