"""Retrieval metrics for re-identification: mAP and CMC rank-k.

Follows the Market-1501 / MSMT17 / VeRi protocol: for each query, gallery items that share
both its identity and its camera are removed from the ranking (they are trivially easy
matches), queries left without any true match are skipped, AP uses scikit-learn's
tie-aware definition and CMC counts the first true match after a stable sort.

The implementation never sorts a gallery row. For one query with positive (true-match)
distances p_1 <= ... <= p_P, sklearn's AP only needs, for every positive, how many valid
items and how many positives lie at distance <= p_k (a tie group is one threshold). A
``searchsorted`` of every gallery distance into the few sorted positive distances, followed
by a per-row histogram, yields exactly those counts in O(g log P) instead of O(g log g); on
2 CPU cores this is several times faster than ``torch.sort`` and moves less memory. Queries
are processed in chunks so that the large per-chunk buffers stay around 100 MB whatever the
size of the distance matrix (which may be a disk-backed ``np.memmap``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["rank_metrics"]

# Elements (rows x gallery) per chunk: the int64 bucket matrix then takes 64 MB and all
# per-chunk buffers together stay near 150 MB.
_CHUNK_ELEMENTS = 2**23
_TOPK = (1, 5, 10)

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def rank_metrics(
    distmat: ArrayLike,
    query_ids: ArrayLike,
    gallery_ids: ArrayLike,
    query_cams: ArrayLike | None = None,
    gallery_cams: ArrayLike | None = None,
    *,
    chunk_rows: int | None = None,
) -> dict[str, float]:
    """Compute mAP and CMC rank-1/5/10 of a query x gallery distance matrix.

    ``distmat`` (numpy array, ``np.memmap`` or torch tensor; smaller = more similar) is read
    ``chunk_rows`` query rows at a time, so memory use does not grow with the number of
    queries. With camera ids, gallery items with the query's id *and* camera are ignored.
    Returns fractions in [0, 1] under the keys ``mAP``, ``rank1``, ``rank5``, ``rank10``.
    Raises ``ValueError`` on malformed input or when no query has a valid true match.
    """
    dist = _check_distmat(distmat)
    n_query, n_gallery = (int(s) for s in dist.shape)
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("query_cams and gallery_cams must be given together (or both None)")
    device = dist.device if isinstance(dist, torch.Tensor) else torch.device("cpu")
    q_ids, g_ids = _encode_pair(query_ids, gallery_ids, n_query, n_gallery, "ids", device)
    q_cams = g_cams = None
    if query_cams is not None and gallery_cams is not None:
        q_cams, g_cams = _encode_pair(query_cams, gallery_cams, n_query, n_gallery, "cams", device)

    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_ELEMENTS // max(n_gallery, 1))
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")

    ap_sum = 0.0
    n_valid = 0
    hits = dict.fromkeys(_TOPK, 0)
    if n_gallery > 0:
        for start in range(0, n_query, chunk_rows):
            stop = min(start + chunk_rows, n_query)
            block = _load_rows(dist, start, stop)
            ap, first_rank = _chunk_stats(
                block,
                q_ids[start:stop],
                g_ids,
                None if q_cams is None else q_cams[start:stop],
                g_cams,
            )
            ap_sum += float(ap.sum())
            n_valid += int(ap.numel())
            for k in _TOPK:
                hits[k] += int((first_rank <= k).sum())

    if n_valid == 0:
        raise ValueError(
            "no valid query: no query has a gallery item with the same id "
            "(after removing same-id, same-camera gallery items)"
        )
    return {
        "mAP": ap_sum / n_valid,
        "rank1": hits[1] / n_valid,
        "rank5": hits[5] / n_valid,
        "rank10": hits[10] / n_valid,
    }


def _chunk_stats(
    dist: torch.Tensor,
    q_ids: torch.Tensor,
    g_ids: torch.Tensor,
    q_cams: torch.Tensor | None,
    g_cams: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AP (float64) and 1-based first-match rank for each valid query of one chunk."""
    if dist.is_floating_point() and bool(torch.isnan(dist).any()):
        raise ValueError("distmat contains NaN")
    device = dist.device
    positive = q_ids[:, None] == g_ids[None, :]
    junk: torch.Tensor | None = None
    if q_cams is not None and g_cams is not None:
        same_cam = q_cams[:, None] == g_cams[None, :]
        junk = positive & same_cam
        positive &= ~same_cam
        del same_cam

    # Positive (true-match) positions, row-major; bincount is cheaper than a bool row sum.
    rows, cols = positive.nonzero(as_tuple=True)
    del positive
    n_pos = torch.bincount(rows, minlength=dist.shape[0])
    keep = n_pos > 0
    if not bool(keep.all()):  # drop queries without a valid match before the heavy part
        dist, n_pos = dist[keep], n_pos[keep]
        junk = None if junk is None else junk[keep]
        rows = (torch.cumsum(keep, 0) - 1)[rows]  # renumber; every such row is kept
    rows_total, n_gallery = dist.shape
    if rows_total == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        return empty, torch.zeros(0, dtype=torch.int64, device=device)

    # Sorted positive distances per query, padded with the dtype's maximum (never "< d").
    width = int(n_pos.max())
    slot = torch.arange(rows.numel(), device=device) - (torch.cumsum(n_pos, 0) - n_pos)[rows]
    pos_dist = torch.full(
        (rows_total, width), _max_value(dist.dtype), dtype=dist.dtype, device=device
    )
    pos_dist[rows, slot] = dist[rows, cols]
    pos_col = torch.full((rows_total, width), n_gallery, dtype=torch.int64, device=device)
    pos_col[rows, slot] = cols
    # Stable: among equally distant positives the lowest gallery index comes first, which is
    # the one a stable sort of the whole row would rank first.
    pos_dist, order = torch.sort(pos_dist, dim=1, stable=True)
    first_col = pos_col.gather(1, order[:, :1]).squeeze(1)
    del pos_col, order, rows, cols

    # bucket[i, j] = number of positives of query i strictly closer than gallery item j.
    bucket = torch.searchsorted(pos_dist, dist)
    if junk is not None:
        bucket.masked_fill_(junk, width + 1)  # ignored items go to a bin that is never read
        del junk
    hist = torch.zeros((rows_total, width + 2), dtype=torch.int64, device=device)
    hist.scatter_add_(1, bucket, torch.ones((), dtype=torch.int64, device=device).expand_as(bucket))

    # AP: the k-th positive's tie group ends at distance p_k; count valid items and
    # positives at distance <= p_k (clamp: padding equal to a real +inf is not a positive).
    n_within = torch.cumsum(hist[:, :width], 1)
    tp_within = torch.searchsorted(pos_dist, pos_dist, right=True)
    tp_within = torch.minimum(tp_within, n_pos[:, None])
    real = torch.arange(width, device=device)[None, :] < n_pos[:, None]
    precision = torch.where(real, tp_within.double() / n_within.double(), 0.0)
    ap = precision.sum(1) / n_pos.double()

    # CMC: bin 0 holds the valid items at distance <= p_1. Those tied with p_1 but later in
    # gallery order than the first positive rank after it in a stable sort; find them among
    # the (few) items at exactly p_1, where bin 0 also tells valid from ignored.
    tie_rows, tie_cols = (dist == pos_dist[:, :1]).nonzero(as_tuple=True)
    later = (bucket[tie_rows, tie_cols] == 0) & (tie_cols > first_col[tie_rows])
    del bucket
    n_later = torch.bincount(tie_rows[later], minlength=rows_total)
    first_rank = hist[:, 0] - n_later
    return ap, first_rank


def _check_distmat(distmat: ArrayLike) -> np.ndarray | torch.Tensor:
    """Validate shape and dtype without reading the data (it may be a large memmap)."""
    if isinstance(distmat, torch.Tensor):
        dist: np.ndarray | torch.Tensor = distmat.detach()
        if dist.is_complex():
            raise ValueError(f"distmat must be real-valued, got dtype {dist.dtype}")
    else:
        dist = np.asarray(distmat) if not isinstance(distmat, np.ndarray) else distmat
        if dist.dtype.kind not in "fiub":
            raise ValueError(f"distmat must be real-valued numeric, got dtype {dist.dtype}")
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(dist.shape)}")
    return dist


def _load_rows(dist: np.ndarray | torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) as a torch tensor with a sortable dtype (copies only that block)."""
    if isinstance(dist, torch.Tensor):
        block = dist[start:stop]
        if block.dtype not in (torch.float32, torch.float64):
            block = block.to(torch.float32 if block.is_floating_point() else torch.int64)
        return block.contiguous()
    arr = dist[start:stop]
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f":
        target = np.float32 if size <= 4 else np.float64
    elif kind == "u" and size >= 8:
        target = np.float64  # would overflow int64
    else:
        target = np.int64
    out = np.ascontiguousarray(arr, dtype=target)  # also fixes non-native byte order
    if not out.flags.writeable:  # read-only memmap: torch.from_numpy wants writable memory
        out = out.copy()
    return torch.from_numpy(out)


def _max_value(dtype: torch.dtype) -> float | int:
    """Largest value of ``dtype``: padding that never sorts before a real distance."""
    if dtype.is_floating_point:
        return float("inf")
    return torch.iinfo(dtype).max


def _encode_pair(
    query: ArrayLike,
    gallery: ArrayLike,
    n_query: int,
    n_gallery: int,
    what: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map query/gallery labels (any comparable type) to shared small integer codes."""
    q = _as_1d(query, f"query_{what}")
    g = _as_1d(gallery, f"gallery_{what}")
    if q.shape[0] != n_query:
        raise ValueError(f"query_{what} has {q.shape[0]} entries, distmat has {n_query} rows")
    if g.shape[0] != n_gallery:
        raise ValueError(
            f"gallery_{what} has {g.shape[0]} entries, distmat has {n_gallery} columns"
        )
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = torch.from_numpy(codes.reshape(-1).astype(np.int32 if codes.size < 2**31 else np.int64))
    codes = codes.to(device)
    return codes[:n_query], codes[n_query:]


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """Labels as a 1-D numpy array (torch tensors are moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr
