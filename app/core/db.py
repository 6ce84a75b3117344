"""Engines, sessions, schema migrations and the database health probe.

SQLite (the single-machine default) gets foreign keys, WAL (readers never block the writer)
and a busy timeout on every connection. PostgreSQL gets a connect timeout and pre-ping, so a
dead server is reported quickly instead of hanging a request.

Migrations run programmatically from ``migrations/`` next to the ``app`` package; no
``alembic.ini`` is needed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

__all__ = [
    "MIGRATIONS_DIR",
    "DatabaseHealth",
    "alembic_config",
    "check_database",
    "create_db_engine",
    "current_revision",
    "downgrade_database",
    "is_transient",
    "make_session_factory",
    "retry_races",
    "upgrade_database",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"  # beside the app package
SQLITE_BUSY_TIMEOUT_MS = 30_000
RACE_ATTEMPTS = 3
T = TypeVar("T")
POSTGRES_CONNECT_TIMEOUT_S = 5
_MIGRATION_LOCK_ID = 0x7265_6964  # "reid": serialises concurrent upgrades on PostgreSQL


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite pragmas (they are not persistent, except journal_mode)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL").fetchall()
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
    finally:
        cursor.close()


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the per-backend settings above; ``kwargs`` go to SQLAlchemy.

    Creating it does not connect. For a SQLite file, its folder is created (SQLite would
    only say "unable to open database file").
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kwargs.setdefault("connect_args", {}).update(
            {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            # on failure, the first connection attempt (and /health) reports it
            with contextlib.suppress(OSError):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql":
        kwargs.setdefault("connect_args", {}).setdefault(
            "connect_timeout", POSTGRES_CONNECT_TIMEOUT_S
        )
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **kwargs)
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (handy for building responses)."""
    return sessionmaker(engine, expire_on_commit=False)


# --------------------------------------------------------------------------------------
# migrations


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` for ``migrations/``; ``env.py`` uses ``connection`` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run_alembic(url: str, action: str, revision: str) -> None:
    """Run an Alembic command on a private connection, with the locking each backend needs.

    SQLite: foreign keys off while migrating, because batch mode copies and drops tables and a
    ``DROP TABLE`` would otherwise fire ``ON DELETE CASCADE`` on the children; the result is
    checked with ``PRAGMA foreign_key_check``. PostgreSQL: an advisory lock, so two processes
    starting together do not both run the same migration.
    """
    from alembic import command

    engine = create_db_engine(url, poolclass=NullPool)  # connection discarded afterwards
    try:
        with engine.connect() as conn:
            backend = conn.dialect.name
            if backend == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            elif backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            conn.commit()
            try:
                getattr(command, action)(alembic_config(conn), revision)
                conn.commit()
                if backend == "sqlite":
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"foreign key violations after migration: {broken[:5]}")
            finally:
                conn.rollback()
                if backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
                    conn.commit()
    finally:
        engine.dispose()


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision`` (idempotent)."""
    logger.info("upgrading database schema to %s", revision)
    _run_alembic(url, "upgrade", revision)


def downgrade_database(url: str, revision: str) -> None:
    """Take the schema at ``url`` down to ``revision`` (``base`` drops everything)."""
    logger.info("downgrading database schema to %s", revision)
    _run_alembic(url, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, ``None`` for an unmigrated one."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return MigrationContext.configure(conn).get_current_revision()


# --------------------------------------------------------------------------------------
# health


class DatabaseHealth(BaseModel):
    ok: bool
    backend: str
    latency_ms: float | None = None
    error: str | None = None


def check_database(engine: Engine) -> DatabaseHealth:
    """``SELECT 1`` round trip (including connecting, if the pool has no connection)."""
    backend = engine.dialect.name
    start = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()
    except Exception as exc:  # any failure means "not ok"; the message says which
        original = getattr(exc, "orig", None) or exc
        message = str(original).strip().splitlines()[0] if str(original).strip() else ""
        return DatabaseHealth(
            ok=False, backend=backend, error=f"{type(original).__name__}: {message}"[:300]
        )
    return DatabaseHealth(
        ok=True, backend=backend, latency_ms=round((time.perf_counter() - start) * 1000, 3)
    )


def is_transient(exc: OperationalError) -> bool:
    """Deadlocks, serialization failures and SQLite's busy lock are worth another try."""
    code = getattr(exc.orig, "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(exc.orig)


def retry_races(
    run: Callable[[], T],
    what: str,
    *,
    also: tuple[type[Exception], ...] = (),
    attempts: int = RACE_ATTEMPTS,
) -> T:
    """``run()`` (one whole transaction) again when it lost a race with another one: an
    ``IntegrityError`` (a row inserted or deleted concurrently), a transient
    ``OperationalError`` (:func:`is_transient`) or one of ``also``. Anything else, and the
    last attempt's error, propagates; ``run`` must leave nothing behind when it raises."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except (IntegrityError, OperationalError, *also) as exc:
            permanent = isinstance(exc, OperationalError) and not is_transient(exc)
            if permanent or attempt == attempts:
                raise
            logger.warning("%s lost a race (%s); retrying", what, exc)
    raise AssertionError("unreachable")  # pragma: no cover
