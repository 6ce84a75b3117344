"""Wiring a service process: the app plus the dispatcher its profile needs.

Single machine (no ``REID_BROKER_URL``): the embedded worker runs jobs in the serving process.
Scale-out: new rows go to the Celery queue and ``reid worker`` processes run them.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.core.settings import Settings, configure_logging
from app.main import create_app
from worker.dispatch import dispatcher_for

__all__ = ["app_from_environment", "service_app"]


def service_app(settings: Settings) -> FastAPI:
    """The app ``reid serve`` and ``reid demo`` run."""
    return create_app(settings, dispatcher=dispatcher_for(settings))


def app_from_environment() -> FastAPI:
    """The app of one process of ``reid serve --workers N`` (uvicorn's factory, which needs a
    broker): settings from the environment, logging like ``reid serve``."""
    settings = Settings()
    configure_logging(settings.log_level)
    return service_app(settings)
