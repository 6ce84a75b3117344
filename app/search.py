"""Query embedding and ranked retrieval for ``POST /search``.

* Encoders are loaded in a thread (never on the event loop) and kept in a small LRU.
* Queries are preprocessed with exactly the model's test transform (``eval_transform`` with
  the model file's size and normalisation) and embedded through the same DSBN branch the
  index was built with, then L2-normalised: scores are cosine similarities.
* Concurrent requests share forwards: :class:`MicroBatcher` collects queries for up to
  ``search_batch_wait_ms`` or ``search_batch_size`` queries, runs one forward in a thread and
  fans the rows out.
* Filters are applied to the index's items array: FAISS is over-fetched and filtered; when
  that leaves fewer than ``top_k`` matches while more exist, the filtered subset is scanned
  exactly through the stored feature matrix, so ``top_k`` results are guaranteed.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.indexes import (
    COL_CAMID,
    COL_DATASET,
    COL_SPLIT,
    NO_LABEL,
    SPLIT_CODES,
    LoadedIndex,
)

__all__ = [
    "Filters",
    "LoadedModel",
    "MicroBatcher",
    "ModelCache",
    "filtered_search",
]


@dataclass
class LoadedModel:
    """An encoder in eval mode with its test transform; forwards are serialised."""

    model_id: int
    encoder: Any
    transform: Callable[[Any], Any]
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, model_id: int, path: Path) -> LoadedModel:
        import torch

        from trainer.data.transforms import eval_transform
        from trainer.models.export import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder, meta = load_model(path, device)
        transform = eval_transform(meta["height"], meta["width"], meta["mean"], meta["std"])
        return cls(model_id, encoder, transform, device)

    def embed(self, batch: Any) -> np.ndarray:
        """N × 3 × H × W tensor → N × d unit rows (target DSBN branch, like the index)."""
        import torch

        from trainer.models.dsbn import dsbn_domain

        with self.lock, torch.inference_mode(), dsbn_domain(self.encoder, "target"):
            feats = self.encoder(batch.to(self.device))
            return torch.nn.functional.normalize(feats.float(), dim=1).cpu().numpy()


class ModelCache:
    """The last few loaded encoders (LRU by count; an encoder is tens of MB)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, model_id: int, path: Path) -> LoadedModel:
        """Blocking: call it from a thread."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                self._entries.move_to_end(model_id)
                return entry
            gate = self._loading.setdefault(model_id, threading.Lock())
        with gate:
            with self._lock:
                if model_id in self._entries:
                    return self._entries[model_id]
            entry = LoadedModel.load(model_id, path)
            with self._lock:
                self._entries[model_id] = entry
                self._loading.pop(model_id, None)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            return entry


class MicroBatcher:
    """Group concurrent queries of one model into single forwards.

    A query waits at most ``wait_s`` for company (or until ``max_batch`` are pending); the
    forward runs in a worker thread, so the event loop keeps accepting requests meanwhile.
    Bound to the event loop it was first used on.
    """

    def __init__(self, model: LoadedModel, max_batch: int, wait_s: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._pending: list[tuple[Any, asyncio.Future[np.ndarray]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a forward is running
        self.forwards = 0  # for tests and benchmarks: how many forwards ran

    async def embed(self, tensors: list[Any]) -> np.ndarray:
        """Embeddings of ``tensors`` (each 3 × H × W), in order."""
        loop = asyncio.get_running_loop()
        futures = []
        for tensor in tensors:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._pending.append((tensor, future))
            futures.append(future)
        if len(self._pending) >= self.max_batch or self.wait_s <= 0:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        rows = await asyncio.gather(*futures)
        return np.stack(rows)

    def _flush(self) -> None:
        """Start one forward with what is pending, unless one is running: queries arriving
        during a forward wait for it and then go together (the batch grows with the load)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._busy = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future[np.ndarray]]]) -> None:
        import torch

        try:
            stacked = torch.stack([t for t, _ in batch])
            self.forwards += 1
            feats = await asyncio.to_thread(self.model.embed, stacked)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for row, (_, future) in zip(feats, batch, strict=True):
                if not future.done():
                    future.set_result(row)
        finally:
            self._busy = False
            self._flush()


@dataclass
class Filters:
    """Optional result filters of ``POST /search``."""

    dataset_id: int | None = None
    split: str | None = None
    camid: int | None = None
    exclude_camid: int | None = None
    min_score: float | None = None

    def mask(self, items: np.ndarray) -> np.ndarray | None:
        """Boolean mask of the allowed rows, or None when every row is allowed."""
        mask = np.ones(len(items), dtype=bool)
        if self.dataset_id is not None:
            mask &= items[:, COL_DATASET] == self.dataset_id
        if self.split is not None:
            mask &= items[:, COL_SPLIT] == SPLIT_CODES[self.split]
        if self.camid is not None:
            mask &= items[:, COL_CAMID] == self.camid
        if self.exclude_camid is not None:
            mask &= items[:, COL_CAMID] != self.exclude_camid
        return None if mask.all() else mask


def _exact(features: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int):
    """Exact top-k of ``query`` among ``rows`` of the feature matrix."""
    scores = np.asarray(features[rows], dtype=np.float32) @ query
    k = min(k, len(rows))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top], rows[top]


def filtered_search(
    loaded: LoadedIndex, queries: np.ndarray, k: int, filters: Filters, nprobe: int
) -> list[list[tuple[int, float]]]:
    """Per query, up to ``k`` ``(row, score)`` pairs, best first, passing ``filters``."""
    index = loaded.index
    size = index.size  # type: ignore[attr-defined]
    mask = filters.mask(loaded.items)
    allowed = size if mask is None else int(mask.sum())
    out: list[list[tuple[int, float]]] = []
    if allowed == 0 or size == 0:
        return [[] for _ in range(len(queries))]
    want = min(k, allowed)
    fetch = want if mask is None else min(size, math.ceil(want * size / allowed * 2) + 16)
    scores, rows = index.search(queries, fetch, nprobe)  # type: ignore[attr-defined]
    allowed_rows: np.ndarray | None = None
    for qi in range(len(queries)):
        hits = [
            (int(r), float(s))
            for r, s in zip(rows[qi], scores[qi], strict=True)
            if r >= 0 and (mask is None or mask[r])
        ][:want]
        if len(hits) < want:  # over-fetch was not enough (or IVF missed some): exact scan
            if allowed_rows is None:
                allowed_rows = np.arange(size) if mask is None else np.flatnonzero(mask)
            s, r = _exact(loaded.features, allowed_rows, queries[qi], want)
            hits = [(int(a), float(b)) for a, b in zip(r, s, strict=True)]
        if filters.min_score is not None:
            hits = [h for h in hits if h[1] >= filters.min_score]
        out.append(hits)
    return out


def label(value: int) -> int | None:
    return None if value == NO_LABEL else int(value)
