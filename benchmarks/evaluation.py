"""Benchmark trainer.evaluation.rank_metrics on a large random distance matrix.

Default: 10,000 queries x 100,000 gallery float32 (4 GB), 5,000 identities, 6 cameras.
Prints wall time and peak RSS (ru_maxrss) before and after the call, next to the size of
the distance matrix, so the evaluation's own memory overhead is visible.

    .venv/bin/python benchmarks/evaluation.py [--queries N] [--gallery N] [--memmap]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluation import rank_metrics


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill_random(out: np.ndarray, rng: np.random.Generator, rows_per_step: int = 256) -> None:
    """Fill ``out`` with uniform float32 in chunks, so no float64 temporary of full size."""
    for start in range(0, out.shape[0], rows_per_step):
        rng.random(out=out[start : start + rows_per_step], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=5_000)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memmap", action="store_true", help="distmat as np.memmap in a tmp dir")
    parser.add_argument("--chunk-rows", type=int, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    shape = (args.queries, args.gallery)
    size_mb = args.queries * args.gallery * 4 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.memmap:
            distmat = np.memmap(Path(tmp) / "dist.f32", dtype=np.float32, mode="w+", shape=shape)
            fill_random(distmat, rng)
            distmat.flush()
            del distmat
            distmat = np.memmap(Path(tmp) / "dist.f32", dtype=np.float32, mode="r", shape=shape)
        else:
            distmat = np.empty(shape, dtype=np.float32)
            fill_random(distmat, rng)
        q_ids = rng.integers(0, args.ids, args.queries)
        g_ids = rng.integers(0, args.ids, args.gallery)
        q_cams = rng.integers(0, args.cams, args.queries)
        g_cams = rng.integers(0, args.cams, args.gallery)
        print(
            f"built {shape[0]:,} x {shape[1]:,} float32 distmat ({size_mb:,.0f} MB"
            f"{', memmap' if args.memmap else ''}) in {time.perf_counter() - t0:.1f} s"
        )
        print(f"torch threads: {torch.get_num_threads()}")

        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        metrics = rank_metrics(distmat, q_ids, g_ids, q_cams, g_cams, chunk_rows=args.chunk_rows)
        wall = time.perf_counter() - t0
        rss_after = peak_rss_mb()

    print("metrics:", {k: round(v, 6) for k, v in metrics.items()})
    print(f"rank_metrics wall time: {wall:.1f} s")
    print(f"distmat size: {size_mb:,.0f} MB")
    print(
        f"peak RSS before call: {rss_before:,.0f} MB, after call: {rss_after:,.0f} MB "
        f"(call added {rss_after - rss_before:,.0f} MB)"
    )


if __name__ == "__main__":
    main()
