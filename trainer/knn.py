"""Exact k-nearest-neighbour search on the features' own device.

Pseudo-labelling starts from the exact neighbour lists of every target feature. This is the one
dense, compute-bound step of the pipeline (N² · d multiply-adds), so it is a chunked GEMM + top-k
that never holds more than one block of the N × N similarity matrix at a time.
"""

from __future__ import annotations

import torch

# Bytes of one block of the similarity matrix (rows × N float32): big enough for an efficient
# GEMM, small enough to keep the peak memory of the whole step low.
BLOCK_BYTES = 1 << 27


def exact_knn(
    features: torch.Tensor, k: int, block_bytes: int = BLOCK_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of each row by Euclidean distance, the row itself first.

    Returns ``(indices, dots)``, both N × min(k, N): neighbour ids sorted by increasing distance
    and their inner products ⟨x_i, x_j⟩ (which the Jaccard encoding needs). Ranking uses
    ‖x_j‖² − 2⟨x_i, x_j⟩, the exact Euclidean order even for rows that are only nearly unit
    length. Each row is forced to be its own first neighbour, also when duplicates tie with it.
    """
    n = features.shape[0]
    k = min(k, n)
    sq_norms = (features * features).sum(dim=1)
    neg_sq_norms = -sq_norms
    rows_per_block = max(1, block_bytes // (4 * n))
    indices = torch.empty((n, k), dtype=torch.int64, device=features.device)
    dots = torch.empty((n, k), dtype=torch.float32, device=features.device)
    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        # score = 2⟨x_i, x_j⟩ − ‖x_j‖²: larger is closer; one fused GEMM, one buffer.
        score = torch.addmm(neg_sq_norms, features[start:stop], features.T, alpha=2.0)
        rows = torch.arange(stop - start, device=features.device)
        score[rows, rows + start] = float("inf")
        top_scores, top_ids = score.topk(k, dim=1)
        del score
        block_dots = (top_scores + sq_norms[top_ids]) * 0.5
        block_dots[:, 0] = sq_norms[start:stop]
        indices[start:stop] = top_ids
        dots[start:stop] = block_dots
    return indices, dots
