"""Request-scoped dependencies shared by the routers (settings, database sessions)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.core.storage import StorageLayout

__all__ = [
    "DbSession",
    "SessionFactory",
    "get_engine",
    "get_session",
    "get_session_factory",
    "get_settings",
    "get_storage",
]


def get_settings(request: Request) -> Settings:
    """The settings ``create_app`` was given (never re-read from the environment)."""
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_storage(request: Request) -> StorageLayout:
    return request.app.state.storage


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """For work that runs in its own thread with its own sessions (uploads, deletes)."""
    return request.app.state.sessionmaker


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed afterwards; endpoints commit explicitly."""
    with request.app.state.sessionmaker() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]
SessionFactory = Annotated[sessionmaker[Session], Depends(get_session_factory)]
