"""The Celery application (scale-out profile: Redis broker, one solo worker per GPU).

``reid worker`` builds its app from its settings; ``celery -A worker.celery_app …`` asks this
module for ``app``, which is built from the environment (``REID_BROKER_URL``) only then, so
importing the module builds nothing. Results are not stored (the database
holds the outcome); tasks are acknowledged late and prefetched one at a time, so a worker
that dies mid-job leaves its message to be redelivered, and the claim in the database makes
a redelivery of a running or finished job a no-op.
"""

from __future__ import annotations

from celery import Celery

from app.core.settings import Settings
from worker.tasks import INDEX_TASK_NAME, TASK_NAME, register_tasks

__all__ = ["app", "make_celery"]


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with the job and index tasks registered."""
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


def __getattr__(name: str) -> Celery:
    """``worker.celery_app.app`` for the ``celery`` command, made on first use."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global app
    app = make_celery(Settings())
    return app
