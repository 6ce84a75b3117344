"""Indexes and ``POST /search``: builds, reloads, exactness against brute force, filters,
errors, the job's indexing phase, micro-batching and the retrieval quality check.

One module-scoped service holds two tiny synthetic collections and an untrained MobileNetV2
(64x32 input) saved as a model file; indexes are built by calling the worker's function
directly, so the suite stays fast on two CPU cores.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import add_untrained_model, zip_tree
from sqlalchemy import select

from app.core.db import create_db_engine, make_session_factory, upgrade_database
from app.core.orm import Job, Model, SearchIndex
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.main import create_app
from app.search.indexes import (
    NO_LABEL,
    SPLIT_CODES,
    IndexCache,
    LoadedIndex,
    create_index,
    dataset_items,
)
from app.search.query import LoadedModel, MicroBatcher
from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.evaluation import rank_metrics
from trainer.features import ImageDataset, evaluate_retrieval, extract_features
from trainer.index import FeatureIndex, gpu_count
from trainer.models.export import load_model
from trainer.synth import generate_dataset
from worker.embedded import EmbeddedWorker
from worker.index_build import build_index

H, W = 64, 32


@dataclass
class World:
    """The shared service: database, data directory, collections, model and its index."""

    url: str
    data_dir: Path
    factory: Any
    dataset_id: int
    other_dataset_id: int
    model_id: int
    index_id: int

    def settings(self, **kwargs: Any) -> Settings:
        return Settings(_env_file=None, data_dir=self.data_dir, database_url=self.url, **kwargs)

    @property
    def storage(self) -> StorageLayout:
        return StorageLayout(self.data_dir)


def _add_model(factory: Any, storage: StorageLayout, dataset_id: int, name: str) -> int:
    """A job row and an untrained encoder registered as its model (no training needed)."""
    with factory() as session:
        job = Job(
            status="succeeded", target_dataset_id=dataset_id, config={}, request_hash="x" * 64
        )
        session.add(job)
        session.flush()
        model = add_untrained_model(session, storage, job.id, name, H, W)
        session.commit()
        return model.id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("REID_") and not name.startswith("REID_TEST_"):
                mp.delenv(name)
        base = tmp_path_factory.mktemp("search")
        mp.chdir(base)
        url = f"sqlite:///{base / 'reid.db'}"
        upgrade_database(url)
        engine = create_db_engine(url)
        factory = make_session_factory(engine)
        data_dir = base / "data"
        settings = Settings(_env_file=None, data_dir=data_dir, database_url=url)
        ids = []
        with TestClient(create_app(settings)) as client:
            for name, style, seed in (("market", "market", 0), ("night", "night", 1)):
                generate_dataset(
                    base / name, 6, 3, style, seed, height=H, width=W, images_per_camera=2
                )
                files = {"file": (f"{name}.zip", zip_tree(base / name), "application/zip")}
                response = client.post(
                    "/datasets", data={"name": name, "labeled": "true"}, files=files
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
        storage = StorageLayout(data_dir)
        model_id = _add_model(factory, storage, ids[0], "m1")
        with factory() as session:
            index_id = create_index(session, model_id, ids[0]).id
        assert build_index(settings, factory, index_id, "test-worker") == "ready"
        yield World(url, data_dir, factory, ids[0], ids[1], model_id, index_id)
        engine.dispose()


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings(search_batch_wait_ms=1.0))) as c:
        yield c


@pytest.fixture(scope="module")
def truth(world: World) -> dict[str, Any]:
    """Brute force: every image of the collection embedded with trainer.features directly."""
    with world.factory() as session:
        paths, items = dataset_items(session, world.storage, world.dataset_id)
        model = session.get(Model, world.model_id)
        assert model is not None
        model_path = world.data_dir / model.path
    encoder, meta = load_model(model_path)
    transform = eval_transform(meta["height"], meta["width"], meta["mean"], meta["std"])
    dataset = ImageDataset(world.storage.images_dir, paths, transform)
    feats = extract_features(encoder, dataset, torch.device("cpu")).numpy()
    return {
        "paths": paths,
        "items": items,
        "features": feats,
        "encoder": encoder,
        "transform": transform,
    }


def _image_bytes(world: World, truth: dict[str, Any], row: int) -> bytes:
    return (world.storage.images_dir / truth["paths"][row]).read_bytes()


def _search(client: TestClient, files: list[bytes] | None = None, **form: Any) -> Any:
    data = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in form.items()}
    parts = [("image", (f"q{i}.jpg", b, "image/jpeg")) for i, b in enumerate(files or [])]
    return client.post("/search", data=data, files=parts or None)


def _expected(
    truth: dict[str, Any], row: int, k: int, mask: np.ndarray | None = None
) -> list[tuple[int, float]]:
    scores = truth["features"] @ truth["features"][row]
    allowed = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    order = allowed[np.argsort(-scores[allowed], kind="stable")][:k]
    return [(int(truth["items"][r, 1]), float(scores[r])) for r in order]


def _same_ranking(got: list[dict[str, Any]], want: list[tuple[int, float]]) -> None:
    assert len(got) == len(want)
    assert np.allclose([h["score"] for h in got], [s for _, s in want], atol=1e-4)
    # ties aside, the same images in the same order
    for hit, (image_id, score) in zip(got, want, strict=True):
        if hit["image_id"] != image_id:
            assert abs(hit["score"] - score) < 1e-4


# --------------------------------------------------------------------------------------
# indexes


def test_index_built_and_reloaded(world: World, client: TestClient, truth: dict[str, Any]) -> None:
    body = client.get(f"/indexes/{world.index_id}").json()
    n = len(truth["paths"])
    assert body["status"] == "ready" and body["type"] == "flat"
    assert body["size"] == n and body["dim"] == 1280 and body["error"] is None
    assert body["build_seconds"] >= 0 and body["model_id"] == world.model_id
    folder = world.storage.index_dir(world.index_id)
    loaded = LoadedIndex.load(world.index_id, folder)
    assert loaded.index.size == n  # type: ignore[attr-defined]
    assert np.array_equal(loaded.items, truth["items"])
    assert np.allclose(loaded.features, truth["features"], atol=1e-5)
    scores, ids = loaded.index.search(truth["features"][:3], 5)  # type: ignore[attr-defined]
    assert list(ids[:, 0]) == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-4)
    # items: dataset, split codes and labels stored per vector
    assert set(loaded.items[:, 2]) == {world.dataset_id}
    assert set(loaded.items[:, 3]) <= set(SPLIT_CODES.values())
    assert NO_LABEL not in loaded.items[:, 5]
    listing = client.get("/indexes", params={"model_id": world.model_id}).json()
    assert world.index_id in [i["id"] for i in listing["items"]]
    assert client.get("/indexes", params={"dataset_id": world.other_dataset_id}).json()[
        "total"
    ] == sum(1 for i in listing["items"] if i["dataset_id"] == world.other_dataset_id)
    assert client.get("/indexes/999999").status_code == 404


def _build_index(client: TestClient, model_id: int, dataset_id: int) -> dict[str, Any]:
    """POST /indexes and wait for the embedded worker to finish it."""
    response = client.post("/indexes", json={"model_id": model_id, "dataset_id": dataset_id})
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("building", "ready")
    for _ in range(600):
        body = client.get(f"/indexes/{response.json()['id']}").json()
        if body["status"] != "building":
            break
        time.sleep(0.05)
    return body


def test_post_index_runs_on_the_embedded_worker_and_delete(world: World) -> None:
    settings = world.settings(poll_interval_s=0.05)
    with TestClient(create_app(settings, dispatcher=EmbeddedWorker(settings))) as client:
        body = _build_index(client, world.model_id, world.other_dataset_id)
        index_id = body["id"]
        assert body["status"] == "ready", body
        assert world.storage.index_dir(index_id).is_dir()
        listing = client.get("/indexes", params={"dataset_id": world.other_dataset_id}).json()
        assert [i["id"] for i in listing["items"]] == [index_id]
        assert client.delete(f"/indexes/{index_id}").status_code == 204
        assert not world.storage.index_dir(index_id).exists()
        assert client.get(f"/indexes/{index_id}").status_code == 404
        assert client.delete(f"/indexes/{index_id}").status_code == 404
        bad = client.post("/indexes", json={"model_id": 999, "dataset_id": world.dataset_id})
        assert bad.status_code == 404
        bad = client.post("/indexes", json={"model_id": world.model_id, "dataset_id": 999})
        assert bad.status_code == 404
        assert client.post("/indexes", json={"model_id": 0, "dataset_id": 1}).status_code == 422


def test_search_never_serves_a_deleted_index_whose_id_came_back(world: World) -> None:
    """Another process deletes the newest index; SQLite hands its id to the next one. The
    API's cached copy of the old index must not answer for the new one."""
    settings = world.settings(poll_interval_s=0.05)
    with TestClient(create_app(settings, dispatcher=EmbeddedWorker(settings))) as client:
        old = _build_index(client, world.model_id, world.other_dataset_id)
        hits = _search(client, image_id=1, index_id=old["id"]).json()["results"][0]
        assert {h["dataset_id"] for h in hits} == {world.other_dataset_id}
        with world.factory() as session:  # what another API process's DELETE does
            session.delete(session.get(SearchIndex, old["id"]))
            session.commit()
        shutil.rmtree(world.storage.index_dir(old["id"]))
        new = _build_index(client, world.model_id, world.dataset_id)
        assert new["id"] == old["id"] and new["status"] == "ready"
        hits = _search(client, image_id=1, index_id=new["id"]).json()["results"][0]
        assert {h["dataset_id"] for h in hits} == {world.dataset_id}
        assert client.delete(f"/indexes/{new['id']}").status_code == 204  # module-wide world


def test_index_cache_is_bounded_by_bytes(world: World) -> None:
    folder = world.storage.index_dir(world.index_id)
    one = LoadedIndex.load(world.index_id, folder).nbytes
    cache = IndexCache(max_bytes=one)  # room for one
    first = cache.get_index(world.index_id, folder)
    assert cache.get_index(world.index_id, folder) is first and cache.total_bytes == one
    cache.get_index(-1, folder)  # same files under another key
    assert world.index_id not in cache and -1 in cache and cache.total_bytes == one


# --------------------------------------------------------------------------------------
# search


def test_search_equals_brute_force_cosine(
    world: World, client: TestClient, truth: dict[str, Any]
) -> None:
    rows = [0, 5, 11]
    n = len(truth["paths"])
    response = _search(
        client, [_image_bytes(world, truth, r) for r in rows], model_id=world.model_id, top_k=n
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == world.model_id and body["index_id"] == world.index_id
    assert len(body["results"]) == len(rows)
    for row, got in zip(rows, body["results"], strict=True):
        _same_ranking(got, _expected(truth, row, n))
        assert got[0]["image_id"] == int(truth["items"][row, 1])
        assert got[0]["url"] == f"/images/{got[0]['image_id']}"
        assert got[0]["dataset_id"] == world.dataset_id
    # default top_k is 10; index_id alone works too
    response = _search(client, [_image_bytes(world, truth, 0)], index_id=world.index_id)
    assert len(response.json()["results"][0]) == 10


def test_search_by_stored_image_id(world: World, client: TestClient, truth: dict[str, Any]) -> None:
    image_id = int(truth["items"][3, 1])
    by_id = _search(client, image_id=image_id, model_id=world.model_id, top_k=7).json()
    upload = _search(client, [_image_bytes(world, truth, 3)], model_id=world.model_id, top_k=7)
    assert by_id["results"] == upload.json()["results"]
    _same_ranking(by_id["results"][0], _expected(truth, 3, 7))


@pytest.mark.parametrize(
    "filters",
    [
        {"split": "gallery"},
        {"split": "query"},
        {"camid": 1},
        {"exclude_camid": 0},
        {"split": "gallery", "exclude_camid": 2},
        {"dataset_id": "OWN"},
        {"dataset_id": "OTHER"},
        {"min_score": 0.99},
    ],
)
def test_search_filters(
    world: World, client: TestClient, truth: dict[str, Any], filters: dict[str, Any]
) -> None:
    items = truth["items"]
    filters = {
        k: {"OWN": world.dataset_id, "OTHER": world.other_dataset_id}.get(v, v)
        for k, v in filters.items()
    }
    mask = np.ones(len(items), dtype=bool)
    if "split" in filters:
        mask &= items[:, 3] == SPLIT_CODES[filters["split"]]
    if "camid" in filters:
        mask &= items[:, 5] == filters["camid"]
    if "exclude_camid" in filters:
        mask &= items[:, 5] != filters["exclude_camid"]
    if "dataset_id" in filters:
        mask &= items[:, 2] == filters["dataset_id"]
    k = 6
    response = _search(
        client, [_image_bytes(world, truth, 2)], model_id=world.model_id, top_k=k, **filters
    )
    assert response.status_code == 200, response.text
    got = response.json()["results"][0]
    want = _expected(truth, 2, k, mask)
    if "min_score" in filters:
        want = [w for w in want if w[1] >= filters["min_score"]]
        assert all(h["score"] >= filters["min_score"] for h in got)
    _same_ranking(got, want)
    assert len(got) == min(k, len(want))
    split_code = {v: k for k, v in SPLIT_CODES.items()}
    for hit in got:
        if "split" in filters:
            assert hit["split"] == filters["split"]
        if "camid" in filters:
            assert hit["camid"] == filters["camid"]
        if "exclude_camid" in filters:
            assert hit["camid"] != filters["exclude_camid"]
        assert hit["split"] in split_code.values()


def test_filtered_search_guarantees_top_k_via_exact_fallback(
    world: World, truth: dict[str, Any]
) -> None:
    """A filter so selective that the over-fetch misses matches still yields top_k."""
    from app.search.query import Filters, filtered_search

    loaded = LoadedIndex.load(world.index_id, world.storage.index_dir(world.index_id))
    query = truth["features"][:1]
    # keep only the 3 rows least similar to the query: never in an over-fetched top list
    worst = np.argsort(truth["features"] @ query[0])[:3]
    loaded.items = loaded.items.copy()
    loaded.items[:, 5] = 99
    loaded.items[worst, 5] = 7
    hits = filtered_search(loaded, query, 3, Filters(camid=7), nprobe=1)[0]
    assert sorted(r for r, _ in hits) == sorted(int(w) for w in worst)


def _oracle(scores: np.ndarray, truth: dict[str, Any], k: int, by_camera: bool = False):
    order = np.argsort(-scores, kind="stable")
    if by_camera:
        _, first = np.unique(truth["items"][order, 5], return_index=True)
        order = order[np.sort(first)]
    return [(int(truth["items"][r, 1]), float(scores[r])) for r in order[:k]]


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_a_tracklet_gets_one_list(
    world: World, client: TestClient, truth: dict[str, Any], aggregate: str
) -> None:
    rows = [1, 4, 9]  # three frames of "one person"
    feats = truth["features"][rows]
    if aggregate == "mean":
        mean = feats.mean(axis=0)
        scores = truth["features"] @ (mean / np.linalg.norm(mean))
    else:
        scores = (truth["features"] @ feats.T).max(axis=1)
    files = [_image_bytes(world, truth, r) for r in rows]
    got = _search(client, files, model_id=world.model_id, top_k=8, aggregate=aggregate)
    assert got.status_code == 200, got.text
    (result,) = got.json()["results"]
    _same_ranking(result, _oracle(scores, truth, 8))
    by_ids = _search(  # stored images as the tracklet: image_id repeated
        client,
        model_id=world.model_id,
        top_k=8,
        aggregate=aggregate,
        image_id=[int(truth["items"][r, 1]) for r in rows],
    )
    assert by_ids.status_code == 200, by_ids.text
    assert [h["image_id"] for h in by_ids.json()["results"][0]] == [h["image_id"] for h in result]


def test_group_by_camera_keeps_the_best_hit_of_each(
    world: World, client: TestClient, truth: dict[str, Any]
) -> None:
    scores = truth["features"] @ truth["features"][2]
    mask = truth["items"][:, 3] == SPLIT_CODES["gallery"]
    got = _search(
        client,
        [_image_bytes(world, truth, 2)],
        model_id=world.model_id,
        top_k=10,
        group_by="camid",
        split="gallery",
    )
    assert got.status_code == 200, got.text
    (result,) = got.json()["results"]
    want = _oracle(np.where(mask, scores, -np.inf), truth, 10, by_camera=True)
    want = [w for w in want if np.isfinite(w[1])]
    assert len({h["camid"] for h in result}) == len(result) == 3  # one hit per camera
    _same_ranking(result, want)
    bad = _search(client, [_image_bytes(world, truth, 2)], model_id=1, group_by="pid")
    assert bad.status_code == 422 and "group_by" in bad.text


def test_rerank_reorders_the_shortlist_as_trainer_does(
    world: World, client: TestClient, truth: dict[str, Any]
) -> None:
    from trainer.rerank import rerank_distances

    features = truth["features"]
    query = features[7]
    short = np.argsort(-(features @ query), kind="stable")[:100]
    ids = truth["items"][:, 1].tolist()
    distances = rerank_distances(query, features[short])
    final = {ids[r]: d for r, d in zip(short, distances, strict=True)}
    cosine = dict(zip(ids, features @ query, strict=True))
    got = _search(
        client, [_image_bytes(world, truth, 7)], model_id=world.model_id, top_k=10, rerank="true"
    )
    assert got.status_code == 200, got.text
    result = got.json()["results"][0]
    assert len(result) == 10
    mine = [final[h["image_id"]] for h in result]  # ordered by the re-ranked distance
    assert all(b >= a - 1e-5 for a, b in pairwise(mine))
    assert mine[-1] <= sorted(final.values())[9] + 1e-5  # and the ten closest (ties aside)
    assert np.allclose([h["score"] for h in result], [cosine[h["image_id"]] for h in result],
                       atol=1e-4)  # fmt: skip
    bad = _search(
        client, [_image_bytes(world, truth, 7)] * 2, model_id=1, rerank="true", aggregate="max"
    )
    assert bad.status_code == 422 and "rerank" in bad.json()["detail"]


@pytest.mark.parametrize("mode", [{}, {"group_by": "camid"}, {"rerank": "true"}])
def test_offset_pages_through_the_ranking(
    world: World, client: TestClient, truth: dict[str, Any], mode: dict[str, str]
) -> None:
    query = [_image_bytes(world, truth, 5)]
    whole = _search(client, query, model_id=world.model_id, top_k=7, **mode).json()["results"][0]
    page = _search(client, query, model_id=world.model_id, top_k=4, offset=3, **mode)
    assert page.status_code == 200, page.text
    assert page.json()["results"][0] == whole[3:7]
    beyond = _search(client, query, model_id=world.model_id, offset=10_000, **mode)
    assert beyond.status_code == 200 and beyond.json()["results"] == [[]]
    too_far = _search(client, query, model_id=world.model_id, offset=10_001)
    assert too_far.status_code == 422 and "offset" in too_far.text


@pytest.mark.parametrize("top_k", [0, 1001, -3])
def test_top_k_out_of_range_is_422(world: World, client: TestClient, top_k: int) -> None:
    response = _search(client, image_id=1, model_id=world.model_id, top_k=top_k)
    assert response.status_code == 422 and "top_k" in response.json()["detail"]


def test_search_errors(world: World, client: TestClient, truth: dict[str, Any]) -> None:
    img = _image_bytes(world, truth, 0)
    assert _search(client, [img], model_id=999).status_code == 404
    assert _search(client, [img], index_id=999).status_code == 404
    assert _search(client, image_id=999999, model_id=world.model_id).status_code == 404
    not_image = _search(client, [b"this is not an image"], model_id=world.model_id)
    assert not_image.status_code == 415, not_image.text
    # neither or both of image / image_id; no model/index; bad split
    assert _search(client, model_id=world.model_id).status_code == 422
    assert _search(client, [img], image_id=1, model_id=world.model_id).status_code == 422
    assert _search(client, [img]).status_code == 422
    assert _search(client, [img], model_id=world.model_id, split="train2").status_code == 422
    # a model whose only index is still building: 409, by model and by index
    model_id = _add_model(world.factory, world.storage, world.dataset_id, "m-building")
    with world.factory() as session:
        building = create_index(session, model_id, world.dataset_id).id
    assert _search(client, [img], model_id=model_id).status_code == 409
    assert _search(client, [img], index_id=building).status_code == 409
    # a ready row whose files are gone: 404, not a 500
    with world.factory() as session:
        ghost = create_index(session, world.model_id, world.dataset_id)
        ghost.status = "ready"
        session.commit()
        ghost_id = ghost.id
    assert _search(client, [img], index_id=ghost_id).status_code == 404
    with world.factory() as session:
        session.delete(session.get(SearchIndex, ghost_id))
        session.commit()
    # a model without any index: 404
    bare = _add_model(world.factory, world.storage, world.dataset_id, "m-bare")
    assert _search(client, [img], model_id=bare).status_code == 404


def test_image_too_large_is_413(world: World, truth: dict[str, Any]) -> None:
    img = _image_bytes(world, truth, 0)
    settings = world.settings(search_max_image_bytes=len(img) - 1)
    with TestClient(create_app(settings)) as client:
        response = _search(client, [img], model_id=world.model_id)
        assert response.status_code == 413, response.text


def test_concurrent_queries_share_forwards(world: World, truth: dict[str, Any]) -> None:
    with world.factory() as session:
        model = session.get(Model, world.model_id)
        assert model is not None
        loaded = LoadedModel.load(model.id, world.data_dir / model.path)
    tensors = [loaded.transform(load_rgb(world.storage.images_dir / p)) for p in truth["paths"][:8]]

    async def go() -> tuple[list[np.ndarray], int]:
        batcher = MicroBatcher(loaded, max_batch=32, wait_s=0.05)
        outs = await asyncio.gather(*(batcher.embed([t]) for t in tensors))
        return [o[0] for o in outs], batcher.forwards

    rows, forwards = asyncio.run(go())
    assert forwards == 1
    assert np.allclose(np.stack(rows), truth["features"][:8], atol=1e-4)


def test_lone_query_never_waits_and_late_ones_share_the_next_forward(
    world: World, truth: dict[str, Any]
) -> None:
    """An idle batcher starts at once (however long ``wait_s``); queries arriving during that
    forward go together in the next one."""
    with world.factory() as session:
        model = session.get(Model, world.model_id)
        assert model is not None
        loaded = LoadedModel.load(model.id, world.data_dir / model.path)
    tensors = [loaded.transform(load_rgb(world.storage.images_dir / p)) for p in truth["paths"][:5]]

    async def go() -> tuple[float, int]:
        batcher = MicroBatcher(loaded, max_batch=32, wait_s=30.0)
        started = time.perf_counter()
        await batcher.embed(tensors[:1])
        lone = time.perf_counter() - started
        first = asyncio.ensure_future(batcher.embed(tensors[:1]))
        await asyncio.sleep(0)  # the first forward is now running
        late = [batcher.embed([t]) for t in tensors[1:]]
        await asyncio.gather(first, *late)
        return lone, batcher.forwards

    lone, forwards = asyncio.run(go())
    assert lone < 10.0  # did not sit out wait_s
    assert forwards == 3  # the lone one, the next one, then the four late ones together


def test_concurrent_searches_share_one_forward_and_one_index_search(
    world: World, truth: dict[str, Any]
) -> None:
    """Queries of one micro-batch with the same index and parameters are searched in a single
    FAISS call, with the results of searching each alone; other filters get their own."""
    from app.search.query import Filters, filtered_search

    with world.factory() as session:
        model = session.get(Model, world.model_id)
        assert model is not None
        loaded = LoadedModel.load(model.id, world.data_dir / model.path)
    index = LoadedIndex.load(world.index_id, world.storage.index_dir(world.index_id))
    tensors = [loaded.transform(load_rgb(world.storage.images_dir / p)) for p in truth["paths"][:6]]
    plain, gallery = Filters(), Filters(split="gallery")

    async def go() -> tuple[list[Any], int, int]:
        batcher = MicroBatcher(loaded, max_batch=32, wait_s=0.05)
        outs = await asyncio.gather(
            *(
                batcher.search([t], index, 5, plain if i < 4 else gallery, 1)
                for i, t in enumerate(tensors)
            )
        )
        return [o[0] for o in outs], batcher.forwards, batcher.searches

    hits, forwards, searches = asyncio.run(go())
    assert forwards == 1 and searches == 2
    for i, got in enumerate(hits):
        want = filtered_search(
            index, truth["features"][i : i + 1], 5, plain if i < 4 else gallery, 1
        )
        assert [r for r, _ in got] == [r for r, _ in want[0]]
        assert np.allclose([s for _, s in got], [s for _, s in want[0]], atol=1e-4)


def test_evicted_models_are_freed_with_their_batchers(world: World) -> None:
    """REID_SEARCH_MODELS_CACHED bounds memory: a model evicted from the cache takes its
    micro-batchers (which hold it) along, so nothing keeps its encoder alive."""
    ids = [
        _add_model(world.factory, world.storage, world.dataset_id, f"evict{i}") for i in range(3)
    ]
    settings = world.settings(search_models_cached=1, search_batch_wait_ms=1.0)
    with world.factory() as session:
        indexes = [create_index(session, m, world.dataset_id).id for m in ids]
    for index_id in indexes:
        assert build_index(settings, world.factory, index_id, "test-worker") == "ready"
    encoders = []
    with TestClient(create_app(settings)) as client:
        for model_id in ids:
            response = _search(client, image_id=1, model_id=model_id, top_k=3)
            assert response.status_code == 200, response.text
            [loaded] = client.app.state.model_cache.values()
            assert loaded.model_id == model_id and loaded.batchers
            encoders.append(weakref.ref(loaded.embedder.encoder))
            del loaded
        gc.collect()
        assert [ref() is None for ref in encoders] == [True, True, False]
        for index_id in indexes:  # module-wide world
            assert client.delete(f"/indexes/{index_id}").status_code == 204


def test_search_quality_reproduces_evaluate_map(
    world: World, client: TestClient, truth: dict[str, Any]
) -> None:
    """Every query image through POST /search against the gallery split gives the mAP that
    ``reid evaluate`` (trainer.features.evaluate_retrieval) computes, within 0.1 points."""
    from trainer.data.readers import Item

    items, paths = truth["items"], truth["paths"]
    query_rows = np.flatnonzero(items[:, 3] == SPLIT_CODES["query"])
    gallery_rows = np.flatnonzero(items[:, 3] == SPLIT_CODES["gallery"])
    column = {int(items[r, 1]): j for j, r in enumerate(gallery_rows)}
    distmat = np.full((len(query_rows), len(gallery_rows)), np.inf)
    for i, row in enumerate(query_rows):
        response = _search(
            client,
            image_id=int(items[row, 1]),
            model_id=world.model_id,
            split="gallery",
            top_k=len(gallery_rows),
        )
        for hit in response.json()["results"][0]:
            distmat[i, column[hit["image_id"]]] = 1.0 - hit["score"]
    assert np.isfinite(distmat).all()
    got = rank_metrics(
        distmat,
        items[query_rows, 4],
        items[gallery_rows, 4],
        items[query_rows, 5],
        items[gallery_rows, 5],
    )

    def item(r: int) -> Item:
        return Item(path=paths[r], pid=int(items[r, 4]), camid=int(items[r, 5]), split="x")

    want = evaluate_retrieval(
        truth["encoder"],
        world.storage.images_dir,
        [item(r) for r in query_rows],
        [item(r) for r in gallery_rows],
        truth["transform"],
        torch.device("cpu"),
    )
    assert abs(got["mAP"] - want["mAP"]) * 100 < 0.1, (got, want)


# --------------------------------------------------------------------------------------
# an adapted model: each collection through its own DSBN branch, flip-averaged embeddings


def test_source_collection_is_embedded_and_queried_with_the_source_branch(world: World) -> None:
    from trainer.embedder import Embedder

    with world.factory() as session:
        job = Job(
            status="succeeded",
            target_dataset_id=world.other_dataset_id,
            source_dataset_id=world.dataset_id,
            config={},
            request_hash="y" * 64,
        )
        session.add(job)
        session.flush()
        model = add_untrained_model(
            session, world.storage, job.id, "uda", H, W, dsbn=True, flip=True
        )
        session.commit()
        model_id, model_path = model.id, world.data_dir / model.path
        indexes = {
            d: create_index(session, model_id, d).id
            for d in (world.dataset_id, world.other_dataset_id)
        }
    settings = world.settings()
    for index_id in indexes.values():
        assert build_index(settings, world.factory, index_id, "test-worker") == "ready"
    with TestClient(create_app(world.settings(search_batch_wait_ms=1.0))) as client:
        for dataset_id, domain in (
            (world.dataset_id, "source"),
            (world.other_dataset_id, "target"),
        ):
            with world.factory() as session:
                paths, items = dataset_items(session, world.storage, dataset_id)
            embedder = Embedder.load(model_path, "cpu", domain)
            assert embedder.flip
            want = embedder.features(world.storage.images_dir, paths).numpy()
            stored = np.load(world.storage.index_dir(indexes[dataset_id]) / "features.npy")
            assert np.allclose(stored, want, atol=1e-5), domain
            other = Embedder.load(
                model_path, "cpu", {"source": "target", "target": "source"}[domain]
            )
            assert not np.allclose(
                other.features(world.storage.images_dir, paths[:3]).numpy(), want[:3], atol=1e-3
            )
            response = _search(
                client, image_id=int(items[0, 1]), index_id=indexes[dataset_id], top_k=len(items)
            )
            assert response.status_code == 200, response.text
            # the query's own vector scores 1 only if the query went through the same branch
            own = [h for h in response.json()["results"][0] if h["image_id"] == int(items[0, 1])]
            assert own and own[0]["score"] > 0.9999, domain


# --------------------------------------------------------------------------------------
# the job's indexing phase


def test_job_ends_with_an_indexing_phase_and_a_ready_index(world: World) -> None:
    from app.jobs.state import JobInput, create_job
    from worker.runner import execute_job

    tiny = {
        "arch": "mobilenet_v2",
        "pretrained": "none",
        "epochs": 1,
        "iters": 1,
        "batch_size": 8,
        "num_instances": 4,
        "k1": 8,
        "k2": 4,
        "height": H,
        "width": W,
        "eval_step": 1,
        "workers": 0,
        "amp": False,
        "device": "cpu",
    }
    settings = world.settings(heartbeat_interval_s=0.2, progress_interval_s=0.0)
    job, _ = create_job(
        world.factory,
        JobInput(
            target_dataset_id=world.other_dataset_id,
            source_dataset_id=world.dataset_id,
            eval_dataset_id=None,
            config=tiny,
        ),
        None,
    )
    job_id = job.id
    outcome = execute_job(settings, world.factory, job_id, worker="t")
    assert outcome.status == "succeeded", outcome
    with world.factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.phase is None
        index = session.scalar(select(SearchIndex).where(SearchIndex.job_id == job_id))
        assert index is not None and index.status == "ready", index
        assert index.model_id == job.model_id and index.dataset_id == world.other_dataset_id
        model_id = job.model_id
    with TestClient(create_app(settings)) as client:
        with world.factory() as session:
            _, items = dataset_items(session, world.storage, world.other_dataset_id)
        response = _search(client, image_id=int(items[0, 1]), model_id=model_id, top_k=len(items))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["index_id"] == index.id and len(body["results"][0]) == len(items)
        # the query's own vector scores 1 (a one-iteration model may tie it with others)
        own = [h for h in body["results"][0] if h["image_id"] == int(items[0, 1])]
        assert own and own[0]["score"] > 0.999


# --------------------------------------------------------------------------------------
# GPU


@pytest.mark.skipif(
    not torch.cuda.is_available() or gpu_count() == 0, reason="needs a GPU (faiss-gpu + CUDA)"
)
def test_gpu_built_index_matches_cpu(truth: dict[str, Any]) -> None:
    feats = truth["features"]
    ids = np.arange(len(feats))
    cpu = FeatureIndex.build(feats, ids, use_gpu=False)
    gpu = FeatureIndex.build(feats, ids, use_gpu=True)
    s1, i1 = cpu.search(feats[:4], 5)
    s2, i2 = gpu.search(feats[:4], 5)
    assert np.allclose(s1, s2, atol=1e-4) and (i1[:, 0] == i2[:, 0]).all()


def test_deleting_a_collection_removes_its_index_files(world: World, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "extra", 4, 2, "indoor", 7, height=H, width=W, images_per_camera=2)
    settings = world.settings()
    with TestClient(create_app(settings)) as client:
        files = {"file": ("extra.zip", zip_tree(tmp_path / "extra"), "application/zip")}
        response = client.post("/datasets", data={"name": "extra", "labeled": "true"}, files=files)
        assert response.status_code == 201, response.text
        dataset_id = response.json()["id"]
        with world.factory() as session:
            index_id = create_index(session, world.model_id, dataset_id).id
        assert build_index(settings, world.factory, index_id, "test-worker") == "ready"
        assert world.storage.index_dir(index_id).is_dir()
        assert client.delete(f"/datasets/{dataset_id}").status_code == 204
        assert not world.storage.index_dir(index_id).exists()
        assert client.get(f"/indexes/{index_id}").status_code == 404
