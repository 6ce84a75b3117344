"""OpenAPI fuzzing of the whole service with schemathesis: no request may produce a 5xx, and
every response must match the documented status codes, content types and schemas.

The service is seeded through its own API (and, for what only a worker makes, through the
same functions the worker calls) so that ids 1, 2, … exist and the fuzzer reaches deep code
paths rather than 404s: a labeled source collection (1), an unlabeled target (2) and a
flat unlabeled collection no job uses (3, deletable), a succeeded job (1) with its model
file (model 1) and a ready index (1) of the target, a still-building index (2), a queued job
(2, which keeps collections 1 and 2 in use) and a failed one (3). No training ever runs: the
app has no embedded worker and no broker, so jobs the fuzzer submits only wait in the
database. That seeded state is built once per module and copied afresh for every operation,
so an operation that deletes (``DELETE /datasets/3``) cannot starve the ones after it.

``GET /jobs/{id}/events`` streams until the job ends; schemathesis reads at most
``MAX_STREAM_EVENTS`` events of an event stream (and stops at the request timeout), so a
queued job's stream is cut after its first event instead of hanging the run.

Deterministic (``derandomize``) and bounded: ``FUZZ_EXAMPLES`` examples per operation (the
environment variable ``REID_TEST_FUZZ_EXAMPLES`` raises it for a longer local run).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import add_untrained_model, zip_tree
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.db import create_db_engine, make_session_factory, upgrade_database
from app.core.orm import Job
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.jobs.dispatch import QueueOnly
from app.main import create_app
from app.search.indexes import create_index
from trainer.synth import generate_dataset
from worker.index_build import build_index

H, W = 64, 32
API_KEY = "fuzz-key"
FUZZ_EXAMPLES = int(os.environ.get("REID_TEST_FUZZ_EXAMPLES", "60"))
MAX_STREAM_EVENTS = 1
REQUEST_TIMEOUT_S = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _settings(root: Path, **kwargs: Any) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=root / "data",
        database_url=f"sqlite:///{root / 'reid.db'}",
        api_keys=[API_KEY],
        search_batch_wait_ms=1.0,
        **kwargs,
    )


# The OpenAPI document does not depend on settings or state: load it from an app that is
# never started (creating an app touches neither the database nor the disk).
_SCHEMA_APP = create_app(_settings(Path("/nonexistent-reid-fuzz")))
schema = schemathesis.openapi.from_dict(_SCHEMA_APP.openapi())
schema.config.max_stream_events = MAX_STREAM_EVENTS


# --------------------------------------------------------------------------------------
# steering the generated data towards what exists
#
# Unconstrained integers almost never name a seeded row, and random bytes are never an
# image or an archive: each generated id is also tried as 1, 2 or 3 (labels as 0, 1 or 2),
# and uploads are also drawn from real (valid, odd and broken) images and archives.

SEEDED_IDS = (1, 2, 3)
SEEDED_LABELS = (0, 1, 2)


def _picture(mode: str, size: tuple[int, int], fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = PILImage.fromarray(pixels, "RGBA").convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _targz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


_JPEG = _picture("RGB", (32, 64), "JPEG")
IMAGES = (
    _JPEG,
    _JPEG[: len(_JPEG) // 2],  # truncated
    _picture("RGBA", (32, 64), "PNG", 1),
    _picture("L", (1, 1), "PNG", 2),
    _picture("P", (300, 2), "PNG", 3),
    _picture("CMYK", (16, 16), "JPEG", 4),
    _picture("RGB", (8, 8), "BMP", 5),
    _picture("RGB", (8, 8), "WEBP", 6),
    _picture("RGB", (8, 8), "GIF", 7),  # decodable, but not an accepted format
    b"",
)
_CROPS = {f"crops/{i:03d}.jpg": _picture("RGB", (16, 32), "JPEG", 10 + i) for i in range(4)}
_MARKET = {
    f"{split}/{pid:04d}_c{cam}s1_000001_00.jpg": _picture("RGB", (16, 32), "JPEG", pid * 10 + cam)
    for split, pids in (
        ("bounding_box_train", (1, 2)),
        ("query", (3,)),
        ("bounding_box_test", (3,)),
    )
    for pid in pids
    for cam in (1, 2)
}
ARCHIVES = (
    _zip(_CROPS),
    _targz(_MARKET),
    _zip(_MARKET),
    _zip({}),
    _zip({"../escape.jpg": _JPEG, "ok.jpg": _JPEG}),
    _zip({"a.jpg": b"not really a jpeg", "b.txt": b"hello"}),
    _zip(
        {
            "manifest.csv": b"path,pid,camid,split\na.jpg,1,0,train\na.jpg,-5,x,query\n"
            b"b.jpg,99999999999999999999,1,gallery\n,,,\nmissing.jpg,2,2,nope\n",
            "a.jpg": _JPEG,
            "b.jpg": _picture("RGB", (16, 32), "JPEG", 99),
        }
    ),
    _zip(
        {
            "list_train.txt": b"train/0001/0001_000_01_0303morning_0015_0.jpg 1\nbroken\n",
            "list_query.txt": b"x y z\n",
            "train/0001/0001_000_01_0303morning_0015_0.jpg": _JPEG,
        }
    ),
    _targz({"image/1.jpg": _JPEG, "train_test_split/train_list.txt": b"1 7\n2\n"}),
    _JPEG,  # not an archive
)


def _id_like(key: str) -> tuple[int, ...] | None:
    if key.endswith("_id"):
        return SEEDED_IDS
    if key in ("pid", "camid", "exclude_camid"):
        return SEEDED_LABELS
    return None


def _steer(values: Any, uploads: dict[str, tuple[bytes, ...]] | None = None) -> Any:
    """Each integer id (and each upload named in ``uploads``) also as a seeded one."""
    if not isinstance(values, dict):
        return st.just(values)
    parts = {}
    for key, value in values.items():
        choices = _id_like(key)
        if choices and isinstance(value, int) and not isinstance(value, bool):
            parts[key] = st.one_of(st.just(value), st.sampled_from(choices))
        elif uploads and key in uploads:
            real = st.sampled_from(uploads[key])
            steered = st.lists(real, min_size=1, max_size=3) if isinstance(value, list) else real
            parts[key] = st.one_of(st.just(value), steered)
        else:
            parts[key] = st.just(value)
    return st.fixed_dictionaries(parts)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    return _steer(path_parameters)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any]) -> Any:
    return _steer(query)


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    steered = _steer(body, {"file": ARCHIVES, "image": IMAGES})
    if context.operation is None or context.operation.label != "POST /search":
        return steered
    return steered.flatmap(_one_query)


def _one_query(form: Any) -> Any:
    """``/search`` wants uploads or ``image_id`` (not both) and a model or an index: also
    the form fixed up that way, so that searches run rather than stop at the 422."""
    if not isinstance(form, dict):
        return st.just(form)

    def fix(by_id: bool, by_index: bool) -> dict[str, Any]:
        fixed = dict(form)
        fixed.pop("image" if by_id else "image_id", None)
        if by_id:
            fixed.setdefault("image_id", 1)
        elif not isinstance(fixed.get("image"), list) or not fixed["image"]:
            fixed["image"] = [_JPEG]
        if "model_id" not in fixed and "index_id" not in fixed:
            fixed["index_id" if by_index else "model_id"] = 1
        return fixed

    return st.one_of(st.just(form), st.builds(fix, st.booleans(), st.booleans()))


# --------------------------------------------------------------------------------------
# the seeded service


def _register_model(factory: Any, storage: StorageLayout, job_id: int) -> int:
    """An untrained encoder saved as the model of ``job_id`` (what a finished run leaves)."""
    with factory() as session:
        model = add_untrained_model(session, storage, job_id, "fuzz", H, W)
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.phase, job.model_id = "succeeded", None, model.id
        job.epoch, job.iteration = job.epochs, job.iterations
        session.commit()
        return model.id


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A database and data directory holding the seeded state (built once)."""
    root = tmp_path_factory.mktemp("fuzz-template")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("REID_") and not name.startswith("REID_TEST_"):
                mp.delenv(name)
        mp.chdir(root)
        settings_ = _settings(root)
        upgrade_database(settings_.effective_database_url)
        headers = {"X-API-Key": API_KEY}
        with TestClient(create_app(settings_), headers=headers) as client:
            ids = []
            for name, style, seed, labeled in (
                ("daylight", "market", 0, "true"),
                ("night", "night", 1, "false"),
            ):
                generate_dataset(
                    root / name, 6, 3, style, seed, height=H, width=W, images_per_camera=2
                )
                files = {"file": (f"{name}.zip", zip_tree(root / name), "application/zip")}
                response = client.post(
                    "/datasets", data={"name": name, "labeled": labeled}, files=files
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            files = {"file": ("crops.zip", _zip(_CROPS), "application/zip")}
            response = client.post(
                "/datasets", data={"name": "crops", "labeled": "false"}, files=files
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
            assert ids == [1, 2, 3]
            small = {"epochs": 1, "iters": 1, "batch_size": 4, "height": H, "width": W}
            for key in ("done", "queued", "failed"):
                response = client.post(
                    "/jobs",
                    json={"source_dataset_id": 1, "target_dataset_id": 2, "config": small},
                    headers={"Idempotency-Key": key},
                )
                assert response.status_code == 202, response.text
        engine = create_db_engine(settings_.effective_database_url)
        factory = make_session_factory(engine)
        storage = StorageLayout(settings_.data_dir)
        model_id = _register_model(factory, storage, job_id=1)
        with factory() as session:
            failed = session.get(Job, 3)
            assert failed is not None
            failed.status, failed.error, failed.attempts = "failed", "seeded failure", 1
            session.commit()
            ready = create_index(session, model_id, 2, job_id=1).id
            building = create_index(session, model_id, 1).id
        assert (model_id, ready, building) == (1, 1, 2)
        assert build_index(settings_, factory, ready, "fuzz-seed") == "ready"
        engine.dispose()
    yield root


@dataclass
class Service:
    app: FastAPI
    root: Path


@pytest.fixture
def service(template: Path, tmp_path: Path, isolated_env: Path) -> Iterator[Service]:
    """A fresh copy of the seeded state, served by an app without a worker."""
    root = tmp_path / "service"
    shutil.copytree(template, root)
    app = create_app(_settings(root))
    assert isinstance(app.state.dispatcher, QueueOnly)
    with TestClient(app):  # lifespan: startup now, shutdown (engine disposed) afterwards
        yield Service(app, root)


# --------------------------------------------------------------------------------------
# the fuzz run


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_fuzz(case: schemathesis.Case, service: Service) -> None:
    case.call_and_validate(
        app=service.app,
        headers={"X-API-Key": API_KEY},
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT_S,
    )


# --------------------------------------------------------------------------------------
# what the fuzzer found (regressions, with the exact requests)


def test_malformed_bodies_are_documented_400s(service: Service) -> None:
    """Bodies FastAPI/Starlette cannot even parse get a 400 that was not in the OpenAPI
    document (schemathesis: undocumented status code)."""
    document = service.app.openapi()
    with TestClient(service.app, headers={"X-API-Key": API_KEY}) as client:
        json_type = {"Content-Type": "application/json"}
        for path in ("/jobs", "/indexes"):  # not UTF-8: not even invalid JSON
            response = client.post(path, content=b"\xa2\x03W\xd6U7", headers=json_type)
            assert response.status_code == 400, response.text
            assert response.json() == {"detail": "There was an error parsing the body"}
        boundary = "a222103b9b30b1f9e8be6882ecedb1d2"
        response = client.post(
            "/search",
            content=f"--{boundary}\r\n[]--{boundary}--\r\n".encode(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 400, response.text
        assert response.json() == {"detail": "Invalid multipart data."}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                assert "400" in operation["responses"], (method, path)


def test_protected_operations_document_401(service: Service) -> None:
    document = service.app.openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path != "/health":
                assert "401" in operation["responses"], (method, path)
    with TestClient(service.app) as client:
        response = client.get("/jobs")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "API key required"}


def test_optional_form_fields_are_not_nullable(service: Service) -> None:
    """A form has no null: ``anyOf [T, null]`` made fuzzers (and clients reading the
    document) send the text ``null`` (422), and hid that ``image`` takes files."""
    document = service.app.openapi()
    form = document["components"]["schemas"]["Body_search_search_post"]
    assert form["properties"]["image"]["type"] == "array"
    assert form["properties"]["image"]["items"]["contentMediaType"] == "application/octet-stream"
    assert "null" not in str(form)
    with TestClient(service.app, headers={"X-API-Key": API_KEY}) as client:
        response = client.post(
            "/search", files=[("image", ("q.jpg", _JPEG, "image/jpeg"))], data={"model_id": "1"}
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1
