"""The demo's searches: a few target queries against the target gallery, thumbnails inlined.

Queries are stored images (``image_id``: "find this person"), one per identity, spread over
the identities; each search excludes the query's own camera (Market-1501 protocol) so a hit
is a true re-identification across cameras. Thumbnails come from ``GET /images/{id}`` and are
embedded as ``data:`` URIs, so the report is one self-contained file.
"""

from __future__ import annotations

import base64
from typing import Any

from demo.client import ApiClient
from demo.report import Hit, QueryResult

__all__ = ["data_uri", "pick_queries", "search_queries"]


def data_uri(data: bytes) -> str:
    media = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


def pick_queries(client: ApiClient, dataset_id: int, count: int) -> list[dict]:
    """``count`` query images of different people, spread over the identities and cameras."""
    items: list[dict] = []
    offset = 0
    while True:
        page = client.get(f"/datasets/{dataset_id}/images", split="query", limit=500, offset=offset)
        items.extend(page["items"])
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            break
    by_pid: dict[Any, list[dict]] = {}
    for item in items:
        by_pid.setdefault(item["pid"], []).append(item)
    pids = sorted(by_pid, key=lambda p: (p is None, p or 0))
    if len(pids) > count:
        step = len(pids) / count
        pids = [pids[int(i * step)] for i in range(count)]
    cameras = sorted({i["camid"] for i in items if i["camid"] is not None})
    picked = []
    for k, pid in enumerate(pids):
        wanted = cameras[k % len(cameras)] if cameras else None
        options = by_pid[pid]
        picked.append(next((i for i in options if i["camid"] == wanted), options[0]))
    return picked


def search_queries(
    client: ApiClient, model_id: int, dataset_id: int, queries: list[dict], top_k: int
) -> list[QueryResult]:
    """Each query against the target gallery, its own camera excluded (Market protocol)."""
    images: dict[int, str] = {}

    def uri(image_id: int) -> str:
        if image_id not in images:
            images[image_id] = data_uri(client.request("GET", f"/images/{image_id}", raw=True))
        return images[image_id]

    results = []
    for query in queries:
        answer = client.post_form(
            "/search",
            {
                "image_id": query["id"],
                "model_id": model_id,
                "top_k": top_k,
                "dataset_id": dataset_id,
                "split": "gallery",
                "exclude_camid": query["camid"],
            },
        )
        hits = [
            Hit(
                rank=rank,
                image_uri=uri(hit["image_id"]),
                score=hit["score"],
                pid=hit["pid"],
                camid=hit["camid"],
                correct=None if query["pid"] is None else hit["pid"] == query["pid"],
            )
            for rank, hit in enumerate(answer["results"][0], start=1)
        ]
        results.append(
            QueryResult(uri(query["id"]), query["pid"], query["camid"], hits, query["id"])
        )
    return results
