"""Shared fixtures: an environment free of the developer's settings and a fresh, uniquely
named PostgreSQL database per test (the service harness is ``helpers.ServiceHarness``).

The server is ``$REID_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``,
the database the new ones are created from a connection to). Tests that need it are skipped,
with the reason, when the server cannot be reached; SQLite tests never need it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get("REID_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No REID_* variable or .env from the developer's shell leaks into a service test."""
    for name in list(os.environ):
        if name.startswith("REID_") and not name.startswith("REID_TEST_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _libpq(url: str) -> str:
    """SQLAlchemy spelling -> libpq URI (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.split('+')[0]}://{rest}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """libpq URI of a reachable PostgreSQL server (skips the test otherwise)."""
    import psycopg

    uri = _libpq(POSTGRES_URL)
    try:
        psycopg.connect(uri, connect_timeout=3, autocommit=True).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({first})")
    return uri


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database, dropped (connections and all) afterwards."""
    import psycopg
    from psycopg import sql
    from sqlalchemy import make_url

    name = f"reid_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(postgres_server).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
