"""Image collections over HTTP: upload, list, inspect, delete, images, and every bad input.

Each test runs on SQLite (a temporary file) and on PostgreSQL (a temporary database from the
``postgres_url`` fixture in conftest.py, skipped when no server is reachable). Archives are
built here from tiny generated images; the hostile ones too. After every refused upload the
test checks that nothing stayed behind: no rows, no image files, an empty tmp directory.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import ServiceHarness
from PIL import Image as PILImage
from sqlalchemy import func, select, text

import app.datasets.ingest
import app.datasets.service
from app.api.datasets import LayoutChoice
from app.core.db import upgrade_database
from app.core.orm import Dataset, DatasetImage, Image
from app.core.settings import Settings
from app.main import create_app
from trainer.data.readers import LAYOUTS

pytestmark = pytest.mark.usefixtures("isolated_env")

MARKET_ROOT = "Market-1501-v15.09.15"

# --------------------------------------------------------------------------------------
# building archives


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (8, 16)) -> bytes:
    """A small noise image, distinct per seed (so distinct bytes and hash)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:gz", extra: Any = None) -> bytes:
    """A tar (gzip by default); ``extra(tar)`` may add special members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return out.getvalue()


def _market(seed: int = 0, root: str = MARKET_ROOT) -> dict[str, bytes]:
    """Market-1501 tree: 7 train (one PNG), 2 query, 3 gallery, and 3 files to reject."""
    files = {}
    k = seed * 100
    for pid in (1, 2, 3):
        for cam in (1, 2):
            files[f"bounding_box_train/{pid:04d}_c{cam}s1_000001_00.jpg"] = _image(k := k + 1)
    files["bounding_box_train/0003_c3s1_000001_00.png"] = _image(k := k + 1, "PNG")
    files["bounding_box_train/readme.txt"] = b"not an image"
    files["bounding_box_train/0006_c1s1_000001_00.jpg"] = b"\xff\xd8 garbage, not a JPEG"
    files["query/0004_c1s1_000001_00.jpg"] = _image(k := k + 1)
    files["query/0005_c1s1_000001_00.jpg"] = _image(k := k + 1)
    files["bounding_box_test/0004_c2s1_000001_00.jpg"] = _image(k := k + 1)
    files["bounding_box_test/0005_c2s1_000001_00.jpg"] = _image(k := k + 1)
    files["bounding_box_test/0000_c3s1_000001_00.jpg"] = _image(k := k + 1)  # distractor
    files["bounding_box_test/-1_c1s1_000001_00.jpg"] = _image(k := k + 1)  # junk
    return {f"{root}/{name}": data for name, data in files.items()}


def _flat(seeds: range | list[int], folder: str = "crops") -> dict[str, bytes]:
    return {f"{folder}/img_{s:04d}.jpg": _image(s) for s in seeds}


# --------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'reid.db'}"
    return request.getfixturevalue("postgres_url")


class Service(ServiceHarness):
    """The harness plus what an upload test checks: row counts, image files, tmp entries."""

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                table.__tablename__: conn.scalar(select(func.count()).select_from(table)) or 0
                for table in (Dataset, Image, DatasetImage)
            }

    def image_files(self) -> set[str]:
        root = self.data_dir / "images"
        return {p.name for p in root.rglob("*") if p.is_file()}

    def tmp_entries(self) -> list[str]:
        return os.listdir(self.data_dir / "tmp")

    def snapshot(self) -> tuple[dict[str, int], set[str]]:
        return self.counts(), self.image_files()

    def assert_unchanged(self, before: tuple[dict[str, int], set[str]]) -> None:
        assert self.snapshot() == before
        assert self.tmp_entries() == []


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[Service]:
    upgrade_database(db_url)
    svc = Service(db_url, tmp_path / "data")
    yield svc
    svc.close()


def upload(
    client: TestClient,
    archive: bytes,
    *,
    name: str = "collection",
    labeled: bool | str = True,
    layout: str | None = None,
    filename: str = "upload.zip",
    **kwargs: Any,
) -> Any:
    data = {"name": name, "labeled": str(labeled).lower()}
    if layout is not None:
        data["layout"] = layout
    files = {"file": (filename, archive, "application/octet-stream")}
    return client.post("/datasets", data=data, files=files, **kwargs)


def all_images(client: TestClient, dataset_id: int, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/datasets/{dataset_id}/images", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


# --------------------------------------------------------------------------------------
# happy paths


def test_market_zip_source(service: Service) -> None:
    client = service.client()
    files = _market()
    response = upload(client, _zip(files), name="market", labeled=True)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "market" and body["labeled"] is True
    assert body["layout"] == "market1501"
    assert body["splits"] == {"train": 7, "query": 2, "gallery": 3}
    assert body["num_images"] == 12
    assert body["num_identities"] == 6  # train {1, 2, 3} + test {0, 4, 5}
    assert body["num_cameras"] == 3
    rejected = {r["path"]: r["reason"] for r in body["rejected"]}
    prefix = f"{MARKET_ROOT}/"
    assert set(rejected) == {
        prefix + "bounding_box_train/readme.txt",
        prefix + "bounding_box_train/0006_c1s1_000001_00.jpg",
        prefix + "bounding_box_test/-1_c1s1_000001_00.jpg",
    }
    assert "not an image" in rejected[prefix + "bounding_box_train/readme.txt"]
    assert "junk identity" in rejected[prefix + "bounding_box_test/-1_c1s1_000001_00.jpg"]
    assert "image" in rejected[prefix + "bounding_box_train/0006_c1s1_000001_00.jpg"]
    assert str(service.data_dir) not in response.text  # no server paths in messages
    dataset_id = body["id"]

    assert client.get(f"/datasets/{dataset_id}").json() == body
    listing = client.get("/datasets").json()
    assert listing == {"items": [body], "total": 1, "limit": 50, "offset": 0}

    images = all_images(client, dataset_id)
    assert len(images) == 12
    train = all_images(client, dataset_id, split="train")
    assert len(train) == 7 and all(i["pid"] in (1, 2, 3) for i in train)  # source keeps pids
    assert {i["path"] for i in all_images(client, dataset_id, pid=1)} == {
        prefix + "bounding_box_train/0001_c1s1_000001_00.jpg",
        prefix + "bounding_box_train/0001_c2s1_000001_00.jpg",
    }
    assert len(all_images(client, dataset_id, camid=2)) == 2  # c3: train png + distractor
    assert len(all_images(client, dataset_id, split="query", camid=0)) == 2
    assert all_images(client, dataset_id, pid=99) == []
    page = client.get(f"/datasets/{dataset_id}/images", params={"limit": 5, "offset": 10}).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (12, 5, 10, 2)
    assert [i["id"] for i in page["items"]] == [i["id"] for i in images[10:]]

    for item in images:
        assert item["url"] == f"/images/{item['id']}" and item["dataset_id"] == dataset_id
        assert (item["width"], item["height"]) == (8, 16)
        got = client.get(item["url"])
        assert got.status_code == 200
        assert got.content == files[item["path"]]  # exactly the uploaded bytes
        expected_type = "image/png" if item["path"].endswith(".png") else "image/jpeg"
        assert got.headers["content-type"] == expected_type
    assert service.counts() == {"datasets": 1, "images": 12, "dataset_images": 12}
    assert len(service.image_files()) == 12 and service.tmp_entries() == []


def test_flat_targz_target(service: Service) -> None:
    client = service.client()
    archive = _tar({**_flat(range(5)), "crops/notes.md": b"# hi"})
    response = upload(client, archive, name="night", labeled=False, filename="t.tar.gz")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["layout"] == "folders" and body["labeled"] is False
    assert body["splits"] == {"train": 5, "query": 0, "gallery": 0}
    assert (body["num_images"], body["num_identities"], body["num_cameras"]) == (5, 0, 0)
    assert body["rejected"] == [{"path": "crops/notes.md", "reason": "not an image (.md)"}]
    images = all_images(client, body["id"])
    assert [i["path"] for i in images] == [f"crops/img_{s:04d}.jpg" for s in range(5)]
    assert all(i["pid"] is None and i["camid"] is None for i in images)


def test_target_never_stores_training_labels(service: Service) -> None:
    client = service.client()
    response = upload(client, _zip(_market()), name="tgt", labeled=False, layout="market1501")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_identities"] == 3  # only the test identities {0, 4, 5}
    with service.clients[0].app.state.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT split, pid FROM dataset_images WHERE dataset_id = :id"),
            {"id": body["id"]},
        ).all()
    assert {pid for split, pid in rows if split == "train"} == {None}
    assert {pid for split, pid in rows if split != "train"} == {0, 4, 5}  # kept to evaluate
    assert all(i["pid"] is None for i in all_images(client, body["id"], split="train"))
    assert all_images(client, body["id"], pid=1) == []


def test_dedup_across_collections_and_delete(service: Service) -> None:
    client = service.client()
    a = upload(client, _tar(_flat(range(6), "a")), name="a", labeled=False)
    b = upload(client, _zip(_flat(range(3, 9), "b")), name="b", labeled=False)
    assert a.status_code == b.status_code == 201
    id_a, id_b = a.json()["id"], b.json()["id"]
    assert service.counts() == {"datasets": 2, "images": 9, "dataset_images": 12}
    assert len(service.image_files()) == 9  # the 3 shared images are stored once
    shared = {i["id"] for i in all_images(client, id_a)} & {
        i["id"] for i in all_images(client, id_b)
    }
    assert len(shared) == 3

    assert client.delete(f"/datasets/{id_a}").status_code == 204
    assert client.get(f"/datasets/{id_a}").status_code == 404
    assert client.delete(f"/datasets/{id_a}").status_code == 404
    assert service.counts() == {"datasets": 1, "images": 6, "dataset_images": 6}
    assert len(service.image_files()) == 6  # the shared files stay for b
    for item in all_images(client, id_b):
        assert client.get(item["url"]).status_code == 200

    assert client.delete(f"/datasets/{id_b}").status_code == 204
    assert service.counts() == {"datasets": 0, "images": 0, "dataset_images": 0}
    assert service.image_files() == set()
    assert client.get(f"/images/{min(shared)}").status_code == 404
    assert client.get("/datasets").json()["total"] == 0
    assert service.tmp_entries() == []


def test_same_image_twice_in_one_archive(service: Service) -> None:
    client = service.client()
    same = _image(1)
    response = upload(client, _zip({"x/a.jpg": same, "x/b.jpg": same}), labeled=False)
    assert response.status_code == 201, response.text
    assert service.counts() == {"datasets": 1, "images": 1, "dataset_images": 2}


def test_csv_manifest_rows_naming_missing_files(service: Service) -> None:
    client = service.client()
    manifest = "path,pid,camid,split\na.jpg,1,0,train\nmissing.jpg,2,0,train\nq.jpg,1,1,query\n"
    files = {"manifest.csv": manifest.encode(), "a.jpg": _image(1), "q.jpg": _image(2)}
    response = upload(client, _zip(files), labeled=True)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["layout"] == "csv" and body["splits"] == {"train": 1, "query": 1, "gallery": 0}
    [entry] = body["rejected"]
    assert entry["path"] == "missing.jpg" and "missing file" in entry["reason"]


def test_rejected_images_are_not_fatal(service: Service) -> None:
    client = service.client(max_image_pixels=200)  # 8x16 = 128 fits, 32x32 does not
    files = {
        **_flat(range(3)),
        "crops/truncated.jpg": _image(7)[:60],
        "crops/big.png": _image(8, "PNG", (32, 32)),
        "crops/text.jpg": b"hello, I am not a JPEG",
    }
    response = upload(client, _tar(files, "w"), labeled=False, filename="x.tar")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 3
    reasons = {r["path"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {"crops/truncated.jpg", "crops/big.png", "crops/text.jpg"}
    assert "too large (32x32, limit 200 pixels)" in reasons["crops/big.png"]
    assert "not a recognised image" in reasons["crops/text.jpg"]
    assert "decode" in reasons["crops/truncated.jpg"] or "image" in reasons["crops/truncated.jpg"]
    assert str(service.data_dir) not in response.text
    assert len(service.image_files()) == 3 and service.tmp_entries() == []


def test_rejected_list_is_capped(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.datasets.ingest, "MAX_REJECTED", 3)
    client = service.client()
    files = {**_flat(range(1)), **{f"crops/n{i}.txt": b"x" for i in range(5)}}
    response = upload(client, _zip(files), labeled=False)
    assert response.status_code == 201, response.text
    rejected = response.json()["rejected"]
    assert len(rejected) == 3 and rejected[-1]["reason"] == "3 more rejected files not listed"


def test_store_step_retries_a_lost_race(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import IntegrityError

    client = service.client()
    original = app.datasets.ingest.upsert_images
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT", {}, Exception("duplicate key (simulated race)"))
        return original(*args, **kwargs)

    monkeypatch.setattr(app.datasets.ingest, "upsert_images", flaky)
    response = upload(client, _zip(_flat(range(3))), labeled=False)
    assert response.status_code == 201, response.text
    assert len(calls) == 2
    assert service.counts() == {"datasets": 1, "images": 3, "dataset_images": 3}


def test_missing_image_file_is_404(service: Service) -> None:
    client = service.client()
    body = upload(client, _zip(_flat(range(1))), labeled=False).json()
    [item] = all_images(client, body["id"])
    for path in (service.data_dir / "images").rglob("*.jpeg"):
        path.unlink()
    response = client.get(item["url"])
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "image file missing from storage"},
    )


# --------------------------------------------------------------------------------------
# refused uploads: status, JSON detail, nothing left behind


def _symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("crops/link.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _hardlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("crops/hard.jpg")
    info.type, info.linkname = tarfile.LNKTYPE, "crops/img_0000.jpg"
    tar.addfile(info)


def _device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("crops/dev.jpg")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


def _absolute(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("/tmp/evil.jpg")
    data = _image(99)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


BAD_ARCHIVES: dict[str, tuple[Callable[[], bytes], dict[str, Any], int, list[str]]] = {
    "dotdot": (
        lambda: _zip({**_flat(range(2)), "crops/../../evil.jpg": _image(9)}),
        {},
        422,
        ["unsafe archive member", "evil.jpg", "'..'"],
    ),
    "absolute": (lambda: _tar(_flat(range(2)), extra=_absolute), {}, 422, ["/tmp/evil.jpg"]),
    "symlink": (lambda: _tar(_flat(range(2)), extra=_symlink), {}, 422, ["link.jpg", "symlink"]),
    "hardlink": (lambda: _tar(_flat(range(2)), extra=_hardlink), {}, 422, ["hard.jpg", "hard"]),
    "device": (lambda: _tar(_flat(range(2)), extra=_device), {}, 422, ["dev.jpg", "device"]),
    "ratio_bomb": (
        lambda: _zip({**_flat(range(2)), "crops/zeros.jpg": bytes(4 << 20)}),
        {},
        422,
        ["ratio limit"],
    ),
    "too_many_members": (
        lambda: _zip(_flat(range(6))),
        {"max_archive_members": 4},
        422,
        ["members limit"],
    ),
    "too_big_uncompressed": (
        lambda: _tar(_flat(range(20)), "w"),
        {"max_uncompressed_bytes": 4000},
        422,
        ["total_bytes limit"],
    ),
    "not_an_archive": (lambda: b"just some text", {}, 415, ["not a supported archive"]),
    "image_not_archive": (lambda: _image(3), {}, 415, ["not a supported archive"]),
    "empty_file": (lambda: b"", {}, 415, ["empty"]),
    "truncated_zip": (lambda: _zip(_flat(range(4)))[:-30], {}, 422, ["damaged"]),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_refused_archives_leave_nothing(service: Service, case: str) -> None:
    build, settings, status, fragments = BAD_ARCHIVES[case]
    client = service.client(**settings)
    before = service.snapshot()
    response = upload(client, build(), labeled=False)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail
    assert str(service.data_dir) not in detail
    service.assert_unchanged(before)


@pytest.mark.parametrize(
    ("files", "labeled", "layout", "fragment"),
    [
        ({"a/x.txt": b"no images here"}, False, None, "no usable images"),
        ({"a/bad.jpg": b"\xff\xd8\xff broken", "a/bad2.png": b"?"}, False, None, "no usable"),
        (_flat(range(3)), True, None, "labeled=true but the training split has no identity"),
        (_flat(range(3)), False, "market1501", "not a market1501 tree"),
        ({"manifest.csv": b"path,pid\nmissing.jpg,1\n"}, True, "csv", "missing file"),
    ],
    ids=["no-images", "all-corrupt", "labeled-without-labels", "wrong-layout", "csv-all-missing"],
)
def test_unusable_collections_422(
    service: Service, files: dict[str, bytes], labeled: bool, layout: str | None, fragment: str
) -> None:
    client = service.client()
    before = service.snapshot()
    response = upload(client, _zip(files), labeled=labeled, layout=layout)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    assert str(service.data_dir) not in response.text
    service.assert_unchanged(before)


def test_labeled_source_needs_decodable_labeled_train(service: Service) -> None:
    client = service.client()
    before = service.snapshot()
    files = {
        "manifest.csv": b"path,pid,split\nt.jpg,1,train\nq.jpg,1,query\n",
        "t.jpg": b"\xff\xd8 corrupt",
        "q.jpg": _image(1),
    }
    response = upload(client, _zip(files), labeled=True)
    assert response.status_code == 422, response.text
    assert "no labeled training image could be decoded" in response.json()["detail"]
    service.assert_unchanged(before)


def test_upload_over_the_limit_413(service: Service) -> None:
    client = service.client(max_upload_bytes=2000)
    before = service.snapshot()
    archive = _tar(_flat(range(40)), "w")
    assert len(archive) > 10_000
    response = upload(client, archive, labeled=False)
    assert response.status_code == 413
    assert response.json() == {"detail": "upload is larger than the limit of 2,000 bytes"}
    service.assert_unchanged(before)
    ok = upload(client, _zip(_flat(range(1))), labeled=False)  # small enough still works
    assert ok.status_code == 201, ok.text


def test_form_errors(service: Service) -> None:
    client = service.client()
    before = service.snapshot()
    archive = _zip(_flat(range(2)))
    file_part = {"file": ("a.zip", archive, "application/zip")}

    def check(response: Any, status: int, *fragments: str) -> None:
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        for fragment in fragments:
            assert fragment in detail, detail

    no_file = client.post("/datasets", data={"name": "x", "labeled": "true"})  # urlencoded
    check(no_file, 422, "body.file")
    fields_only = {"name": (None, "x"), "labeled": (None, "true")}  # multipart, no file part
    check(client.post("/datasets", files=fields_only), 422, "body.file")
    check(client.post("/datasets", data={"labeled": "true"}, files=file_part), 422, "body.name")
    blank = client.post("/datasets", data={"name": "  ", "labeled": "1"}, files=file_part)
    check(blank, 422, "body.name")
    check(client.post("/datasets", data={"name": "x"}, files=file_part), 422, "body.labeled")
    check(upload(client, archive, labeled="maybe"), 422, "body.labeled")
    check(upload(client, archive, layout="weird"), 422, "body.layout")
    check(upload(client, archive, name="x" * 256), 422, "body.name")
    check(upload(client, archive, name="tab\tname"), 422, "control characters")
    check(client.post("/datasets", json={"name": "x", "labeled": True}), 415, "multipart")
    check(client.post("/datasets"), 415, "multipart")
    headers = {"content-type": "multipart/form-data"}
    check(client.post("/datasets", content=b"abc", headers=headers), 400, "boundary")
    truncated = (
        b'--XyZ\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        + archive[:100]
    )
    headers = {"content-type": "multipart/form-data; boundary=XyZ"}
    check(client.post("/datasets", content=truncated, headers=headers), 400, "ended early")
    two_files = [("file", ("a.zip", archive)), ("file", ("b.zip", archive))]
    check(client.post("/datasets", data={"name": "x", "labeled": "1"}, files=two_files), 422)
    service.assert_unchanged(before)


def test_unknown_ids_404_and_bad_queries_422(service: Service) -> None:
    client = service.client()
    for path in ("/datasets/999", "/datasets/0", "/datasets/-5", f"/datasets/{2**70}"):
        assert client.get(path).status_code == 404, path
        assert client.get(path + "/images").status_code == 404, path
        assert client.delete(path).status_code == 404, path
    for path in ("/images/1", "/images/0", f"/images/{2**70}"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (404, {"detail": "image not found"})
    assert client.get("/datasets/abc").status_code == 422
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": 2**40}):
        assert client.get("/datasets", params=params).status_code == 422, params
    created = upload(client, _zip(_flat(range(2))), labeled=False).json()
    url = f"/datasets/{created['id']}/images"
    for params in ({"split": "test"}, {"pid": -1}, {"camid": 2**40}, {"pid": "x"}):
        assert client.get(url, params=params).status_code == 422, params


def test_delete_refused_while_in_use(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    client = service.client()
    dataset_id = upload(client, _zip(_flat(range(2))), labeled=False).json()["id"]
    # the real check (queued/running jobs) is exercised in test_jobs.py
    monkeypatch.setattr(app.datasets.service, "dataset_in_use", lambda session, dataset_id: True)
    response = client.delete(f"/datasets/{dataset_id}")
    assert response.status_code == 409 and "job" in response.json()["detail"]
    assert client.get(f"/datasets/{dataset_id}").status_code == 200
    assert len(service.image_files()) == 2


def test_failed_store_removes_only_new_files(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = service.client()
    assert upload(client, _zip(_flat(range(5), "a")), labeled=False).status_code == 201
    before = service.snapshot()

    def failing_insert(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")  # after the files were placed, before the rows

    monkeypatch.setattr(app.datasets.ingest, "insert", failing_insert)
    response = upload(client, _zip(_flat(range(3, 8), "b")), labeled=False)
    assert response.status_code == 500  # an injected server fault, reported as JSON
    assert response.json() == {"detail": "internal error"}
    service.assert_unchanged(before)  # a's files (3, 4 shared) stay; 5..7 were removed


def test_concurrent_overlapping_uploads(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both reach the database step together (barrier), so the unique-hash race is real."""
    client = service.client()
    barrier = threading.Barrier(2, timeout=20)
    original = app.datasets.ingest._store

    def store_together(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(app.datasets.ingest, "_store", store_together)
    archives = [_zip(_flat(range(0, 12), "a")), _tar(_flat(range(6, 18), "b"))]
    responses: list[Any] = [None, None]

    def run(i: int) -> None:
        responses[i] = upload(client, archives[i], name=f"c{i}", labeled=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert service.counts() == {"datasets": 2, "images": 18, "dataset_images": 24}
    assert len(service.image_files()) == 18 and service.tmp_entries() == []
    for body in (r.json() for r in responses):
        for item in all_images(client, body["id"]):
            assert client.get(item["url"]).status_code == 200


def test_routes_need_the_api_key(service: Service) -> None:
    client = service.client(api_keys=["sesame"])
    archive = _zip(_flat(range(1)))
    assert upload(client, archive, labeled=False).status_code == 401
    for path in ("/datasets", "/datasets/1", "/datasets/1/images", "/images/1"):
        assert client.get(path).status_code == 401, path
    assert client.delete("/datasets/1").status_code == 401
    authorized = upload(client, archive, labeled=False, headers={"X-API-Key": "sesame"})
    assert authorized.status_code == 201, authorized.text


def test_key_scopes_and_hashed_keys(service: Service) -> None:
    """read keys read and search, write keys also change things (401 unknown, 403 too weak);
    a sha256: entry works like the key it hashes, and the service never sees the key."""
    from app.core.api_keys import new_key

    reader, reader_entry = new_key("read")
    client = service.client(api_keys=[reader_entry, "write=w-key", "old-plain-key"])
    archive = _zip(_flat(range(1)))
    as_reader = {"Authorization": f"Bearer {reader}"}
    refused = upload(client, archive, labeled=False, headers=as_reader)
    assert refused.status_code == 403 and "needs a write key" in refused.json()["detail"]
    assert client.get("/datasets", headers=as_reader).status_code == 200
    search = client.post("/search", data={"model_id": "999", "image_id": "1"}, headers=as_reader)
    assert search.status_code == 404  # allowed through auth: the model does not exist
    created = upload(client, archive, labeled=False, headers={"X-API-Key": "w-key"})
    assert created.status_code == 201, created.text
    dataset = created.json()["id"]
    assert client.delete(f"/datasets/{dataset}", headers=as_reader).status_code == 403
    assert (
        client.delete(f"/datasets/{dataset}", headers={"X-API-Key": "old-plain-key"}).status_code
        == 204
    )
    assert client.get("/datasets", headers={"X-API-Key": reader_entry}).status_code == 401
    with pytest.raises(ValueError, match="64 hex digits"):
        service.client(api_keys=["read=sha256:abc"])


# --------------------------------------------------------------------------------------
# the OpenAPI schema, and fuzzing it


def test_openapi_documents_the_routes(tmp_path: Path) -> None:
    schema = create_app(Settings(_env_file=None, data_dir=tmp_path)).openapi()
    post = schema["paths"]["/datasets"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file", "name", "labeled"]
    assert body["properties"]["file"]["format"] == "binary"
    assert body["properties"]["layout"]["enum"] == ["auto", *LAYOUTS]
    assert [c.value for c in LayoutChoice] == ["auto", *LAYOUTS]
    assert {"201", "413", "415", "422"} <= set(post["responses"])
    for path in ("/datasets", "/datasets/{dataset_id}", "/datasets/{dataset_id}/images"):
        for operation in schema["paths"][path].values():
            assert operation["security"], path
            assert "$ref" in str(operation["responses"]), path
    image = schema["paths"]["/images/{image_id}"]["get"]
    assert set(image["responses"]["200"]["content"]) == {
        "image/jpeg",
        "image/png",
        "image/bmp",
        "image/webp",
    }


def test_schemathesis_finds_no_server_error(service: Service) -> None:
    """Positive and negative cases for every operation; DELETE last, so ids exist before."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    client = service.client(max_upload_bytes=1 << 20)
    seeded = upload(client, _zip(_market()), labeled=True)  # ids that exist, for 200s too
    assert seeded.status_code == 201
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: op.method.upper() == "DELETE",
    )
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            derandomize=True,  # reproducible in CI
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call()
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert len(statuses) == len(operations), statuses  # every operation was exercised
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses
    assert {200, 404} <= statuses["GET /datasets/{dataset_id}/images"], statuses
    assert service.tmp_entries() == []


def test_fuzzed_multipart_bodies_never_fail_the_server(service: Service) -> None:
    """Truncated, bit-flipped and padded versions of a valid upload body: 4xx or 201 only."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client = service.client()
    archive = _zip(_flat(range(2)))
    valid = (
        b'--B0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\nfuzz\r\n'
        b'--B0undary\r\nContent-Disposition: form-data; name="labeled"\r\n\r\nfalse\r\n'
        b'--B0undary\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        b"Content-Type: application/zip\r\n\r\n" + archive + b"\r\n--B0undary--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=B0undary"}
    statuses: set[int] = set()

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,  # the same bodies on every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(
        cut=st.integers(0, len(valid)),
        flips=st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), max_size=3),
        tail=st.binary(max_size=32),
    )
    def check(cut: int, flips: list[tuple[int, int]], tail: bytes) -> None:
        body = bytearray(valid[:cut])
        for pos, value in flips:
            if pos < len(body):
                body[pos] = value
        response = client.post("/datasets", content=bytes(body) + tail, headers=headers)
        statuses.add(response.status_code)
        assert response.status_code in (201, 400, 413, 415, 422), response.text
        key = "id" if response.status_code == 201 else "detail"
        assert key in response.json()

    check()
    assert 400 in statuses  # truncated bodies came up
    assert service.tmp_entries() == []
