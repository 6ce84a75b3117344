"""Query embedding and ranked retrieval for ``POST /search``.

* Encoders are loaded in a thread (never on the event loop) and kept in a small LRU.
* Queries are preprocessed with exactly the model's test transform (``eval_transform`` with
  the model file's size and normalisation) and embedded through the same DSBN branch the
  index was built with, then L2-normalised: scores are cosine similarities.
* Concurrent requests share forwards: :class:`MicroBatcher` starts a forward at once when
  idle and groups the queries that arrive meanwhile (at most ``search_batch_size``) into the
  next one, so a lone query never waits and a loaded server runs few, large forwards.
* Filters are applied to the index's items array, as a mask handed to the index search
  itself (an ID selector inside FAISS, masked scores in the flat scan): ``top_k`` results of a
  narrow filter need no over-fetching. When an IVF search still finds fewer (the probed lists
  hold too few allowed rows) while more exist, the allowed subset is scanned exactly through
  the stored feature matrix, so ``top_k`` results are guaranteed. Rows whose images were
  deleted since the index version was written are masked the same way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.cache import LoadingCache
from app.search.indexes import (
    COL_CAMID,
    COL_CAPTURED,
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
    "exact_search",
    "filtered_search",
    "ranked_exact",
]


@dataclass
class LoadedModel:
    """A model file loaded to embed queries like its index (target branch, same flip);
    forwards are serialised."""

    model_id: int
    embedder: Any  # trainer.embedder.Embedder (imported lazily: torch is heavy)
    domain: str = "target"
    lock: threading.Lock = field(default_factory=threading.Lock)
    # This model's micro-batchers, one per event loop (id): they live and die with the cache
    # entry, so an evicted encoder is freed with them.
    batchers: dict[int, MicroBatcher] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, model_id: int, path: Path, domain: str = "target", engine: str = "auto"
    ) -> LoadedModel:
        import torch

        from trainer.embedder import Embedder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model_id, Embedder.load(path, device, domain, engine), domain)

    @property
    def transform(self) -> Callable[[Any], Any]:
        return self.embedder.transform

    def embed(self, batch: Any) -> np.ndarray:
        """N × 3 × H × W tensor → N × d unit rows."""
        with self.lock:
            return self.embedder.embed(batch).numpy()

    def batcher(self, max_batch: int, wait_s: float) -> MicroBatcher:
        """The batcher for the running event loop (created on first use there)."""
        loop = id(asyncio.get_running_loop())
        if loop not in self.batchers:
            self.batchers[loop] = MicroBatcher(self, max_batch, wait_s)
        return self.batchers[loop]


class ModelCache(LoadingCache[LoadedModel]):
    """The last few loaded encoders (LRU by count; an encoder is tens of MB), one entry per
    (model, DSBN branch): an adapted model embeds its source dataset with the source one.
    ``engine``: what embeds (see ``Settings.inference_engine``)."""

    def __init__(self, capacity: int, engine: str = "auto") -> None:
        super().__init__(capacity)
        self.engine = engine

    def get_model(
        self, model_id: int, path: Path, version: str = "", domain: str = "target"
    ) -> LoadedModel:
        """The loaded encoder (blocking); ``version``: the row's creation time."""
        return self.get(
            (model_id, domain),
            version,
            lambda: LoadedModel.load(model_id, path, domain, self.engine),
        )


REGROUP_FRACTION = 0.2  # of the last forward + search time
REGROUP_MAX_S = 0.1

_Entry = tuple[Any, "asyncio.Future[Any]", "_SearchJob | None"]  # tensor, future, search


class MicroBatcher:
    """Group concurrent queries of one model into single forwards (and single searches).

    An idle batcher starts a forward at once, with every query that arrived in the same
    event-loop iteration; queries arriving during a forward go together in the next one
    (up to ``max_batch``), which starts when the clients just answered are back or after
    ``wait_s`` at least (see :meth:`_regroup`). The forward runs in the compute thread, so
    the event loop keeps accepting requests meanwhile.
    Queries that also want a search (:meth:`search`) are searched in the same thread right
    after the forward, one FAISS call per group of queries sharing an index and parameters
    (a batched search reads the index once for all of them). Bound to the event loop it was
    first used on.
    """

    def __init__(self, model: LoadedModel, max_batch: int, wait_s: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._pending: list[_Entry] = []
        self._timer: asyncio.Handle | None = None
        self._busy = False  # a forward is running
        self._target = 0  # regrouping after a batch: flush once this many are pending
        self._deadline = 0.0  # ... or at this loop time
        self._last_compute_s = 0.0
        self.forwards = 0  # for tests and benchmarks: how many forwards ran
        self.searches = 0  # how many (batched) index searches ran

    async def embed(self, tensors: list[Any]) -> np.ndarray:
        """Embeddings of ``tensors`` (each 3 × H × W), in order."""
        rows = await self._submit(tensors, None)
        return np.stack(rows)

    async def search(
        self, tensors: list[Any], loaded: LoadedIndex, k: int, filters: Filters, nprobe: int
    ) -> list[list[tuple[int, float]]]:
        """:func:`filtered_search` of the embeddings of ``tensors``, one list per tensor.

        ``tensors`` may also be decoded images: the model's transform is then applied in the
        compute thread (torch ops in other threads would start more OpenMP teams, which
        slows every forward on a small machine)."""
        return await self._submit(tensors, _SearchJob(loaded, k, filters, nprobe))

    async def _submit(self, tensors: list[Any], job: _SearchJob | None) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = []
        for tensor in tensors:
            future: asyncio.Future[Any] = loop.create_future()
            self._pending.append((tensor, future, job))
            futures.append(future)
        pending = len(self._pending)
        regrouping = self._target > 0 and loop.time() < self._deadline
        if (
            pending >= self.max_batch
            or self.wait_s <= 0
            or (regrouping and pending >= self._target)
        ):
            self._flush()
        elif self._timer is None and not self._busy:  # a running forward regroups when done
            if regrouping:
                self._timer = loop.call_at(self._deadline, self._flush)
            else:  # idle: go now, with whatever else arrives in this loop iteration
                self._timer = loop.call_soon(self._flush)
        return list(await asyncio.gather(*futures))

    def _flush(self) -> None:
        """Start one forward with what is pending, unless one is running: queries arriving
        during a forward wait for it and then go together (the batch grows with the load)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._target = 0
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._busy = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Entry]) -> None:
        try:
            self.forwards += 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await loop.run_in_executor(_compute_executor(), self._compute, batch)
            self._last_compute_s = loop.time() - started
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for result, (_, future, _) in zip(results, batch, strict=True):
                if future.done():
                    continue
                if isinstance(result, _Raised):
                    future.set_exception(result.exc)
                else:
                    future.set_result(result)
        finally:
            self._busy = False
            self._regroup(len(batch))

    def _regroup(self, answered: int) -> None:
        """After a batch: under steady load the clients just answered are about to come back
        (their responses and next requests take a while to go through). Going on with only
        the queries that came in meanwhile would settle batches into small groups, each
        paying a full forward and index scan; so until as many queries are pending as were
        in flight (or a fraction of the last compute time has passed), wait for them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = len(self._pending)
        target = min(self.max_batch, pending + answered)
        if self.wait_s <= 0 or pending >= target:
            self._flush()
            return
        loop = asyncio.get_running_loop()
        delay = min(max(self.wait_s, REGROUP_FRACTION * self._last_compute_s), REGROUP_MAX_S)
        self._target = target
        self._deadline = loop.time() + delay
        if pending:
            self._timer = loop.call_at(self._deadline, self._flush)

    def _compute(self, batch: list[_Entry]) -> list[Any]:
        """In the compute thread: one forward, then one search per (index, parameters)."""
        import torch

        transform = self.model.transform
        tensors = [t if isinstance(t, torch.Tensor) else transform(t) for t, _, _ in batch]
        feats = self.model.embed(torch.stack(tensors))
        results: list[Any] = list(feats)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (_, _, job) in enumerate(batch):
            if job is not None:
                groups.setdefault(job.key, []).append(i)
        for rows in groups.values():
            job = batch[rows[0]][2]
            assert job is not None
            try:
                self.searches += 1
                hits = filtered_search(job.loaded, feats[rows], job.k, job.filters, job.nprobe)
            except Exception as exc:  # this group fails, the others are answered
                for i in rows:
                    results[i] = _Raised(exc)
            else:
                for i, h in zip(rows, hits, strict=True):
                    results[i] = h
        return results


@dataclass
class _Raised:
    exc: Exception


@dataclass
class _SearchJob:
    loaded: LoadedIndex
    k: int
    filters: Filters
    nprobe: int

    @property
    def key(self) -> tuple[Any, ...]:
        f = self.filters
        return (
            id(self.loaded),
            self.k,
            self.nprobe,
            f.dataset_id,
            f.split,
            f.camid,
            f.exclude_camid,
            f.min_score,
            f.captured_after,
            f.captured_before,
            self.loaded.removed_count,
        )


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _compute_executor() -> ThreadPoolExecutor:
    """The one thread that runs forwards and index searches: torch and FAISS each keep a
    single OpenMP team (sized to the cores) instead of one per worker thread, and batches
    do not compete with each other for the cores."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="search-compute")
        return _executor


@dataclass
class Filters:
    """Optional result filters of ``POST /search``."""

    dataset_id: int | None = None
    split: str | None = None
    camid: int | None = None
    exclude_camid: int | None = None
    min_score: float | None = None
    captured_after: int | None = None  # epoch seconds, inclusive
    captured_before: int | None = None  # epoch seconds, exclusive

    def mask(self, items: np.ndarray, removed: np.ndarray | None = None) -> np.ndarray | None:
        """Boolean mask of the allowed rows (never the ``removed`` ones), or None when every
        row is allowed. A time filter excludes the images of unknown capture time."""
        mask = np.ones(len(items), dtype=bool) if removed is None else ~removed
        if self.dataset_id is not None:
            mask &= items[:, COL_DATASET] == self.dataset_id
        if self.split is not None:
            mask &= items[:, COL_SPLIT] == SPLIT_CODES[self.split]
        if self.camid is not None:
            mask &= items[:, COL_CAMID] == self.camid
        if self.exclude_camid is not None:
            mask &= items[:, COL_CAMID] != self.exclude_camid
        if self.captured_after is not None or self.captured_before is not None:
            captured = items[:, COL_CAPTURED]
            mask &= captured != NO_LABEL
            if self.captured_after is not None:
                mask &= captured >= self.captured_after
            if self.captured_before is not None:
                mask &= captured < self.captured_before
        return None if mask.all() else mask


SCAN_ROWS = 65536  # feature rows scored at a time by the exact scans


def _scores(features: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each of ``rows``' best inner product with the ``queries`` (q × d), a block at a time."""
    out = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), SCAN_ROWS):
        block = np.asarray(features[rows[start : start + SCAN_ROWS]], dtype=np.float32)
        out[start : start + len(block)] = (block @ queries.T).max(axis=1)
    return out


def _best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first."""
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.argsort(-scores[top], kind="stable")]


def _exact(features: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int):
    """Exact top-k of ``query`` among ``rows`` of the feature matrix."""
    scores = _scores(features, rows, query[None])
    top = _best_first(scores, k)
    return scores[top], rows[top]


def ranked_exact(
    loaded: LoadedIndex,
    queries: np.ndarray,
    k: int,
    filters: Filters,
    aggregate: str | None = None,
    group_by: str | None = None,
    rerank: bool = False,
) -> list[list[tuple[int, float]]]:
    """Exact rankings over the stored features, for what an index search cannot answer.

    ``aggregate``: the queries are one tracklet (a person seen in several frames) and get one
    list: ``mean``, the re-normalised mean embedding; ``max``, each gallery image scored by its
    best match among the queries. Without it, one list per query. ``group_by="camid"``: only
    the best hit of each camera. ``rerank``: the top :data:`~trainer.rerank.SHORTLIST` (or
    ``k``, if more) re-ordered by k-reciprocal re-ranking (:mod:`trainer.rerank`; one query
    vector: not with ``aggregate="max"``); scores stay cosine similarities. Filters and
    ``min_score`` apply as in :func:`filtered_search`.
    """
    if rerank and aggregate == "max":
        raise ValueError("rerank needs one query vector: use aggregate=mean")
    mask = filters.mask(loaded.items, loaded.removed)
    rows = np.arange(len(loaded.items)) if mask is None else np.flatnonzero(mask)
    queries = np.asarray(queries, dtype=np.float32)
    if aggregate == "mean":
        mean = queries.mean(axis=0, keepdims=True)
        queries = mean / max(float(np.linalg.norm(mean)), 1e-12)
    sets = [queries] if aggregate else [q[None] for q in queries]
    features = loaded.features
    shortlist = k
    if rerank:
        from trainer.rerank import SHORTLIST, rerank_distances

        shortlist = max(k, SHORTLIST)
    out = []
    for group in sets:
        scores = _scores(features, rows, group)
        if group_by == "camid":  # every camera's best: the whole order
            order = np.argsort(-scores, kind="stable")
        else:
            order = _best_first(scores, shortlist)
        if rerank:
            short = order[:shortlist]
            candidates = np.asarray(features[rows[short]], dtype=np.float32)
            order = short[np.argsort(rerank_distances(group[0], candidates), kind="stable")]
        if group_by == "camid":
            cams = loaded.items[rows[order], COL_CAMID]
            _, first = np.unique(cams, return_index=True)  # the best of each camera
            order = order[np.sort(first)]
        hits = [(int(rows[i]), float(scores[i])) for i in order[:k]]
        if filters.min_score is not None:
            hits = [h for h in hits if h[1] >= filters.min_score]
        out.append(hits)
    return out


async def exact_search(
    batcher: MicroBatcher,
    images: list[Any],
    loaded: LoadedIndex,
    k: int,
    filters: Filters,
    aggregate: str | None,
    group_by: str | None,
    rerank: bool = False,
) -> list[list[tuple[int, float]]]:
    """:func:`ranked_exact` of the images' embeddings (forward micro-batched, the ranking in
    the compute thread like every index search)."""
    feats = await batcher.embed(images)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _compute_executor(), ranked_exact, loaded, feats, k, filters, aggregate, group_by, rerank
    )


def filtered_search(
    loaded: LoadedIndex, queries: np.ndarray, k: int, filters: Filters, nprobe: int
) -> list[list[tuple[int, float]]]:
    """Per query, up to ``k`` ``(row, score)`` pairs, best first, passing ``filters``."""
    index = loaded.index
    size = index.size  # type: ignore[attr-defined]
    mask = filters.mask(loaded.items, loaded.removed)
    allowed = size if mask is None else int(mask.sum())
    out: list[list[tuple[int, float]]] = []
    if allowed == 0 or size == 0:
        return [[] for _ in range(len(queries))]
    want = min(k, allowed)
    scores, rows = index.search(queries, want, nprobe, mask)  # type: ignore[attr-defined]
    allowed_rows: np.ndarray | None = None
    for qi in range(len(queries)):
        hits = [(int(r), float(s)) for r, s in zip(rows[qi], scores[qi], strict=True) if r >= 0]
        if len(hits) < want:  # IVF probed too few allowed rows: exact scan
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
