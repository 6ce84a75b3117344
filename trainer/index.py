"""FAISS retrieval index over L2-normalised embeddings (score = cosine similarity).

Exact (flat inner product, scanned by a multi-threaded matrix product) up to `ivf_threshold`
vectors, an inverted-file index beyond, where exhaustive search stops being cheap. Built on a
GPU when faiss has one (never assumed: the GPU count is checked), always stored on disk in CPU
form next to its feature matrix and its id map, so any process (the API, a CPU-only machine) can
load it.
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
SCAN_CHUNK_SCORES = 1 << 26  # queries × gallery scores held at once by the flat scan
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"


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
    kind: str  # "flat" | "ivf"

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        ids: np.ndarray,
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        use_gpu: bool | None = None,
    ) -> FeatureIndex:
        """Index `features` (N × d, unit rows) under `ids` (N distinct int64)."""
        features = _check_matrix(features)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (features.shape[0],):
            raise ValueError(f"need one id per row: {ids.shape[0]} ids, {features.shape[0]} rows")
        if np.unique(ids).size != ids.size:
            raise ValueError("ids must be distinct")
        n, d = features.shape
        if n >= ivf_threshold:
            nlist = int(min(65536, max(1, 4 * math.sqrt(n))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            kind = "ivf"
        else:
            index = faiss.IndexFlatIP(d)
            kind = "flat"
        gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        if gpu:
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, 0, index)
        if kind == "ivf":
            sample = np.random.default_rng(0).choice(n, size=min(n, 256 * nlist), replace=False)
            index.train(features[np.sort(sample)])
        index.add(features)
        if gpu:
            index = faiss.index_gpu_to_cpu(index)
        return cls(index, ids, kind)

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first; missing slots have id −1, score −inf."""
        queries = _check_matrix(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = nprobe
            scores, rows = self.index.search(queries, min(k, max(1, self.size)))
        else:
            scores, rows = self._flat_scan(queries, min(k, max(1, self.size)))
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

    def _flat_scan(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over :meth:`vectors` by one matrix product per chunk of queries, on all
        of torch's threads: FAISS scans a flat index with a single thread for fewer than 20
        queries, which is most of ``/search`` (2.2× slower at 100k × 2048 on 2 cores). Same
        scores up to float rounding, best first."""
        n = self.size
        if n == 0:
            empty = np.zeros((len(queries), 1), np.float32)
            return empty - np.inf, np.full(empty.shape, -1, np.int64)
        gallery = torch.from_numpy(self.vectors())
        chunk = max(1, SCAN_CHUNK_SCORES // n)
        scores, rows = [], []
        for start in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[start : start + chunk])
            top = torch.topk(q @ gallery.T, k, dim=1)
            scores.append(top.values.numpy())
            rows.append(top.indices.numpy())
        return np.concatenate(scores), np.concatenate(rows)

    def save(self, folder: Path, features: np.ndarray | None = None) -> Path:
        """Write index, id map, optional feature matrix and metadata into a new `folder`
        (atomically: readers never see a half-written index)."""
        folder = Path(folder)
        if folder.exists():
            raise FileExistsError(f"{folder} already exists")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        np.save(tmp / IDS_FILE, self.ids)
        if features is not None:
            np.save(tmp / FEATURES_FILE, _check_matrix(features))
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
        return cls(index, ids.astype(np.int64), meta["kind"])
