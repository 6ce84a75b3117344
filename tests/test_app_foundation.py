"""Service foundation: settings, schema migrations, ORM, /health, auth, errors, `reid serve|db`.

Database tests run on SQLite (a temporary file) and on PostgreSQL (a temporary database from
the ``postgres_url`` fixture in conftest.py, skipped when no server is reachable).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from app.api.auth import check_bind_allowed, is_loopback, key_matches
from app.api.deps import DbSession
from app.core.db import create_db_engine, current_revision, downgrade_database, upgrade_database
from app.core.orm import Base, Dataset, DatasetImage, Image
from app.core.settings import GIB, Settings, load_settings
from app.core.storage import StorageLayout, check_storage
from app.main import create_app
from reid import cli

pytestmark = pytest.mark.usefixtures("isolated_env")

TABLES = {"datasets", "images", "dataset_images", "jobs", "models", "indexes"}
SHA_A, SHA_B = "ab" * 32, "cd" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'reid.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    upgrade_database(db_url)
    engine = create_db_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _settings(tmp_path: Path, **kwargs) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **kwargs)


# --------------------------------------------------------------------------------------
# settings


def test_settings_defaults(isolated_env: Path) -> None:
    s = Settings()
    assert s.data_dir == isolated_env / "reid-data"
    assert s.effective_database_url == f"sqlite:///{isolated_env / 'reid-data' / 'reid.db'}"
    assert s.api_keys == [] and not s.auth_enabled
    assert s.max_upload_bytes == 10 * GIB
    assert s.log_level == "INFO" and (s.host, s.port) == ("127.0.0.1", 8000)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REID_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("REID_API_KEYS", " k1, k2,,k3 ")
    monkeypatch.setenv("REID_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("REID_MAX_COMPRESSION_RATIO", "50")
    monkeypatch.setenv("REID_LOG_LEVEL", "debug")
    monkeypatch.setenv("REID_DATABASE_URL", "postgresql://u:p@db:5432/reid")
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.api_keys == ["k1", "k2", "k3"] and s.auth_enabled
    assert s.max_upload_bytes == 1234 and s.max_compression_ratio == 50.0
    assert s.log_level == "DEBUG"
    assert s.effective_database_url == "postgresql+psycopg://u:p@db:5432/reid"


def test_settings_from_dotenv_file(monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    (isolated_env / ".env").write_text(
        "REID_API_KEYS=from-file\nREID_MAX_ARCHIVE_MEMBERS=7\nOTHER_TOOL=ignored\n"
    )
    s = Settings()
    assert s.api_keys == ["from-file"] and s.max_archive_members == 7
    monkeypatch.setenv("REID_API_KEYS", "from-env")  # the environment wins over .env
    assert Settings().api_keys == ["from-env"]
    assert load_settings(max_archive_members=9).max_archive_members == 9  # and kwargs over both


@pytest.mark.parametrize(
    ("name", "value"),
    [("REID_LOG_LEVEL", "loud"), ("REID_MAX_UPLOAD_BYTES", "0"), ("REID_PORT", "70000")],
)
def test_invalid_settings_one_line_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"invalid settings: {name}") as info:
        load_settings()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------
# storage layout


def test_storage_layout(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    sha = "0123456789abcdef" * 4
    assert layout.image_path(sha.upper(), ".JPG") == (
        tmp_path / "images" / "01" / "23" / f"{sha}.jpg"
    )
    assert layout.tmp_dir == tmp_path / "tmp"
    for bad_hash, ext in [("../" * 22, "jpg"), ("ab" * 31, "jpg"), (sha, "../x"), (sha, "")]:
        with pytest.raises(ValueError):
            layout.image_path(bad_hash, ext)
    layout.ensure()
    assert layout.images_dir.is_dir() and layout.tmp_dir.is_dir()
    health = check_storage(tmp_path)
    assert health.ok and health.writable and health.free_bytes > 0
    assert not check_storage(tmp_path / "missing").ok


def test_startup_sweeps_only_stale_tmp_entries(tmp_path: Path) -> None:
    """What a crash left in tmp goes at startup; an upload still being written stays (even in
    an old folder: a recent file inside keeps it)."""
    layout = StorageLayout(tmp_path)
    layout.ensure()
    old = time.time() - 2 * 24 * 3600
    stale, live = layout.tmp_dir / "upload-crashed", layout.tmp_dir / "upload-streaming"
    for folder in (stale, live):
        (folder / "tree").mkdir(parents=True)
        (folder / "tree" / "a.jpg").write_bytes(b"x")
    (layout.tmp_dir / "delete-abc").write_bytes(b"y")
    for path in (stale / "tree" / "a.jpg", stale / "tree", stale, layout.tmp_dir / "delete-abc"):
        os.utime(path, (old, old))
    os.utime(live, (old, old))  # the folder is old, its file was just written
    with TestClient(create_app(Settings(_env_file=None, data_dir=tmp_path))):
        pass
    assert sorted(p.name for p in layout.tmp_dir.iterdir()) == ["upload-streaming"]


# --------------------------------------------------------------------------------------
# migrations and ORM, on SQLite and PostgreSQL


def test_migrations_upgrade_downgrade_and_match_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    upgrade_database(db_url)
    upgrade_database(db_url)  # idempotent: serve runs it on every start
    engine = create_db_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert current_revision(engine) == "0006"
        with engine.connect() as conn:
            # The migrated schema is exactly the models: a model change without a migration
            # (or a migration that drifts from the models) fails here.
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("dataset_images")}
        assert {
            "ix_dataset_images_dataset_id_split",
            "ix_dataset_images_dataset_id_pid",
            "ix_dataset_images_dataset_id_camid",
        } <= indexes
        downgrade_database(db_url, "base")
        inspect_after = inspect(engine)
        assert not TABLES & set(inspect_after.get_table_names())
        assert current_revision(engine) is None
        upgrade_database(db_url)  # and back up again cleanly
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def _populate(session: Session) -> int:
    img_a = Image(sha256=SHA_A, format="jpeg", width=64, height=128, size_bytes=1000)
    img_b = Image(sha256=SHA_B, format="png", width=32, height=64, size_bytes=5_000_000_000)
    ds = Dataset(
        name="market",
        labeled=True,
        layout="market1501",
        num_images=2,
        num_train=1,
        num_query=1,
        rejected=[{"path": "bad.jpg", "reason": "not an image"}],
    )
    ds.members = [
        DatasetImage(image=img_a, original_path="train/0001_c1.jpg", split="train", pid=1, camid=0),
        DatasetImage(image=img_b, original_path="query/0001_c2.jpg", split="query", pid=1, camid=1),
    ]
    session.add(ds)
    session.commit()
    return ds.id


def test_orm_round_trip_and_cascade_delete(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        dataset_id = _populate(session)
    with Session(migrated_engine) as session:
        ds = session.get_one(Dataset, dataset_id)
        assert ds.status == "ready" and ds.labeled is True and ds.num_gallery == 0
        assert ds.rejected == [{"path": "bad.jpg", "reason": "not an image"}]
        assert ds.created_at.tzinfo is not None and ds.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - ds.created_at) < timedelta(minutes=5)
        assert [(m.split, m.image.width, m.image.height) for m in ds.members] == [
            ("train", 64, 128),
            ("query", 32, 64),
        ]
        assert ds.members[1].image.size_bytes == 5_000_000_000  # BigInteger
        ds.rejected.append({"path": "x.txt", "reason": "unsupported"})  # mutation tracked
        session.commit()
    with Session(migrated_engine) as session:
        assert len(session.get_one(Dataset, dataset_id).rejected) == 2
        # The database itself cascades (a bulk DELETE never loads the children) ...
        session.execute(delete(Dataset).where(Dataset.id == dataset_id))
        session.commit()
        assert session.scalar(select(func.count()).select_from(DatasetImage)) == 0
        # ... and shared, content-addressed images stay for other datasets.
        assert session.scalar(select(func.count()).select_from(Image)) == 2


def test_constraints_are_enforced(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        dataset_id = _populate(session)
    cases = [
        Image(sha256=SHA_A, format="jpeg", width=1, height=1, size_bytes=1),  # duplicate hash
        DatasetImage(dataset_id=999, image_id=1, original_path="p", split="train"),  # FK
        DatasetImage(  # duplicate original path in one dataset
            dataset_id=dataset_id, image_id=1, original_path="train/0001_c1.jpg", split="train"
        ),
        DatasetImage(dataset_id=dataset_id, image_id=1, original_path="q", split="bogus"),
        Dataset(name="x", labeled=False, layout="flat", status="weird"),
    ]
    for row in cases:
        with Session(migrated_engine) as session:
            session.add(row)
            with pytest.raises(IntegrityError):
                session.commit()
    with Session(migrated_engine) as session, pytest.raises(StatementError, match="naive"):
        session.add(Dataset(name="x", labeled=False, layout="flat", created_at=datetime.now()))
        session.commit()
    with Session(migrated_engine) as session:  # any time zone in, UTC out
        plus2 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        ds = Dataset(name="tz", labeled=False, layout="flat", created_at=plus2)
        session.add(ds)
        session.commit()
        session.expire_all()
        assert ds.created_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
        assert ds.created_at.tzinfo == UTC


def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'new' / 'x.db'}")  # folder created
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------
# HTTP: health, errors, auth


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def test_health_ok(tmp_path: Path) -> None:
    with _client(_settings(tmp_path)) as client:  # lifespan creates the data folders
        response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["database"]["backend"] == "sqlite"
    assert body["database"]["latency_ms"] >= 0
    assert body["storage"]["writable"] and body["storage"]["free_bytes"] > 0


def test_health_503_when_storage_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = Settings(
        _env_file=None,
        data_dir=blocker / "data",  # cannot exist, even for root
        database_url=f"sqlite:///{tmp_path / 'ok.db'}",
    )
    with _client(settings) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["database"]["ok"]
    assert not body["storage"]["ok"] and body["storage"]["error"]


def test_health_503_when_database_unreachable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    with _client(settings) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert not body["database"]["ok"] and body["database"]["backend"] == "postgresql"
    assert "OperationalError" in body["database"]["error"] and body["storage"]["ok"]


def test_session_dependency(tmp_path: Path) -> None:
    """Routers get a per-request session from ``DbSession`` (what dataset routes will use)."""
    settings = _settings(tmp_path)
    upgrade_database(settings.effective_database_url)
    app = create_app(settings)

    @app.get("/test/count")
    def count(session: DbSession) -> dict[str, int]:
        return {"datasets": session.scalar(select(func.count()).select_from(Dataset)) or 0}

    with TestClient(app) as client:
        assert client.get("/test/count").json() == {"datasets": 0}


def test_errors_are_json(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))

    @app.get("/test/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/test/items/{item_id}")
    def item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"item_id": item_id, "limit": limit}

    client = TestClient(app)
    response = client.get("/no/such/route")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    response = client.post("/health")
    assert response.status_code == 405 and "detail" in response.json()
    assert "GET" in response.headers["allow"]
    response = client.get("/test/items/abc", params={"limit": "many"})
    assert response.status_code == 422
    body = response.json()
    assert isinstance(body["detail"], str)
    assert "path.item_id" in body["detail"] and "query.limit" in body["detail"]
    assert {e["loc"] for e in body["errors"]} == {"path.item_id", "query.limit"}
    response = client.get("/test/boom")  # the server survives and answers
    assert (response.status_code, response.json()) == (500, {"detail": "internal error"})
    assert "secret" not in response.text
    assert client.get("/test/items/3").json() == {"item_id": 3, "limit": 10}


def test_auth_required_when_keys_configured(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, api_keys=["k-one", "k-two"])) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "k-on"}):
            response = client.get("/info", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert "API key" in response.json()["detail"]
        assert client.get("/info", headers={"Authorization": "Bearer k-two"}).status_code == 200
        response = client.get("/info", headers={"X-API-Key": "k-one"})
        assert response.status_code == 200
        assert response.json()["limits"]["max_upload_bytes"] == 10 * GIB
        for path in ("/health", "/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        response = client.get("/info", headers={"X-API-Key": "kéy".encode()})  # non-ASCII: no crash
        assert response.status_code == 401


def test_no_auth_without_keys(tmp_path: Path) -> None:
    with _client(_settings(tmp_path)) as client:
        assert client.get("/info").status_code == 200


def test_every_route_but_health_requires_the_key(tmp_path: Path) -> None:
    """A guard for future routers: one mounted outside PROTECTED_ROUTERS shows up here.

    Read from the OpenAPI schema (public), where the key dependency declares its schemes.
    """
    schema = create_app(_settings(tmp_path)).openapi()
    open_operations = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if not operation.get("security")
    }
    assert open_operations == {("GET", "/health")}
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}


def test_key_matching() -> None:
    assert key_matches("b", ["a", "b", "c"]) == "admin" and not key_matches("", ["a"])
    assert not key_matches("ab", ["a"]) and not key_matches("x", [])
    assert key_matches("k", ["read=k", "write=k"]) == "write"  # the best of its entries
    assert key_matches("a=b", ["a=b"]) == "admin"  # "a" is no scope: part of the key


def test_reid_keys_new_prints_a_working_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "new", "--scope", "write"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, entry = lines["key"].strip(), lines["entry"].split()[0]
    assert entry.startswith("write=sha256:") and key not in entry
    assert key_matches(key, [entry]) == "write" and not key_matches(entry, [entry])


# --------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_check() -> None:
    check_bind_allowed("127.0.0.1", [], insecure=False)
    check_bind_allowed("0.0.0.0", ["key"], insecure=False)
    check_bind_allowed("0.0.0.0", [], insecure=True)
    with pytest.raises(ValueError, match="--insecure"):
        check_bind_allowed("0.0.0.0", [], insecure=False)


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record uvicorn.run calls instead of serving."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


def test_serve_refuses_public_address_without_keys(
    tmp_path: Path, fake_uvicorn: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--host", "0.0.0.0", "--data-dir", str(data)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "reid serve: error: refusing to listen on '0.0.0.0'" in err and "--insecure" in err
    assert fake_uvicorn == [] and not data.exists()  # checked before anything else


def test_serve_insecure_migrates_and_starts(tmp_path: Path, fake_uvicorn: list[dict]) -> None:
    data = tmp_path / "data"
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "9", "--data-dir", str(data),
                     "--insecure"]) == 0  # fmt: skip
    [call] = fake_uvicorn
    assert (call["host"], call["port"]) == ("0.0.0.0", 9)
    assert call["app"].state.settings.data_dir == data
    assert (data / "images").is_dir() and (data / "tmp").is_dir()
    engine = create_db_engine(f"sqlite:///{data / 'reid.db'}")
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_db_upgrade_and_downgrade_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert cli.main(["db", "upgrade", "--data-dir", str(data)]) == 0
    engine = create_db_engine(f"sqlite:///{data / 'reid.db'}")
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM datasets")).scalar() == 0
        assert cli.main(["db", "current", "--data-dir", str(data)]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "0006"
        assert cli.main(["db", "downgrade", "base", "--data-dir", str(data)]) == 0
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["db", "upgrade", "no-such-rev", "--data-dir", str(data)])
    assert exit_info.value.code == 2
    assert "reid db: error:" in capsys.readouterr().err


def test_parser_keeps_trainer_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    listed = capsys.readouterr().out
    for name in ("synth", "train", "embed", "evaluate", "serve", "db"):
        assert name in listed
