"""Index kinds by scale: build time, memory, recall@10 and latency at 100k, 1M (and 10M).

Clustered synthetic 2048-d unit vectors (identities of about 20 images, what re-ID embeddings
look like) are generated chunk by chunk from per-chunk seeds, so no more than one chunk of raw
vectors is ever in memory: the index is trained on a sample, the chunks are added one by one,
their fp16 copies (what ``ivfpq`` re-scores from, and what every index stores beside it) are
written to a memory-mapped file, and the exact top-10 ground truth is a chunked brute-force
scan over the regenerated chunks. Per size and kind it prints: build seconds, RAM bytes per
vector (the index file, which is what a process loads) and disk bytes per vector (index +
fp16 features), recall@10 against exact search, single-query p50 and batch-64 per-query
latency (the index's own ``FeatureIndex.search``, on all cores), and the seconds to add 10k
vectors to the built index.

    python benchmarks/index_scale.py                           # 100k and 1M, auto kinds
    python benchmarks/index_scale.py --sizes 100000 --kinds flat flat16 ivf ivfpq
    python benchmarks/index_scale.py --sizes 10000000 --kinds ivfpq --nprobe 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.index import (
    INDEX_FILE,
    FeatureIndex,
    choose_kind,
    new_index,
)

CHUNK = 50_000
PER_IDENTITY = 20
NOISE = 0.6  # per-dimension spread around an identity's centre, relative to the centre's


def centres(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(12345)
    return rng.standard_normal((max(1, n // PER_IDENTITY), d), dtype=np.float32)


def chunk(start: int, size: int, mids: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, start])
    who = rng.integers(0, len(mids), size)
    x = mids[who] + NOISE * rng.standard_normal((size, mids.shape[1]), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunks(n: int, mids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, n, CHUNK):
        yield start, chunk(start, min(CHUNK, n - start), mids)


def ground_truth(n: int, mids: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start, x in chunks(n, mids):
        s = queries @ x.T
        i = np.broadcast_to(np.arange(start, start + len(x)), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, i], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return best_i


def build(kind: str, n: int, d: int, mids: np.ndarray, work: Path) -> tuple[FeatureIndex, float]:
    started = time.perf_counter()
    index = new_index(kind, n, d)
    if kind.startswith("ivf"):
        nlist = faiss.extract_index_ivf(index).nlist
        sample = chunk(10**12, min(n, max(10_240, 64 * nlist)), mids, seed=1)
        index.train(sample)
        del sample
    features = np.lib.format.open_memmap(work / "features16.npy", "w+", np.float16, (n, d))
    for start, x in chunks(n, mids):
        index.add(x)
        features[start : start + len(x)] = x.astype(np.float16)
    features.flush()
    seconds = time.perf_counter() - started
    rescore = np.load(work / "features16.npy", mmap_mode="r") if kind == "ivfpq" else None
    return FeatureIndex(index, np.arange(n, dtype=np.int64), kind, rescore), seconds


def latency_ms(index: FeatureIndex, queries: np.ndarray, nprobe: int) -> tuple[float, float]:
    index.search(queries[:2], 10, nprobe)  # warm
    single = []
    for q in queries[:100]:
        t = time.perf_counter()
        index.search(q[None], 10, nprobe)
        single.append(1000 * (time.perf_counter() - t))
    batch = queries[:64]
    t = time.perf_counter()
    for _ in range(3):
        index.search(batch, 10, nprobe)
    per_query = 1000 * (time.perf_counter() - t) / (3 * len(batch))
    return statistics.median(single), per_query


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--kinds", nargs="+", default=["auto"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--memory-bytes", type=int, default=8 * 1024**3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={args.dim}")
    print(
        "n kind build_s ram_B/vec disk_B/vec nprobe recall@10 p50_single_ms batch64_ms_per_q "
        "add10k_s"
    )
    for n in args.sizes:
        mids = centres(n, args.dim)
        queries = chunk(10**13, args.queries, mids, seed=2)
        truth = ground_truth(n, mids, queries)
        for requested in args.kinds:
            kind = choose_kind(n, args.dim, memory_bytes=args.memory_bytes, requested=requested)
            with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
                work = Path(tmp)
                index, seconds = build(kind, n, args.dim, mids, work)
                faiss.write_index(index.index, str(work / INDEX_FILE))
                ram = os.path.getsize(work / INDEX_FILE) / n
                disk = ram + os.path.getsize(work / "features16.npy") / n
                extra = chunk(10**14, 10_000, mids, seed=3)
                t = time.perf_counter()
                index.index.add(extra)
                add_s = time.perf_counter() - t
                index.index.remove_ids(faiss.IDSelectorRange(n, n + len(extra)))
                probes = args.nprobe if kind.startswith("ivf") else [0]
                for nprobe in probes:
                    _, found = index.search(queries, 10, max(nprobe, 1))
                    p50, per_q = latency_ms(index, queries, max(nprobe, 1))
                    print(
                        f"{n} {kind} {seconds:.1f} {ram:.0f} {disk:.0f} {nprobe or '-'} "
                        f"{recall(found, truth):.4f} {p50:.2f} {per_q:.2f} {add_s:.2f}",
                        flush=True,
                    )
                del index


if __name__ == "__main__":
    main()
