"""FAISS retrieval index over L2-normalised embeddings (score = cosine similarity), its type
chosen by size and memory budget (after FAISS's own guidelines for choosing an index):

========  ==============================================  ===============  ===================
kind      structure                                       RAM per vector   search
========  ==============================================  ===============  ===================
flat      exact inner product, fp32                       4·d bytes        exact
flat16    exact inner product over fp16 codes             2·d bytes        exact to fp16
ivf       inverted lists (HNSW coarse quantiser when      4·d bytes        ``nprobe`` lists
          there are many lists), fp32 vectors
ivfpq     inverted lists of product-quantised codes,      m bytes (+ ids)  ``nprobe`` lists,
          the shortlist re-scored exactly from the                         shortlist re-scored
          stored fp16 features (memory-mapped)
========  ==============================================  ===============  ===================

``choose_kind``: exact below ``ivf_threshold`` vectors (fp32 while it fits the memory budget,
else fp16), inverted lists beyond (fp32 vectors while they fit, else PQ codes). Flat indexes
are scanned by a multi-threaded matrix product. Built on a GPU when faiss has one (never
assumed: the GPU count is checked), always stored on disk in CPU form next to its feature
matrix (fp16 for the compressed kinds) and its id map, so any process (the API, a CPU-only
machine) can load it. Not built here: on-disk inverted lists (FAISS ``OnDiskInvertedLists``)
for PQ codes that do not fit in RAM either.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

IVF_THRESHOLD = 1_000_000
KINDS = ("flat", "flat16", "ivf", "ivfpq")
DEFAULT_MEMORY_BYTES = 8 * 1024**3
SCAN_CHUNK_SCORES = 1 << 26  # queries × gallery scores held at once by the flat scan
# From this many lists on (2·√n: 17M vectors) the coarse quantiser is an HNSW graph; below,
# assigning a vector by one matrix product over the centroids is cheaper than a graph walk
# at efSearch 128 (the 1M benchmark's build took 1.5× longer with HNSW over 2,000 lists).
HNSW_QUANTISER_LISTS = 8192
HNSW_EF_SEARCH = 128  # its search breadth, for adds and queries alike (stored in the file)
TRAIN_POINTS_PER_LIST = 64  # k-means sample (FAISS warns below 39; recall holds, builds fly)
RESCORE_FACTOR = 20  # ivfpq: shortlist of RESCORE_FACTOR × k codes, re-scored exactly
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"


def choose_kind(
    n: int,
    d: int,
    *,
    ivf_threshold: int = IVF_THRESHOLD,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    requested: str = "auto",
) -> str:
    """The index kind for ``n`` vectors of dimension ``d`` (see the module table)."""
    if requested != "auto":
        if requested not in KINDS:
            raise ValueError(f"unknown index kind {requested!r}; known: auto, {', '.join(KINDS)}")
        return requested
    fits_fp32 = n * d * 4 <= memory_bytes
    if n < ivf_threshold:
        return "flat" if fits_fp32 else "flat16"
    return "ivf" if fits_fp32 else "ivfpq"


def pq_bytes(d: int) -> int:
    """Bytes per PQ code: about one per 16 dimensions (128 for 2048-d: 1.3 GB for 10M
    vectors), a divisor of ``d``."""
    m = max(1, d // 16)
    while d % m:
        m -= 1
    return m


def _lists(n: int) -> int:
    return int(min(65536, max(1, 2 * math.sqrt(n))))


def new_index(kind: str, n: int, d: int) -> faiss.Index:
    """An empty (untrained) CPU index of ``kind`` sized for ``n`` vectors of dimension ``d``
    (IVF: about 2·√n lists, at least 64 training points each)."""
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "flat16":
        fp16 = faiss.ScalarQuantizer.QT_fp16
        return faiss.IndexScalarQuantizer(d, fp16, faiss.METRIC_INNER_PRODUCT)
    nlist = min(_lists(n), max(1, n // TRAIN_POINTS_PER_LIST))
    if nlist >= HNSW_QUANTISER_LISTS:
        quantiser = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        # FAISS's default of 16 misassigns a tenth of the vectors to their lists (recall@10
        # 0.64 at 1M on the scale benchmark); 128 costs little over a few thousand centroids
        quantiser.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        quantiser = faiss.IndexFlatIP(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantiser, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantiser, d, nlist, pq_bytes(d), 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    index.cp.niter = 10
    quantiser.this.disown()  # the IVF index frees it
    return index


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _check_matrix(features: np.ndarray) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"features must be N × d with d > 0, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or Inf")
    return features


@dataclass
class FeatureIndex:
    """A FAISS index, the external id of each row, and how it was built."""

    index: faiss.Index
    ids: np.ndarray  # int64, row → external id (e.g. an image id)
    kind: str  # one of KINDS
    # ivfpq: the N × d features (fp16, usually memory-mapped) its shortlists are re-scored with
    rescore: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def bytes_per_vector(self) -> int:
        """RAM the index holds per vector (codes, and the id each list keeps for IVF)."""
        d = self.dim
        return {"flat": 4 * d, "flat16": 2 * d, "ivf": 4 * d + 8}.get(self.kind, pq_bytes(d) + 8)

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        ids: np.ndarray,
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        kind: str = "auto",
        use_gpu: bool | None = None,
    ) -> FeatureIndex:
        """Index `features` (N × d, unit rows) under `ids` (N distinct int64); ``kind``:
        one of :data:`KINDS`, or ``auto`` (:func:`choose_kind`)."""
        features = _check_matrix(features)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (features.shape[0],):
            raise ValueError(f"need one id per row: {ids.shape[0]} ids, {features.shape[0]} rows")
        if np.unique(ids).size != ids.size:
            raise ValueError("ids must be distinct")
        n, d = features.shape
        kind = choose_kind(
            n, d, ivf_threshold=ivf_threshold, memory_bytes=memory_bytes, requested=kind
        )
        if kind.startswith("ivf") and n == 0:
            kind = "flat"  # nothing to train on
        index = new_index(kind, n, d)
        nlist = faiss.extract_index_ivf(index).nlist if kind.startswith("ivf") else 0
        # faiss's GPU indexes: flat, and IVF over a flat quantiser
        gpu_able = kind == "flat" or (kind == "ivf" and nlist < HNSW_QUANTISER_LISTS)
        gpu = (gpu_count() > 0 if use_gpu is None else use_gpu) and gpu_able
        if gpu:
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, 0, index)
        if nlist:
            sample_size = min(n, max(256 * 40, TRAIN_POINTS_PER_LIST * nlist))
            sample = np.random.default_rng(0).choice(n, size=sample_size, replace=False)
            index.train(features[np.sort(sample)])
        index.add(features)
        if gpu:
            index = faiss.index_gpu_to_cpu(index)
        rescore = features.astype(np.float16) if kind == "ivfpq" else None
        return cls(index, ids, kind, rescore)

    def with_rows(
        self,
        features: np.ndarray,
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        kind: str = "auto",
    ) -> FeatureIndex:
        """The same kind of index over other rows (ids: row numbers), for a collection that
        gained and lost images: an IVF index keeps its trained coarse quantiser and codebooks
        (the rows are only assigned and encoded, nothing is retrained); a flat one is a copy,
        and its kind is chosen again (``kind``, :func:`choose_kind`) as the collection grows."""
        features = _check_matrix(features)
        ids = np.arange(len(features), dtype=np.int64)
        if not self.kind.startswith("ivf") or len(features) == 0:
            return FeatureIndex.build(
                features, ids, ivf_threshold=ivf_threshold, memory_bytes=memory_bytes, kind=kind
            )
        index = faiss.clone_index(self.index)
        index.reset()
        index.add(features)
        rescore = features.astype(np.float16) if self.kind == "ivfpq" else None
        return FeatureIndex(index, ids, self.kind, rescore)

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 32, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first; missing slots have id −1, score −inf.

        ``allowed``: a boolean mask over the rows; only those are searched, inside the scan
        (FAISS's ID selector for IVF, masked scores for flat), so a narrow filter still gets
        its k best without over-fetching."""
        queries = _check_matrix(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if allowed is not None and allowed.shape != (self.size,):
            raise ValueError(f"allowed needs one flag per row ({self.size})")
        k = min(k, max(1, self.size))
        if self.kind == "flat":
            scores, rows = self._flat_scan(queries, k, allowed)
        else:
            params = (
                faiss.SearchParametersIVF(nprobe=nprobe)
                if self.kind.startswith("ivf")
                else faiss.SearchParameters()
            )
            if allowed is not None:
                bits = np.packbits(allowed, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bits))
            if self.kind == "ivfpq" and self.rescore is not None:
                shortlist = min(self.size, k * RESCORE_FACTOR)
                _, candidates = self.index.search(queries, shortlist, params=params)
                scores, rows = _rescore(self.rescore, queries, candidates, k)
            else:
                scores, rows = self.index.search(queries, k, params=params)
        found = rows >= 0
        ids = np.where(found, self.ids[np.clip(rows, 0, None)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    def vectors(self) -> np.ndarray | None:
        """A flat index's own N × d matrix (a view of its storage, no copy); None for IVF."""
        if self.kind != "flat":
            return None
        if self.size == 0:
            return np.zeros((0, self.dim), np.float32)
        n = self.size
        return faiss.rev_swig_ptr(self.index.get_xb(), n * self.dim).reshape(n, self.dim)

    def _flat_scan(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over :meth:`vectors` by one matrix product per chunk of queries, on all
        of torch's threads: FAISS scans a flat index with a single thread for fewer than 20
        queries, which is most of ``/search`` (2.2× slower at 100k × 2048 on 2 cores). Same
        scores up to float rounding, best first."""
        n = self.size
        if n == 0:
            empty = np.zeros((len(queries), 1), np.float32)
            return empty - np.inf, np.full(empty.shape, -1, np.int64)
        gallery = torch.from_numpy(self.vectors())
        blocked = None if allowed is None else torch.from_numpy(~allowed)
        chunk = max(1, SCAN_CHUNK_SCORES // n)
        scores, rows = [], []
        for start in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[start : start + chunk])
            products = q @ gallery.T
            if blocked is not None:
                products.masked_fill_(blocked, -torch.inf)
            top = torch.topk(products, k, dim=1)
            scores.append(top.values.numpy())
            rows.append(np.where(torch.isinf(top.values).numpy(), -1, top.indices.numpy()))
        return np.concatenate(scores), np.concatenate(rows)

    def save(self, folder: Path, features: np.ndarray | None = None) -> Path:
        """Write index, id map, optional feature matrix (fp16 for the compressed kinds:
        what exact re-scoring reads) and metadata into a new `folder` (atomically: readers
        never see a half-written index)."""
        folder = Path(folder)
        if folder.exists():
            raise FileExistsError(f"{folder} already exists")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        np.save(tmp / IDS_FILE, self.ids)
        if features is not None:
            if self.rescore is not None:  # ivfpq: its fp16 copy already exists
                stored = self.rescore
            else:
                stored = _check_matrix(features)
                if self.kind == "flat16":
                    stored = stored.astype(np.float16)
            np.save(tmp / FEATURES_FILE, stored)
        meta = {"kind": self.kind, "size": self.size, "dim": self.dim}
        (tmp / META_FILE).write_text(json.dumps(meta))
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: Path) -> FeatureIndex:
        """Read an index written by `save` (CPU form)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            index = faiss.read_index(str(folder / INDEX_FILE))
            ids = np.load(folder / IDS_FILE, allow_pickle=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{folder} does not hold a readable index: {exc}") from exc
        if ids.shape != (index.ntotal,):
            raise ValueError(f"{folder}: id map does not match the index")
        rescore = None
        if meta["kind"] == "ivfpq" and (folder / FEATURES_FILE).is_file():
            rescore = np.load(folder / FEATURES_FILE, mmap_mode="r")
        return cls(index, ids.astype(np.int64), meta["kind"], rescore)


def _rescore(
    features: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of each query among its candidate rows (−1: none), scored against the
    stored features; missing slots are −1 / −inf."""
    scores = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for qi, cand in enumerate(candidates):
        cand = cand[cand >= 0]
        if cand.size == 0:
            continue
        order = np.argsort(cand)  # sorted rows: sequential reads of a memory-mapped file
        block = np.asarray(features[cand[order]], dtype=np.float32)
        exact = block @ queries[qi]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[qi, : len(best)] = exact[best]
        rows[qi, : len(best)] = cand[order][best]
    return scores, rows
