"""Living collections: appends, deletes, retention, index syncs, time filters and the live
index alias, through the HTTP API with a real database (SQLite; PostgreSQL for the
concurrent case) and the worker's own functions.

Each test gets its own service: a small unlabeled collection, an untrained MobileNetV2 (64x32)
registered as a model, and a ready index of the collection built by the worker function.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import ServiceHarness, add_untrained_model, zip_tree
from sqlalchemy import select

import worker.index_sync
from app.core.db import upgrade_database
from app.core.orm import DatasetImage, Image, Job, SearchIndex
from app.core.storage import StorageLayout
from app.datasets.orphans import collect_orphans
from app.search.indexes import COL_MEMBER, create_index, read_items
from trainer.synth import generate_dataset
from worker.index_build import build_index

H, W = 64, 32
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@dataclass
class Service:
    harness: ServiceHarness
    client: TestClient
    dataset_id: int
    model_id: int
    index_id: int
    crops: list[Path]  # images not yet in the collection (another synthetic set)

    @property
    def storage(self) -> StorageLayout:
        return StorageLayout(self.harness.data_dir)

    def work(self, index_id: int | None = None) -> str:
        """What a worker does for the index now (build, sync, or nothing)."""
        settings = self.harness.settings()
        return build_index(settings, self.harness.factory, index_id or self.index_id, "w1")

    def index(self, index_id: int | None = None) -> dict[str, Any]:
        return self.client.get(f"/indexes/{index_id or self.index_id}").json()

    def dataset(self) -> dict[str, Any]:
        return self.client.get(f"/datasets/{self.dataset_id}").json()

    def append(self, crops: list[Path], **form: Any) -> Any:
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in crops]
        data = {k: str(v) for k, v in form.items()}
        return self.client.post(f"/datasets/{self.dataset_id}/images", data=data, files=files)

    def search(self, image: bytes, **form: Any) -> Any:
        form.setdefault("index_id", self.index_id)
        data = {k: str(v) for k, v in form.items()}
        return self.client.post("/search", data=data, files=[("image", ("q.jpg", image))])


def _job(session: Any, dataset_id: int, status: str, **values: Any) -> int:
    """A job row on the collection (flushed): a model's origin, or a running reader."""
    job = Job(
        status=status, target_dataset_id=dataset_id, config={}, request_hash="x" * 64, **values
    )
    session.add(job)
    session.flush()
    return job.id


def _make_service(db_url: str, base: Path) -> Service:
    harness = ServiceHarness(db_url, base / "data")
    client = harness.client()
    generate_dataset(base / "street", 4, 2, "market", 0, height=H, width=W, images_per_camera=2)
    generate_dataset(base / "more", 4, 2, "night", 1, height=H, width=W, images_per_camera=2)
    files = {"file": ("street.zip", zip_tree(base / "street"), "application/zip")}
    response = client.post("/datasets", data={"name": "street", "labeled": "false"}, files=files)
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    storage = StorageLayout(harness.data_dir)
    with harness.factory() as session:
        job_id = _job(session, dataset_id, "succeeded")
        model_id = add_untrained_model(session, storage, job_id, "m1", H, W).id
        session.commit()
        index_id = create_index(session, model_id, dataset_id).id
    assert build_index(harness.settings(), harness.factory, index_id, "w1") == "ready"
    crops = sorted((base / "more").rglob("*.jpg"))
    return Service(harness, client, dataset_id, model_id, index_id, crops)


@pytest.fixture
def service(isolated_env: Path, tmp_path: Path) -> Iterator[Service]:
    url = f"sqlite:///{tmp_path / 'reid.db'}"
    upgrade_database(url)
    svc = _make_service(url, tmp_path)
    yield svc
    svc.harness.close()


def _image_files(storage: StorageLayout) -> set[Path]:
    return {p for p in storage.images_dir.rglob("*") if p.is_file()}


def _hit_ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [h["image_id"] for h in response.json()["results"][0]]


# --------------------------------------------------------------------------------------
# appending


def test_append_images_adds_members_once_and_the_index_follows(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = service.dataset()
    size = service.index()["size"]
    response = service.append(service.crops[:3], camid=7, captured_at="2026-12-01T09:00:00Z")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["added"] == 3 and body["rejected"] == []
    assert [i["camid"] for i in body["images"]] == [7, 7, 7]
    assert {i["split"] for i in body["images"]} == {"train"}
    assert body["images"][0]["captured_at"].startswith("2026-12-01T09:00:00")
    after = service.dataset()
    assert after["num_images"] == before["num_images"] + 3
    assert after["splits"]["train"] == before["splits"]["train"] + 3
    assert after["revision"] == before["revision"] + 1
    # the same bytes again: nothing added, the same ids (a retried request is harmless)
    again = service.append(service.crops[:3]).json()
    assert again["added"] == 0 and [i["id"] for i in again["images"]] == [
        i["id"] for i in body["images"]
    ]
    assert service.dataset()["num_images"] == after["num_images"]

    # the worker syncs the same index: only the new images are embedded
    embedded: list[int] = []
    real = worker.index_sync.embed_images
    monkeypatch.setattr(
        worker.index_sync,
        "embed_images",
        lambda *a: embedded.append(len(a[-1])) or real(*a),
    )
    assert service.work() == "synced"
    assert embedded == [3]
    index = service.index()
    assert index["size"] == size + 3 and index["status"] == "ready"
    assert service.work() == "skipped"  # up to date: nothing to do
    new_id = body["images"][0]["id"]
    hits = _hit_ids(service.search(service.crops[0].read_bytes(), top_k=1))
    assert hits == [new_id]
    # the capture-time and camera filters see the appended images
    hits = _hit_ids(
        service.search(
            service.crops[1].read_bytes(), captured_after="2026-12-01T08:59:00Z", top_k=50
        )
    )
    assert sorted(hits) == sorted(i["id"] for i in body["images"])
    listed = service.client.get(
        f"/datasets/{service.dataset_id}/images", params={"camid": 7}
    ).json()
    assert listed["total"] == 3 and listed["items"][0]["captured_at"] is not None


def test_append_archive_and_bad_input_leave_nothing_behind(service: Service) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in service.crops[:2]:
            zf.writestr(f"cam/{p.name}", p.read_bytes())
        zf.writestr("notes.txt", "not an image")
    files = [("file", ("batch.zip", archive.getvalue(), "application/zip"))]
    url = f"/datasets/{service.dataset_id}/images"
    response = service.client.post(url, data={"split": "gallery"}, files=files)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["added"] == 2 and {i["split"] for i in body["images"]} == {"gallery"}
    assert all(i["path"].startswith("batch.zip/") for i in body["images"])
    assert [r["path"] for r in body["rejected"]] == ["batch.zip/notes.txt"]

    count, files_before = service.dataset()["num_images"], _image_files(service.storage)
    bad_cases = [
        ({}, [("file", ("x.jpg", b"not an image at all", "image/jpeg"))], 422),
        ({"camid": "-1"}, [("file", ("a.jpg", service.crops[3].read_bytes()))], 422),
        ({"split": "nope"}, [("file", ("a.jpg", service.crops[3].read_bytes()))], 422),
        ({"captured_at": "yesterday"}, [("file", ("a.jpg", service.crops[3].read_bytes()))], 422),
        ({"split": "train"}, None, 422),  # no file part
    ]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.jpg", service.crops[3].read_bytes())
    bad_cases.append(({}, [("file", ("evil.zip", evil.getvalue()))], 422))
    for data, parts, status in bad_cases:
        response = service.client.post(url, data=data, files=parts)
        assert response.status_code == status, (data, response.text)
        assert "detail" in response.json()
    missing = service.client.post(
        "/datasets/999/images", files=[("file", ("a.jpg", service.crops[3].read_bytes()))]
    )
    assert missing.status_code == 404
    assert service.dataset()["num_images"] == count
    assert _image_files(service.storage) == files_before
    assert not any(service.storage.tmp_dir.iterdir())


def test_append_to_a_labeled_source_needs_identities(service: Service, tmp_path: Path) -> None:
    files = {"file": ("src.zip", zip_tree(tmp_path / "street"), "application/zip")}
    source = service.client.post("/datasets", data={"name": "s", "labeled": "true"}, files=files)
    url = f"/datasets/{source.json()['id']}/images"
    crop = [("file", ("a.jpg", service.crops[0].read_bytes()))]
    response = service.client.post(url, files=crop)
    assert response.status_code == 422 and "identity" in response.json()["detail"]
    ok = service.client.post(url, data={"split": "query"}, files=crop)
    assert ok.status_code == 201 and ok.json()["added"] == 1


# --------------------------------------------------------------------------------------
# deleting


def test_deleted_image_is_never_returned_and_its_file_goes(service: Service) -> None:
    items = service.client.get(
        f"/datasets/{service.dataset_id}/images", params={"limit": 500}
    ).json()["items"]
    victim = items[0]
    image = service.client.get(victim["url"]).content
    assert _hit_ids(service.search(image, top_k=1)) == [victim["id"]]
    files_before = _image_files(service.storage)
    assert service.client.delete(f"/images/{victim['id']}").status_code == 204
    # before any sync: the index still holds the vector, searches never return it
    assert service.index()["size"] == len(items)
    for top_k in (1, 5, len(items)):
        hits = _hit_ids(service.search(image, top_k=top_k))
        assert victim["id"] not in hits and len(hits) == min(top_k, len(items) - 1)
    assert service.client.get(victim["url"]).status_code == 404
    assert len(files_before - _image_files(service.storage)) == 1  # no reader: gone at once
    assert service.dataset()["num_images"] == len(items) - 1
    assert service.work() == "synced"
    assert service.index()["size"] == len(items) - 1
    assert victim["id"] not in _hit_ids(service.search(image, top_k=len(items)))
    assert service.client.delete(f"/images/{victim['id']}").status_code == 404
    assert service.client.delete("/images/0").status_code == 404


def test_retention_deletes_by_capture_time(service: Service) -> None:
    old = service.append(service.crops[:2], captured_at=T0.isoformat()).json()["images"]
    new = service.append(service.crops[2:4], captured_at=(T0 + timedelta(days=2)).isoformat())
    new_ids = [i["id"] for i in new.json()["images"]]
    count = service.dataset()["num_images"]
    url = f"/datasets/{service.dataset_id}/images:delete"
    assert service.client.post(url, json={}).status_code == 422  # no condition: refused
    assert service.client.post(url, json={"everything": True}).status_code == 422
    cutoff = (T0 + timedelta(days=1)).isoformat()
    response = service.client.post(url, json={"captured_before": cutoff})
    assert response.status_code == 200 and response.json() == {"deleted": 2}
    remaining = service.client.get(
        f"/datasets/{service.dataset_id}/images", params={"limit": 500}
    ).json()["items"]
    ids = {i["id"] for i in remaining}
    assert not ids & {i["id"] for i in old} and set(new_ids) <= ids
    # images without a capture time are not touched by a time filter
    assert len(remaining) == service.dataset()["num_images"] == count - 2
    assert service.work() == "synced" and service.index()["size"] == count - 2
    assert service.client.post("/datasets/999/images:delete", json={"camid": 1}).status_code == 404


def test_a_running_reader_keeps_the_file_until_it_is_done(service: Service) -> None:
    with service.harness.factory() as session:
        job_id = _job(session, service.dataset_id, "running", started_at=datetime.now(UTC))
        session.commit()
    victim = service.client.get(f"/datasets/{service.dataset_id}/images").json()["items"][0]
    files_before = _image_files(service.storage)
    assert service.client.delete(f"/images/{victim['id']}").status_code == 204
    assert _image_files(service.storage) == files_before  # the job may still read it
    with service.harness.factory() as session:
        row = session.get(Image, victim["id"])
        assert row is not None and row.orphaned_at is not None
        assert not session.scalars(
            select(DatasetImage).where(DatasetImage.image_id == victim["id"])
        ).all()
    assert collect_orphans(service.harness.factory, service.storage) == 0  # still running
    with service.harness.factory() as session:
        session.get(Job, job_id).status = "succeeded"  # type: ignore[union-attr]
        session.commit()
    assert collect_orphans(service.harness.factory, service.storage) == 1
    assert len(files_before - _image_files(service.storage)) == 1
    with service.harness.factory() as session:
        assert session.get(Image, victim["id"]) is None


# --------------------------------------------------------------------------------------
# syncs that fail, and the live index


def test_a_failed_sync_keeps_the_old_version_and_is_retried(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = service.index()["size"]
    service.append(service.crops[:2])

    def crash(*args: Any) -> Any:
        raise RuntimeError("worker died while embedding")

    monkeypatch.setattr(worker.index_sync, "embed_images", crash)
    assert service.work() == "failed"
    assert service.index()["size"] == size  # still searchable on its last version
    assert _hit_ids(service.search(service.crops[0].read_bytes(), top_k=3))
    monkeypatch.undo()
    with service.harness.factory() as session:  # the claim lapses (the worker is gone)
        session.get(SearchIndex, service.index_id).claimed_at = T0  # type: ignore[union-attr]
        session.commit()
    settings = service.harness.settings()
    assert build_index(settings, service.harness.factory, service.index_id, "w2") == "synced"
    index = service.index()
    assert index["size"] == size + 2
    folder = service.storage.index_version_dir(service.index_id, 1)
    members = read_items(folder, index["size"])[:, COL_MEMBER]
    assert len(set(members.tolist())) == len(members)  # nothing duplicated
    with service.harness.factory() as session:
        held = set(
            session.scalars(
                select(DatasetImage.id).where(DatasetImage.dataset_id == service.dataset_id)
            )
        )
    assert set(members.tolist()) == held  # nothing lost


def test_live_index_alias_switches_atomically(service: Service) -> None:
    assert service.dataset()["live_index_id"] == service.index_id  # the first ready one
    query = service.crops[0].read_bytes()
    response = service.client.post(
        "/search",
        data={"dataset_id": str(service.dataset_id)},
        files=[("image", ("q.jpg", query))],
    )
    assert response.status_code == 200 and response.json()["index_id"] == service.index_id
    with service.harness.factory() as session:
        job_id = _job(session, service.dataset_id, "succeeded")
        model2 = add_untrained_model(session, service.storage, job_id, "m2", H, W).id
        session.commit()
        index2 = create_index(session, model2, service.dataset_id).id
    url = f"/datasets/{service.dataset_id}/live-index"
    assert service.client.put(url, json={"index_id": index2}).status_code == 409  # building
    assert service.work(index2) == "ready"
    assert service.dataset()["live_index_id"] == service.index_id  # a new build does not switch
    switched = service.client.put(url, json={"index_id": index2})
    assert switched.status_code == 200 and switched.json()["live_index_id"] == index2
    response = service.client.post(
        "/search",
        data={"dataset_id": str(service.dataset_id)},
        files=[("image", ("q.jpg", query))],
    )
    assert response.json()["index_id"] == index2 and response.json()["model_id"] == model2
    assert service.client.put(url, json={"index_id": 999}).status_code == 422
    assert service.client.put("/datasets/999/live-index", json={"index_id": 1}).status_code == 404
    assert service.client.delete(f"/indexes/{index2}").status_code == 204
    assert service.dataset()["live_index_id"] is None
    response = service.client.post(
        "/search",
        data={"dataset_id": str(service.dataset_id)},
        files=[("image", ("q.jpg", query))],
    )
    assert response.status_code == 409 and "live index" in response.json()["detail"]


def test_embedded_worker_follows_appends_within_seconds(service: Service) -> None:
    client = service.harness.client(embedded_worker=True, poll_interval_s=0.05)
    size = service.index()["size"]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in service.crops[:2]]
    started = time.monotonic()
    response = client.post(f"/datasets/{service.dataset_id}/images", files=files)
    assert response.status_code == 201
    while service.index()["size"] != size + 2:
        assert time.monotonic() - started < 30, "the index did not follow the append"
        time.sleep(0.05)
    assert service.index()["id"] == service.index_id


# --------------------------------------------------------------------------------------
# concurrency (PostgreSQL: real concurrent writers)


def test_concurrent_appends_deletes_and_searches(
    isolated_env: Path, tmp_path: Path, postgres_url: str
) -> None:
    upgrade_database(postgres_url)
    svc = _make_service(postgres_url, tmp_path)
    stop = threading.Event()
    try:
        errors: list[str] = []
        query = svc.crops[0].read_bytes()

        def searcher() -> None:
            while not stop.is_set():
                response = svc.search(query, top_k=5)
                if response.status_code != 200:
                    errors.append(response.text)

        def appender(part: list[Path]) -> None:
            for crop in part:
                response = svc.append([crop])
                if response.status_code != 201:
                    errors.append(response.text)

        threads = [threading.Thread(target=searcher, daemon=True) for _ in range(2)]
        threads += [threading.Thread(target=appender, args=(svc.crops[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads[2:]:
            t.join()
        victims = svc.client.get(f"/datasets/{svc.dataset_id}/images").json()["items"][:2]
        for victim in victims:
            image = svc.client.get(victim["url"]).content
            assert svc.client.delete(f"/images/{victim['id']}").status_code == 204
            assert victim["id"] not in _hit_ids(svc.search(image, top_k=50))
        stop.set()
        for t in threads[:2]:
            t.join()
        assert errors == []
        while svc.work() == "synced":
            pass
        dataset = svc.dataset()
        assert svc.index()["size"] == dataset["num_images"]
        folder = svc.storage.index_version_dir(svc.index_id, svc.index()["version"])
        members = read_items(folder, dataset["num_images"])[:, COL_MEMBER]
        assert len(np.unique(members)) == len(members) == dataset["num_images"]
    finally:
        stop.set()
        svc.harness.close()


def test_rate_limits_answer_429_with_retry_after_per_key(service: Service) -> None:
    client = service.harness.client(
        api_keys=["alice", "bob"], search_rate_per_minute=2, upload_rate_per_minute=1
    )
    query = [("image", ("q.jpg", service.crops[0].read_bytes()))]
    data = {"index_id": str(service.index_id)}
    alice, bob = {"X-API-Key": "alice"}, {"Authorization": "Bearer bob"}
    assert [
        client.post("/search", data=data, files=query, headers=alice).status_code for _ in range(2)
    ] == [200, 200]
    limited = client.post("/search", data=data, files=query, headers=alice)
    assert limited.status_code == 429 and "rate limit" in limited.json()["detail"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert client.post("/search", data=data, files=query, headers=bob).status_code == 200
    url = f"/datasets/{service.dataset_id}/images"
    crop = [("file", ("a.jpg", service.crops[1].read_bytes()))]
    assert client.post(url, files=crop, headers=bob).status_code == 201
    again = client.post(url, files=crop, headers=bob)
    assert again.status_code == 429 and int(again.headers["Retry-After"]) <= 60
    assert client.get(f"/datasets/{service.dataset_id}", headers=bob).status_code == 200


def test_rate_limiter_refills_at_its_rate() -> None:
    from app.api.rate_limits import RateLimiter

    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("search", "k", 60) for _ in range(60)] == [0.0] * 60  # a burst
    assert limiter.take("search", "k", 60) == pytest.approx(1.0)
    now[0] = 2.5  # 2.5 tokens back
    assert [limiter.take("search", "k", 60) == 0 for _ in range(3)] == [True, True, False]
    assert limiter.take("upload", "k", 60) == 0.0  # kinds and clients apart
