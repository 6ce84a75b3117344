"""Time and peak memory of SpCL pseudo-labelling (jaccard_distance + self_paced_labels).

For each N, a child process builds clustered synthetic features (d = 2048, ~17 images per
identity as in Market-1501, overlapping clusters, per-camera shifts), then measures
  * the floor: exact kNN alone (chunked X·Xᵀ + top-k1, the least any exact method must do),
  * the whole step: jaccard_distance + self_paced_labels,
  * the peak resident memory of the process (features included).
Numba kernels are compiled (or loaded from cache) on a tiny input before timing.

    python benchmarks/pseudo_labels.py                  # N = 12,936 and 32,621 on CPU
    python benchmarks/pseudo_labels.py --sizes 100000   # the large-target check
    python benchmarks/pseudo_labels.py --device cuda    # when a GPU is present
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

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


def measure(n: int, dim: int, device: str, k1: int, k2: int) -> dict:
    """One size, in this process (run it in a fresh child for a clean peak-memory figure)."""
    warm = clustered_features(200, 16, seed=1)
    self_paced_labels(jaccard_distance(warm, k1, k2))
    x = clustered_features(n, dim).to(device)
    floor = knn_floor(x, k1)
    start = time.perf_counter()
    dist = jaccard_distance(x, k1=k1, k2=k2)
    jaccard_s = time.perf_counter() - start
    labels, threshold = self_paced_labels(dist)
    step = time.perf_counter() - start
    sizes = np.bincount(labels)
    return {
        "n": n,
        "dim": dim,
        "device": device,
        "threads": torch.get_num_threads(),
        "knn_floor_s": round(floor, 2),
        "jaccard_s": round(jaccard_s, 2),
        "step_s": round(step, 2),
        "step_over_floor": round(step / floor, 2),
        "nnz_per_row": round(dist.nnz / n, 1),
        "clusters": int((sizes > 1).sum()),
        "unclustered": int((sizes == 1).sum()),
        "indep_threshold": threshold,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12936, 32621])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.sizes[0], args.dim, args.device, args.k1, args.k2)))
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
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
