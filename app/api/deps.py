"""Typed dependencies: what ``create_app`` built, handed to the routes (no route reads
``request.app.state`` itself)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.jobs.dispatch import Dispatcher
from app.search.indexes import IndexCache
from app.search.query import ModelCache

__all__ = [
    "AppSettings",
    "DbEngine",
    "DbSession",
    "Dispatch",
    "Indexes",
    "Models",
    "SessionFactory",
    "Storage",
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


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_index_cache(request: Request) -> IndexCache:
    return request.app.state.index_cache


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


AppSettings = Annotated[Settings, Depends(get_settings)]
DbEngine = Annotated[Engine, Depends(get_engine)]
Storage = Annotated[StorageLayout, Depends(get_storage)]
Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]
Indexes = Annotated[IndexCache, Depends(get_index_cache)]
Models = Annotated[ModelCache, Depends(get_model_cache)]
