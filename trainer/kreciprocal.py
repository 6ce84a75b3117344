"""Sparse kernels of the k-reciprocal encoding (Zhong et al. 2017, as used by SpCL).

Every N × N object of the method (the encoding V, its query expansion V', the Jaccard distance) is
sparse: a row touches only neighbours and neighbours of neighbours. These Numba kernels work on
compressed rows with per-thread scratch arrays, so time and memory grow with the number of
non-zeros, not with N². Each kernel handles a range of rows and releases the GIL, so the driver
(`run_row_blocks`) spreads row blocks over threads; they share no writable state, or only
places in one output that no other block writes.

Row-range kernels return ``(counts, columns, values)``: the number of entries of each row in the
range and the concatenated entries, which the driver stitches into one CSR matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import torch

from trainer.jit_cache import kernel


@kernel
def _ensure_capacity(buffer: np.ndarray, size: int) -> np.ndarray:
    """Grow an output buffer geometrically (amortised O(1) appends)."""
    if size <= buffer.shape[0]:
        return buffer
    grown = np.empty(max(size, 2 * buffer.shape[0]), buffer.dtype)
    grown[: buffer.shape[0]] = buffer
    return grown


@kernel
def reciprocal_neighbours(
    start: int, stop: int, knn: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """R(i) = {j ∈ N_m(i) : i ∈ N_m(j)} for rows start..stop, from the kNN table's first m columns.

    Returns a -1-padded (stop − start) × m array of members (in rank order) and their counts.
    """
    members = np.full((stop - start, m), -1, np.int32)
    counts = np.zeros(stop - start, np.int32)
    for i in range(start, stop):
        c = 0
        for r in range(m):
            j = knn[i, r]
            for t in range(m):
                if knn[j, t] == i:
                    members[i - start, c] = j
                    c += 1
                    break
        counts[i - start] = c
    return members, counts


@kernel
def expanded_sets(
    start: int,
    stop: int,
    r_members: np.ndarray,
    r_counts: np.ndarray,
    h_members: np.ndarray,
    h_counts: np.ndarray,
    knn: np.ndarray,
    knn_dots: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E(i) = R(i) ∪ ⋃ {R'(c) : c ∈ R(i), |R'(c) ∩ R(i)| > 2/3 |R'(c)|} for rows start..stop.

    Values are ⟨x_i, x_j⟩ looked up in the kNN table; NaN marks a member outside i's kNN list,
    whose inner product the caller computes. `3·|∩| > 2·|R'(c)|` is the integer form of the
    2/3 test (exact, and equal to the float test for every size).
    """
    n = knn.shape[0]
    in_r = np.full(n, -1, np.int64)  # in_r[j] == i  ⇔  j ∈ R(i)
    in_e = np.full(n, -1, np.int64)  # in_e[j] == i  ⇔  j already emitted for row i
    in_knn = np.full(n, -1, np.int64)
    knn_rank = np.zeros(n, np.int32)
    counts = np.zeros(stop - start, np.int64)
    cols = np.empty(4 * r_members.shape[1] * (stop - start) + 16, np.int32)
    vals = np.empty(cols.shape[0], np.float32)
    size = 0
    for i in range(start, stop):
        for r in range(knn.shape[1]):
            in_knn[knn[i, r]] = i
            knn_rank[knn[i, r]] = r
        for t in range(r_counts[i]):
            in_r[r_members[i, t]] = i
        begin = size
        for t in range(-1, r_counts[i]):
            if t < 0:  # R(i) itself
                group, length = r_members[i], r_counts[i]
            else:
                c = r_members[i, t]
                group, length = h_members[c], h_counts[c]
                inter = 0
                for u in range(length):
                    if in_r[group[u]] == i:
                        inter += 1
                if 3 * inter <= 2 * length:
                    continue
            cols = _ensure_capacity(cols, size + length)
            vals = _ensure_capacity(vals, size + length)
            for u in range(length):
                j = group[u]
                if in_e[j] == i:
                    continue
                in_e[j] = i
                cols[size] = j
                vals[size] = knn_dots[i, knn_rank[j]] if in_knn[j] == i else np.nan
                size += 1
        counts[i - start] = size - begin
    return counts, cols[:size], vals[:size]


@kernel
def query_expansion(
    start: int,
    stop: int,
    knn: np.ndarray,
    k2: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V'[i] = (1/k2) Σ_{r ∈ N_k2(i)} V[r] for rows start..stop (sparse row sums)."""
    n = knn.shape[0]
    acc = np.zeros(n, np.float64)
    seen = np.full(n, -1, np.int64)
    counts = np.zeros(stop - start, np.int64)
    cols = np.empty(k2 * 64 * (stop - start) + 16, np.int32)
    vals = np.empty(cols.shape[0], np.float32)
    size = 0
    for i in range(start, stop):
        begin = size
        for r in range(k2):
            row = knn[i, r]
            cols = _ensure_capacity(cols, size + indptr[row + 1] - indptr[row])
            for p in range(indptr[row], indptr[row + 1]):
                c = indices[p]
                if seen[c] != i:
                    seen[c] = i
                    acc[c] = 0.0
                    cols[size] = c
                    size += 1
                acc[c] += data[p]
        vals = _ensure_capacity(vals, size)
        for p in range(begin, size):
            vals[p] = acc[cols[p]] / k2
        counts[i - start] = size - begin
    return counts, cols[:size], vals[:size]


# Largest float32 below 1: D of a pair that shares any column is < 1 in exact arithmetic, so it
# is stored, and rounding must not turn it into 1.0 (which means "absent").
_BELOW_ONE = np.float32(np.nextafter(np.float32(1.0), np.float32(0.0)))


@kernel
def _first_at_least(rows: np.ndarray, begin: int, end: int, i: int) -> int:
    """First position in the sorted ``rows[begin:end]`` holding a row ≥ ``i``."""
    return begin + np.searchsorted(rows[begin:end], i)


@kernel
def jaccard_upper_counts(
    start: int,
    stop: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    col_indptr: np.ndarray,
    col_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For rows start..stop: how many j ≥ i share a non-zero column with row i (its upper part,
    diagonal included), and for every row j how many of these rows i < j reach it (what this
    block adds to row j's lower part). A first, cheaper pass (indices only) that lets
    `jaccard_upper_fill` write straight into the final arrays."""
    n = col_indptr.shape[0] - 1
    seen = np.full(n, -1, np.int64)
    upper = np.zeros(stop - start, np.int64)
    lower = np.zeros(n, np.int64)
    for i in range(start, stop):
        size = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            first = _first_at_least(col_rows, col_indptr[c], col_indptr[c + 1], i)
            for q in range(first, col_indptr[c + 1]):
                j = col_rows[q]
                if seen[j] != i:
                    seen[j] = i
                    size += 1
                    if j != i:
                        lower[j] += 1
        upper[i - start] = size
    return upper, lower


@kernel
def jaccard_upper_fill(
    start: int,
    stop: int,
    cursor: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_indptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    upper_begin: np.ndarray,
    out_indices: np.ndarray,
    out_data: np.ndarray,
) -> None:
    """D[i, j] = D[j, i] = max(0, 1 − m/(2 − m)), m = Σ_c min(V'[i,c], V'[j,c]), for the rows i
    of start..stop and every j ≥ i, written at row i's ``upper_begin`` and, mirrored, at
    ``cursor[j]`` (this block's next free place in row j's lower part, advanced here).

    For each column c of row i, walks the rows j ≥ i of column c (sorted: a binary search
    finds the first), accumulating the min-sum in a dense scratch row: each pair is computed
    once, from its smaller row, so D is exactly symmetric. The diagonal (m = 1) is an exact 0.
    Blocks write disjoint places (each has its own cursor range in every row).
    """
    n = col_indptr.shape[0] - 1
    acc = np.zeros(n, np.float64)
    seen = np.full(n, -1, np.int64)
    for i in range(start, stop):
        begin = upper_begin[i]
        size = begin
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            a = data[p]
            first = _first_at_least(col_rows, col_indptr[c], col_indptr[c + 1], i)
            for q in range(first, col_indptr[c + 1]):
                j = col_rows[q]
                b = col_data[q]
                if seen[j] != i:
                    seen[j] = i
                    acc[j] = 0.0
                    out_indices[size] = j
                    size += 1
                acc[j] += a if a < b else b
        for p in range(begin, size):
            j = out_indices[p]
            if j == i:
                out_data[p] = 0.0
                continue
            m = acc[j]
            d = min(max(0.0, 1.0 - m / (2.0 - m)), _BELOW_ONE)
            out_data[p] = d
            mirror = cursor[j]
            cursor[j] = mirror + 1
            out_indices[mirror] = i
            out_data[mirror] = d


@kernel
def pair_dots(
    start: int, stop: int, indptr: np.ndarray, cols: np.ndarray, dots: np.ndarray, x: np.ndarray
) -> None:
    """Fill the NaN entries of rows start..stop with ⟨x_i, x_j⟩ (CPU features), in place."""
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            if np.isnan(dots[p]):
                dots[p] = np.dot(x[i], x[cols[p]])  # BLAS: vectorised, like the kNN GEMM


@kernel
def rows_within(
    start: int, stop: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries ≤ radius of rows start..stop, in their stored order."""
    counts = np.zeros(stop - start, np.int64)
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] <= radius:
                counts[i - start] += 1
    cols = np.empty(counts.sum(), np.int32)
    vals = np.empty(counts.sum(), np.float32)
    size = 0
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] <= radius:
                cols[size] = indices[p]
                vals[size] = data[p]
                size += 1
    return counts, cols, vals


@kernel
def stored_diagonal(
    start: int, stop: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> np.ndarray:
    """D[i, i] for rows start..stop: the sum of the stored diagonal entries, 0 when none (as
    scipy's ``diagonal()``, without its canonicalisation of the whole matrix)."""
    out = np.zeros(stop - start, np.float64)
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] == i:
                out[i - start] += data[p]
    return out


@kernel
def dbscan(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    eps: float,
    min_samples: int,
    self_within: np.ndarray,
) -> np.ndarray:
    """DBSCAN on a sparse precomputed distance graph, exactly as scikit-learn's: neighbours are
    the stored entries ≤ eps, a sample counts itself when ``self_within[i]`` (its distance to
    itself, 0 when not stored, is ≤ eps), core samples have ≥ min_samples neighbours, clusters
    are numbered in the order of their first core sample, a border sample joins the first
    cluster that reaches it, and noise is -1."""
    n = indptr.shape[0] - 1
    core = np.zeros(n, np.bool_)
    for i in range(n):
        count = 1 if self_within[i] else 0
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] != i and data[p] <= eps:
                count += 1
        core[i] = count >= min_samples
    labels = np.full(n, -1, np.int64)
    stack = np.empty(n, np.int64)  # a sample is labelled when pushed: at most n entries
    cluster = 0
    for seed in range(n):
        if labels[seed] != -1 or not core[seed]:
            continue
        labels[seed] = cluster
        stack[0] = seed
        top = 1
        while top > 0:
            top -= 1
            i = stack[top]
            if not core[i]:
                continue
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                if labels[j] == -1 and data[p] <= eps:
                    labels[j] = cluster
                    stack[top] = j
                    top += 1
        cluster += 1
    return labels


def row_blocks(n: int) -> list[tuple[int, int]]:
    """Several row blocks per thread (as many threads as torch uses), so uneven rows still
    balance across threads."""
    threads = max(1, torch.get_num_threads())
    n_blocks = min(n, max(1, threads * 8))
    bounds = np.linspace(0, n, n_blocks + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


def run_blocks(
    kernel: Callable,
    blocks: list[tuple[int, int]],
    *args: object,
    per_block: Sequence[object] | None = None,
) -> list:
    """``kernel(start, stop, [per_block[b],] *args)`` for every block b, on torch's threads."""

    def one(b: int) -> object:
        start, stop = blocks[b]
        extra = () if per_block is None else (per_block[b],)
        return kernel(start, stop, *extra, *args)

    threads = max(1, torch.get_num_threads())
    if threads == 1 or len(blocks) == 1:
        return [one(b) for b in range(len(blocks))]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(blocks))))


def run_row_blocks(kernel: Callable, n: int, *args: object) -> list:
    """Run ``kernel(start, stop, *args)`` over the row blocks of ``n`` rows, in parallel."""
    return run_blocks(kernel, row_blocks(n), *args)


def reciprocal_sets(knn: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """`reciprocal_neighbours` over all rows, in parallel."""
    parts = run_row_blocks(reciprocal_neighbours, knn.shape[0], knn, m)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def stitch_rows(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the ``(counts, columns, values)`` of consecutive row blocks into CSR arrays."""
    counts = np.concatenate([p[0] for p in parts])
    indptr = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
