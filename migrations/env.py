"""Alembic environment: programmatic (``app.core.db.upgrade_database``) or plain ``alembic``.

``app.core.db`` passes an open connection in ``config.attributes["connection"]``; without one (the
``alembic`` command with an ini file) the URL comes from ``sqlalchemy.url`` or the service
settings. ``render_as_batch`` lets ALTERs work on SQLite (copy-and-move tables).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.core.orm import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from app.core.settings import Settings

    return config.get_main_option("sqlalchemy.url") or Settings().effective_database_url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs
    )


def run_online(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    from app.core.db import create_db_engine

    engine = create_db_engine(_url())
    try:
        with engine.connect() as conn:
            run_online(conn)
    finally:
        engine.dispose()
