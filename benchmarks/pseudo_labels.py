"""Time and peak memory of SpCL pseudo-labelling (jaccard_distance + self_paced_labels).

For each N, a fresh child process (as a job's worker runs it) builds clustered synthetic
features (d = 2048, ~17 images per identity as in Market-1501, overlapping clusters, per-camera
shifts), then measures
  * the floor: exact kNN alone (chunked X·Xᵀ + top-k1, the least any exact method must do),
  * the whole step, jaccard_distance + self_paced_labels, twice: cold (the process's first
    call: kernels come from the on-disk cache that `make install` fills, see trainer/jit_cache)
    and warm (the second call),
  * with --official DIR (a checkout of github yxgeee/SpCL): the official Jaccard step
    (spcl/utils/faiss_rerank.compute_jaccard_distance, its CPU FAISS branch) on the same features,
  * the peak resident memory of the process (features included).

    python benchmarks/pseudo_labels.py                  # N = 12,936 and 32,621 on CPU
    python benchmarks/pseudo_labels.py --sizes 12936 --official ../official-spcl
    python benchmarks/pseudo_labels.py --sizes 100000   # the large-target check
    python benchmarks/pseudo_labels.py --device cuda    # when a GPU is present
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from trainer.cluster import jaccard_distance, self_paced_labels


def clustered_features(n: int, dim: int, seed: int = 0, latent: int = 32) -> torch.Tensor:
    """Unit rows around n/17 identity centres in a low-dimensional latent space (with camera
    shifts and noise), lifted to `dim`: overlapping clusters like real early-epoch features,
    which isotropic high-dimensional noise would not give."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // 17)
    ids = rng.integers(0, n_ids, n)
    cams = rng.integers(0, 6, n)
    centres = rng.standard_normal((n_ids, latent), dtype=np.float32)
    shifts = 0.3 * rng.standard_normal((6, latent), dtype=np.float32)
    z = centres[ids] + shifts[cams] + 0.7 * rng.standard_normal((n, latent), dtype=np.float32)
    x = z @ rng.standard_normal((latent, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x)


def knn_floor(x: torch.Tensor, k: int) -> float:
    """Seconds for chunked X·Xᵀ + top-k over all rows: the exact-search floor."""
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    rows = max(1, (1 << 27) // (4 * x.shape[0]))
    for s in range(0, x.shape[0], rows):
        (x[s : s + rows] @ x.T).topk(k, dim=1)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _timed_step(x: torch.Tensor, k1: int, k2: int) -> tuple[float, float, object, tuple]:
    start = time.perf_counter()
    dist = jaccard_distance(x, k1=k1, k2=k2)
    jaccard_s = time.perf_counter() - start
    result = self_paced_labels(dist)
    return jaccard_s, time.perf_counter() - start, dist, result


def official_jaccard_s(official: Path, x: torch.Tensor, k1: int, k2: int) -> float:
    """Seconds of the official compute_jaccard_distance (CPU FAISS branch) on ``x``; its
    package ``spcl.utils`` is loaded alone (the package's __init__ would import its models)."""
    utils = types.ModuleType("official_spcl_utils")
    utils.__path__ = [str(official / "spcl" / "utils")]
    sys.modules["official_spcl_utils"] = utils
    rerank = importlib.import_module("official_spcl_utils.faiss_rerank")
    start = time.perf_counter()
    rerank.compute_jaccard_distance(x.cpu(), k1=k1, k2=k2, print_flag=False, search_option=3)
    return time.perf_counter() - start


def measure(n: int, dim: int, device: str, k1: int, k2: int, official: Path | None) -> dict:
    """One size, in this process: run it in a fresh child, so that the first call is cold (as
    in a new worker) and the peak-memory figure is clean."""
    x = clustered_features(n, dim).to(device)
    floor = knn_floor(x, k1)
    cold_jaccard_s, cold_s, _, _ = _timed_step(x, k1, k2)
    jaccard_s, step, dist, (labels, threshold) = _timed_step(x, k1, k2)
    sizes = np.bincount(labels)
    out = {
        "n": n,
        "dim": dim,
        "device": device,
        "threads": torch.get_num_threads(),
        "knn_floor_s": round(floor, 2),
        "cold_step_s": round(cold_s, 2),
        "cold_over_floor": round(cold_s / floor, 2),
        "jaccard_s": round(jaccard_s, 2),
        "step_s": round(step, 2),
        "step_over_floor": round(step / floor, 2),
        "nnz_per_row": round(dist.nnz / n, 1),
        "clusters": int((sizes > 1).sum()),
        "unclustered": int((sizes == 1).sum()),
        "indep_threshold": threshold,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if official is not None:
        del dist
        official_s = official_jaccard_s(official, x, k1, k2)
        out["official_jaccard_s"] = round(official_s, 2)
        out["official_over_cold_jaccard"] = round(official_s / cold_jaccard_s, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12936, 32621])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument(
        "--official", type=Path, default=None, help="checkout of yxgeee/SpCL: time its step too"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.sizes[0], args.dim, args.device, args.k1, args.k2, args.official)
        print(json.dumps(result))
        return
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--sizes",
            str(n),
            "--dim",
            str(args.dim),
            "--device",
            args.device,
            "--k1",
            str(args.k1),
            "--k2",
            str(args.k2),
            *(["--official", str(args.official)] if args.official else []),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
