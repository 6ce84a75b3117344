"""Jobs: validation, idempotency, the DB state machine, and real runs through both workers.

Runs train a tiny MobileNetV2 (no pretrained weights) on synthetic 64x32 collections for one
or two iterations on the CPU, so a whole job takes a few seconds. The embedded profile (a
DB-polling thread in the app) and the Celery profile (a real solo worker on Redis, skipped
when Redis is unreachable) run the same ``worker.runner.execute_job``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import ServiceHarness, zip_tree
from sqlalchemy import update

from app.core.db import create_db_engine, make_session_factory, upgrade_database
from app.core.orm import Dataset, Job, utcnow
from app.jobs.state import JobInput, claim_job, create_job, heartbeat, reap_lapsed
from trainer.synth import generate_dataset
from worker.dispatch import CeleryDispatcher
from worker.embedded import EmbeddedWorker
from worker.runner import execute_job

pytestmark = pytest.mark.usefixtures("isolated_env")

TINY = {
    "arch": "mobilenet_v2",
    "pretrained": "none",
    "epochs": 1,
    "iters": 2,
    "batch_size": 8,
    "num_instances": 4,
    "k1": 8,
    "k2": 4,
    "height": 64,
    "width": 32,
    "eval_step": 1,
    "workers": 0,
    "amp": False,
    "device": "cpu",
}
FAST = {
    "heartbeat_interval_s": 0.2,
    "cancel_check_interval_s": 0.2,
    "poll_interval_s": 0.1,
    "progress_interval_s": 0.0,
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Zipped Market-1501-style synthetic collections: a daylight source, a night target."""
    base = tmp_path_factory.mktemp("synth")
    out = {}
    for name, style, seed in (("source", "market", 0), ("target", "night", 1)):
        generate_dataset(base / name, 8, 2, style, seed, height=64, width=32, images_per_camera=3)
        out[name] = zip_tree(base / name)
    return out


class Service(ServiceHarness):
    """The harness with the two synthetic collections to upload."""

    def __init__(self, db_url: str, data_dir: Path, archives: dict[str, bytes]) -> None:
        super().__init__(db_url, data_dir, **FAST)
        self.archives = archives

    def upload(self, client: TestClient, name: str, labeled: bool) -> int:
        files = {"file": (f"{name}.zip", self.archives[name], "application/octet-stream")}
        data = {"name": name, "labeled": str(labeled).lower()}
        response = client.post("/datasets", data=data, files=files)
        assert response.status_code == 201, response.text
        return response.json()["id"]


@pytest.fixture
def service(
    request: pytest.FixtureRequest, tmp_path: Path, archives: dict[str, bytes]
) -> Iterator[Service]:
    """SQLite by default; ``parametrize("service", ["postgresql"], indirect=True)`` too."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'db' / 'reid.db'}"
    upgrade_database(url)
    svc = Service(url, tmp_path / "data", archives)
    yield svc
    svc.close()


@pytest.fixture
def collections(service: Service) -> dict[str, int]:
    client = service.client()
    return {
        "source": service.upload(client, "source", labeled=True),
        "target": service.upload(client, "target", labeled=False),
    }


def wait_for(
    client: TestClient, job_id: int, done: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/jobs/{job_id}").json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out; job is {body}"
        time.sleep(0.1)


def finished(body: dict[str, Any]) -> bool:
    return body["status"] in ("succeeded", "failed", "cancelled")


def post_job(client: TestClient, collections: dict[str, int], **kwargs: Any) -> Any:
    body = {
        "target_dataset_id": collections["target"],
        "source_dataset_id": collections["source"],
        "config": TINY,
    }
    headers = kwargs.pop("headers", None)
    body.update(kwargs)
    return client.post("/jobs", json=body, headers=headers)


# --------------------------------------------------------------------------------------
# validation, idempotency, unknown ids


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"target_dataset_id": 999}, "body.target_dataset_id"),
        ({"source_dataset_id": 999}, "body.source_dataset_id"),
        ({"eval_dataset_id": 999}, "body.eval_dataset_id"),
        ({"source_dataset_id": "TARGET"}, "body.source_dataset_id"),  # unlabeled source
        ({"eval_dataset_id": "SOURCE_NO_TEST"}, "body.eval_dataset_id"),
        ({"target_dataset_id": 0}, "body.target_dataset_id"),
        ({"config": {**TINY, "epochz": 3}}, "body.config.epochz"),
        ({"config": {**TINY, "epochs": 0}}, "body.config.epochs"),
        ({"config": {**TINY, "eps": 1.5}}, "body.config.eps"),
        ({"config": {**TINY, "k2": 9}}, "body.config.k2"),
        ({"config": {**TINY, "arch": "vgg"}}, "body.config.arch"),
        ({"config": {**TINY, "epochs": "two"}}, "body.config.epochs"),
        ({"config": {**TINY, "amp": 1}}, "body.config.amp"),
        ({"config": {**TINY, "pretrained": "/etc/passwd"}}, "body.config.pretrained"),
        ({"config": {**TINY, "recipe": "fastest"}}, "body.config.recipe"),
        ({"config": {**TINY, "eps": "wide"}}, "body.config.eps"),
        ({"config": {**TINY, "flip": "yes"}}, "body.config.flip"),
        ({"config": {**TINY, "refresh_every": -1}}, "body.config.refresh_every"),
        ({"colour": "red"}, "body.colour"),
    ],
)
def test_submit_validation_names_the_field(
    service: Service, collections: dict[str, int], change: dict[str, Any], loc: str
) -> None:
    client = service.client()
    ids = {"TARGET": collections["target"], "SOURCE_NO_TEST": collections["source"]}
    # the source collection has query/gallery too; make one without for the eval case
    if change.get("eval_dataset_id") == "SOURCE_NO_TEST":
        with service.factory() as session:
            row = session.get(Dataset, collections["source"])
            assert row is not None
            row.num_query = 0
            session.commit()
    change = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    response = post_job(client, collections, **change)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["errors"]], response.json()
    assert loc.split(".")[-1] in response.json()["detail"]
    assert client.get("/jobs").json()["total"] == 0


def test_submit_refuses_an_empty_target(service: Service, collections: dict[str, int]) -> None:
    client = service.client()
    with service.factory() as session:
        session.execute(
            update(Dataset).where(Dataset.id == collections["target"]).values(num_train=0)
        )
        session.commit()
    response = post_job(client, collections)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == "body.target_dataset_id"
    assert "no train images" in response.json()["detail"]


def test_submit_queues_with_full_config_and_default_eval(
    service: Service, collections: dict[str, int]
) -> None:
    client = service.client()
    response = post_job(client, collections)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["phase"] is None and job["attempts"] == 0
    assert job["eval_dataset_id"] == collections["target"]  # labeled query/gallery: default
    assert job["config"]["lr"] == 3.5e-4 and job["config"]["epochs"] == 1  # defaults filled
    assert job["config"]["recipe"] == "recommended" and job["config"]["eps"] == "auto"
    assert job["progress"] == {
        "epoch": 0,
        "epochs": 1,
        "iteration": 0,
        "iterations": 2,
        "fraction": 0.0,
    }
    assert client.get(f"/jobs/{job['id']}").json() == job
    listing = client.get("/jobs", params={"status": "queued"}).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == job["id"]
    assert client.get("/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    # unsupervised: no source
    usl = post_job(client, collections, source_dataset_id=None)
    assert usl.status_code == 202 and usl.json()["source_dataset_id"] is None


def test_idempotency_key(service: Service, collections: dict[str, int]) -> None:
    client = service.client()
    first = post_job(client, collections, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202
    again = post_job(client, collections, headers={"Idempotency-Key": "abc"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = post_job(
        client, collections, config={**TINY, "epochs": 2}, headers={"Idempotency-Key": "abc"}
    )
    assert other.status_code == 422
    assert other.json()["errors"][0]["loc"] == "header.Idempotency-Key"
    fresh = post_job(client, collections, headers={"Idempotency-Key": "def"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    assert client.get("/jobs").json()["total"] == 2


def test_unknown_ids_are_404(service: Service) -> None:
    client = service.client()
    for path in (
        "/jobs/999",
        "/jobs/0",
        "/jobs/99999999999",
        "/jobs/999/events",
        "/models/999",
        "/models/999/download",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "not found" in response.json()["detail"]
    assert client.post("/jobs/999/cancel").status_code == 404


# --------------------------------------------------------------------------------------
# the state machine


def test_event_stream_keeps_an_idle_connection_alive(
    service: Service, collections: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that stays queued still sends a comment line now and then (proxies cut silent
    streams), and the stream ends once the job does."""
    from app.api import jobs as jobs_api

    monkeypatch.setattr(jobs_api, "EVENT_POLL_S", 0.02)
    monkeypatch.setattr(jobs_api, "KEEPALIVE_S", 0.1)
    client = service.client()  # no worker: the job stays queued
    job_id = post_job(client, collections).json()["id"]
    lines = []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keep-alive" and lines.count(line) == 2:
                with service.factory() as session:
                    session.get(Job, job_id).status = "cancelled"
                    session.commit()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["queued", "cancelled"]
    assert lines.count(": keep-alive") == 2


def test_cancel_queued_job_never_starts(service: Service, collections: dict[str, int]) -> None:
    client = service.client()
    job_id = post_job(client, collections).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    worker = EmbeddedWorker(service.settings(), service.factory)
    assert worker.run_once() is False  # nothing to run
    outcome = execute_job(service.settings(), service.factory, job_id)  # a late message
    assert outcome.status == "skipped"
    body = client.get(f"/jobs/{job_id}").json()
    assert body["status"] == "cancelled" and body["attempts"] == 0 and body["started_at"] is None
    assert not (service.data_dir / "jobs" / str(job_id)).exists()


def test_delete_dataset_conflicts_while_a_job_uses_it(
    service: Service, collections: dict[str, int]
) -> None:
    client = service.client()
    job_id = post_job(client, collections).json()["id"]
    for dataset_id in collections.values():
        response = client.delete(f"/datasets/{dataset_id}")
        assert response.status_code == 409, response.text
    client.post(f"/jobs/{job_id}/cancel")
    assert client.delete(f"/datasets/{collections['source']}").status_code == 204
    body = client.get(f"/jobs/{job_id}").json()
    assert body["source_dataset_id"] is None and body["status"] == "cancelled"


@pytest.fixture(params=["sqlite", "postgresql"])
def job_factory(request: pytest.FixtureRequest, tmp_path: Path):
    """A session factory on a migrated database holding one dataset."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claim.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_database(url)
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    with factory() as session:
        session.add(Dataset(id=1, name="t", labeled=False, layout="folders", num_train=1))
        session.commit()
    yield factory
    engine.dispose()


def test_claim_heartbeat_and_reaper(job_factory) -> None:
    factory = job_factory
    job, created = create_job(factory, JobInput(1, None, None, dict(TINY)), None)
    assert created
    assert claim_job(factory, job.id, "w1", heartbeat_timeout_s=60)
    assert not claim_job(factory, job.id, "w2", heartbeat_timeout_s=60)  # redelivery: ignored
    assert heartbeat(factory, job.id, "w1", epoch=1) == (True, False)
    assert heartbeat(factory, job.id, "w2") == (False, False)  # not the owner
    # concurrent claims: exactly one wins
    job2, _ = create_job(factory, JobInput(1, None, None, dict(TINY)), None)
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda n=n: wins.append(claim_job(factory, job2.id, f"c{n}", 60)))
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    # the worker of job 1 dies: its heartbeat lapses
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=120))
        )
        session.commit()
    assert heartbeat(factory, job.id, "w1")[0]  # a live owner refreshes it ...
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=120))
        )
        session.commit()
    assert reap_lapsed(factory, heartbeat_timeout_s=60, max_attempts=2) == ([job.id], [])
    assert claim_job(factory, job.id, "w2", heartbeat_timeout_s=60)
    with factory() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.attempts == 2 and row.worker == "w2"
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=120))
        )
        session.commit()
    assert not claim_job(factory, job.id, "w3", heartbeat_timeout_s=60, max_attempts=2)
    assert reap_lapsed(factory, heartbeat_timeout_s=60, max_attempts=2) == ([], [job.id])
    with factory() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.status == "failed" and "lost 2 time" in (row.error or "")


# --------------------------------------------------------------------------------------
# real runs


def _sse_events(
    client: TestClient, job_id: int, first_event: threading.Event | None = None
) -> list[dict[str, Any]]:
    """Every event of the job's stream until it ends; ``first_event`` is set on the first."""
    events = []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                if first_event is not None:
                    first_event.set()
    return events


@pytest.mark.parametrize("service", ["sqlite", "postgresql"], indirect=True)
def test_embedded_worker_end_to_end(
    service: Service, collections: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import jobs as jobs_api

    monkeypatch.setattr(jobs_api, "EVENT_POLL_S", 0.05)  # the tiny job outruns a 1 s poll
    client = service.client()  # no worker yet: the job waits until the stream is open
    job = post_job(client, collections, config={**TINY, "epochs": 2, "iters": 1}).json()
    watching = threading.Event()

    def start_worker() -> None:
        watching.wait(60)
        service.client(embedded_worker=True)

    threading.Thread(target=start_worker, daemon=True).start()
    live = _sse_events(client, job["id"], watching)  # follows the run until it ends
    assert live[0]["id"] == job["id"] and live[-1]["status"] == "succeeded"
    assert len(live) >= 2 and {"running"} <= {e["status"] for e in live}
    body = wait_for(client, job["id"], finished)
    assert live[-1] == body | {"eta_seconds": live[-1]["eta_seconds"]}
    assert body["status"] == "succeeded", body
    assert body["attempts"] == 1 and body["worker"].endswith(":embedded")
    assert body["progress"]["fraction"] == 1.0 and body["progress"]["epoch"] == 2
    assert body["started_at"] and body["finished_at"] and body["error"] is None
    assert [m["epoch"] for m in body["metrics"]] == [0, 1]
    for entry in body["metrics"]:
        assert {"loss", "clusters", "unclustered", "threshold", "images_per_s", "mAP", "rank1"} <= (
            set(entry)
        )
    model_id = body["model_id"]
    model = client.get(f"/models/{model_id}").json()
    assert model["job_id"] == job["id"] and model["arch"] == "mobilenet_v2"
    assert (model["height"], model["width"], model["feature_dim"]) == (64, 32, 1280)
    assert model["metrics"]["mAP"] == body["metrics"][-1]["mAP"]
    assert client.get("/models").json()["items"][0]["id"] == model_id
    download = client.get(f"/models/{model_id}/download")
    assert download.status_code == 200 and len(download.content) == model["size_bytes"]
    saved = Path(service.data_dir / "jobs" / str(job["id"]) / "model.pt")
    assert saved.read_bytes() == download.content
    assert not saved.with_name("checkpoint.pt").exists()  # only needed to resume
    from trainer.models.export import load_model

    _, meta = load_model(saved)
    assert meta["feature_dim"] == 1280
    onnx_file = client.get(model["onnx_url"])  # exported on first request, then reused
    assert onnx_file.status_code == 200, onnx_file.text
    assert (
        "model-" in onnx_file.headers["content-disposition"]
        and ".onnx" in (onnx_file.headers["content-disposition"])
    )
    import onnx

    props = {p.key: p.value for p in onnx.load_from_string(onnx_file.content).metadata_props}
    assert props["source_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert (props["height"], props["width"], props["feature_dim"]) == ("64", "32", "1280")
    assert client.get(model["onnx_url"]).content == onnx_file.content
    assert client.get(f"/models/{model_id}/download?format=tflite").status_code == 422
    events = _sse_events(client, job["id"])  # a finished job: one event, then the end
    assert events[-1]["status"] == "succeeded" and events[-1]["model_id"] == model_id
    # a redelivered message for the finished job is ignored
    assert execute_job(service.settings(), service.factory, job["id"]).status == "skipped"
    # finished jobs do not pin their collections
    assert client.delete(f"/datasets/{collections['target']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").json()["target_dataset_id"] is None


def test_failing_job_records_the_error(service: Service, collections: dict[str, int]) -> None:
    client = service.client(embedded_worker=True)
    bad = post_job(client, collections, config={**TINY, "device": "cuda:99"})  # no such GPU
    job_id = bad.json()["id"]
    body = wait_for(client, job_id, finished)
    assert body["status"] == "failed"
    assert "'cuda:99'" in body["error"]
    # the worker lives on and runs the next job
    good = post_job(client, collections, source_dataset_id=None).json()
    assert wait_for(client, good["id"], finished)["status"] == "succeeded"


def test_cancel_running_job(service: Service, collections: dict[str, int]) -> None:
    client = service.client(embedded_worker=True)
    job_id = post_job(client, collections, config={**TINY, "iters": 10_000}).json()["id"]
    running = wait_for(
        client, job_id, lambda b: b["phase"] == "training" and b["progress"]["iteration"] >= 1
    )
    assert running["status"] == "running" and running["eta_seconds"] is not None
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    body = wait_for(client, job_id, finished, timeout=60)
    assert body["status"] == "cancelled" and body["model_id"] is None
    assert body["progress"]["iteration"] < 10_000
    assert (service.data_dir / "jobs" / str(job_id) / "checkpoint.pt").is_file()


def test_shutdown_requeues_and_resume_finishes(
    service: Service, collections: dict[str, int]
) -> None:
    """Stopping the server mid-job puts the job back in the queue; the next start resumes
    it from its checkpoint (attempts count only real starts)."""
    client = service.client(embedded_worker=True)
    job_id = post_job(client, collections, config={**TINY, "iters": 60}).json()["id"]
    wait_for(client, job_id, lambda b: b["progress"]["iteration"] >= 2)
    client.__exit__(None, None, None)
    service.clients.remove(client)
    with service.factory() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status == "queued" and row.worker is None
    from trainer.checkpoint import load_checkpoint

    state = load_checkpoint(service.data_dir / "jobs" / str(job_id) / "checkpoint.pt")
    assert state["epoch"] == 0 and 2 <= state["iteration"] < 60  # stopped mid-epoch
    client = service.client(embedded_worker=True)
    body = wait_for(client, job_id, finished)
    assert body["status"] == "succeeded" and body["attempts"] == 1


# --------------------------------------------------------------------------------------
# Celery on Redis


def _redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_celery_worker_on_redis(service: Service, collections: dict[str, int]) -> None:
    if not _redis_reachable():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    from celery.contrib.testing.worker import start_worker

    from worker.celery_app import make_celery

    queue = f"reid-test-{uuid.uuid4().hex[:8]}"
    settings = service.settings(broker_url="redis://127.0.0.1:6379/15", worker_queue=queue)
    celery = make_celery(settings)
    client = service.client(broker_url=settings.broker_url, worker_queue=queue)
    with start_worker(celery, pool="solo", concurrency=1, perform_ping_check=False, queues=[queue]):
        job = post_job(client, collections).json()
        body = wait_for(client, job["id"], finished)
        assert body["status"] == "succeeded", body
        assert body["worker"] and not body["worker"].endswith(":embedded")
        assert client.get(f"/models/{body['model_id']}/download").status_code == 200
        # a duplicate message is dropped by the claim
        celery.send_task("reid.run_job", args=[job["id"]], queue=queue)
        time.sleep(1.0)
        assert client.get(f"/jobs/{job['id']}").json()["attempts"] == 1


def test_job_whose_send_failed_is_sent_by_the_recovery_pass(
    service: Service, collections: dict[str, int]
) -> None:
    """The broker is down when the job is posted: the job stays queued and undispatched (no
    5xx); a worker's recovery pass later sends it, records the dispatch, and it runs."""
    if not _redis_reachable():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    from celery.contrib.testing.worker import start_worker

    from app.jobs.outbox import undispatched
    from worker.celery_app import make_celery
    from worker.recovery import recover_once

    queue = f"reid-test-{uuid.uuid4().hex[:8]}"
    down = service.client(broker_url="redis://127.0.0.1:1/15", worker_queue=queue)
    response = post_job(down, collections)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with service.factory() as session:
        assert undispatched(session, Job) == [job_id]

    settings = service.settings(broker_url="redis://127.0.0.1:6379/15", worker_queue=queue)
    celery = make_celery(settings)
    with start_worker(celery, pool="solo", concurrency=1, perform_ping_check=False, queues=[queue]):
        recover_once(celery, settings)
        with service.factory() as session:
            assert undispatched(session, Job) == []
            assert session.get(Job, job_id).dispatched_at is not None
        body = wait_for(down, job_id, finished)
    assert body["status"] == "succeeded", body
    assert body["attempts"] == 1


def test_sigkill_worker_then_another_resumes(
    service: Service, collections: dict[str, int], tmp_path: Path
) -> None:
    """``reid worker`` processes on Redis: the first is SIGKILLed mid-job; the second one's
    reaper requeues the job (heartbeat lapsed) and it resumes from the last checkpoint; what
    clients see of its progress never moves backwards across the attempts."""
    if not _redis_reachable():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    import signal
    import subprocess
    import sys

    queue = f"reid-test-{uuid.uuid4().hex[:8]}"
    broker = "redis://127.0.0.1:6379/15"
    env = {
        **os.environ,
        "REID_BROKER_URL": broker,
        "REID_DATABASE_URL": service.db_url,
        "REID_HEARTBEAT_INTERVAL_S": "0.2",
        "REID_CANCEL_CHECK_INTERVAL_S": "0.2",
        "REID_HEARTBEAT_TIMEOUT_S": "2",
        "REID_PROGRESS_INTERVAL_S": "0",
        "REID_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "reid.cli", "worker", "--queue", queue,
               "--data-dir", str(service.data_dir)]  # fmt: skip

    def spawn(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent
        )

    client = service.client(broker_url=broker, worker_queue=queue)
    first = spawn("first")
    second: subprocess.Popen[bytes] | None = None
    try:
        job_id = post_job(client, collections, config={**TINY, "epochs": 3, "iters": 6}).json()[
            "id"
        ]
        wait_for(client, job_id, lambda b: b["progress"]["epoch"] >= 1 or finished(b))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        body = client.get(f"/jobs/{job_id}").json()
        assert body["status"] == "running", body  # as far as the database knows
        second = spawn("second")
        seen = []  # (epoch, iteration) as clients see it, across both attempts

        def track(b: dict[str, Any]) -> bool:
            seen.append((b["progress"]["epoch"], b["progress"]["iteration"]))
            return finished(b)

        body = wait_for(client, job_id, track)
        assert seen == sorted(seen), f"progress moved backwards: {seen}"
        assert seen[0] >= (1, 0)  # the resumed attempt never showed epoch 0
        logs = (tmp_path / "second.log").read_text()
        assert body["status"] == "succeeded", (body, logs)
        assert body["attempts"] == 2 and body["progress"]["fraction"] == 1.0
        assert [m["epoch"] for m in body["metrics"]] == [0, 1, 2]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.mark.parametrize("broker", [None, "redis://127.0.0.1:6379/15"])
def test_serve_embeds_a_worker_only_without_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str | None
) -> None:
    import uvicorn

    from reid import cli

    calls: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    if broker:
        monkeypatch.setenv("REID_BROKER_URL", broker)
    assert cli.main(["serve", "--data-dir", str(tmp_path / "data")]) == 0
    [app] = calls
    expected = EmbeddedWorker if broker is None else CeleryDispatcher
    assert isinstance(app.state.dispatcher, expected)


def test_serve_with_several_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``reid serve --workers 2``: refused without a broker; with one, two uvicorn processes
    share the port and answer requests."""
    import subprocess
    import sys

    from reid import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--workers", "2", "--data-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert "--workers > 1 needs REID_BROKER_URL" in capsys.readouterr().err
    if not _redis_reachable():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    psutil = pytest.importorskip("psutil")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "REID_BROKER_URL": "redis://127.0.0.1:6379/15", "REID_LOG_LEVEL": "ERROR"}
    command = [sys.executable, "-m", "reid.cli", "serve", "--workers", "2", "--port", str(port),
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=Path(__file__).parent.parent)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.5)
        assert all(client.get("/datasets").status_code == 200 for _ in range(6))
        children = psutil.Process(server.pid).children(recursive=True)
        assert sum("multiprocessing" in " ".join(c.cmdline()) for c in children) >= 2
    finally:
        server.terminate()
        server.wait(30)


def test_worker_command_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from reid import cli

    args = cli.build_parser().parse_args(["worker", "--gpu", "1", "--concurrency", "1"])
    assert (args.gpu, args.concurrency, args.func) == (1, 1, cli.run_worker)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["worker", "--concurrency", "0"])
    assert exit_info.value.code == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err
