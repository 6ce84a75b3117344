"""Pseudo-labels for the target domain: k-reciprocal Jaccard distance + self-paced DBSCAN.

SpCL re-clusters the target features at every epoch. `jaccard_distance` is the k-reciprocal
re-ranking distance (Zhong et al. 2017) in SpCL's form; `self_paced_labels` runs DBSCAN on it and
keeps only reliable clusters (independence and compactness measured against looser and tighter
clusterings). Both follow the published definitions exactly; the implementation is sparse end to
end (no N × N array), so large target sets fit in memory and the step costs little more than the
exact kNN search it starts from.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from trainer import jit_cache
from trainer import kreciprocal as kr
from trainer.knn import exact_knn

# Inner products computed per chunk for expansion members outside the kNN table.
_PAIR_CHUNK_BYTES = 1 << 26


def _check_features(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features must be a torch.Tensor or numpy array, got {type(features)}")
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (N × d), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    features = features.detach().to(torch.float32).contiguous()
    # a NaN or Inf makes the sum non-finite (one pass, no N × d mask); a huge but finite sum
    # only sends us to the exact check
    if not bool(torch.isfinite(features.sum())) and not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf")
    return features


def _fill_missing_dots(
    features: torch.Tensor, indptr: np.ndarray, cols: np.ndarray, dots: np.ndarray
) -> None:
    """Fill in ⟨x_i, x_j⟩ where the kNN table had none (NaN), on the features' device."""
    if features.device.type == "cpu":
        kr.run_row_blocks(kr.pair_dots, len(indptr) - 1, indptr, cols, dots, features.numpy())
        return
    missing = np.flatnonzero(np.isnan(dots))
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))[missing]
    chunk = max(1, _PAIR_CHUNK_BYTES // (8 * features.shape[1]))
    for s in range(0, missing.size, chunk):
        i = torch.from_numpy(rows[s : s + chunk]).to(features.device)
        j = torch.from_numpy(cols[missing[s : s + chunk]].astype(np.int64)).to(features.device)
        dots[missing[s : s + chunk]] = (features[i] * features[j]).sum(dim=1).cpu().numpy()


def _softmax_rows(indptr: np.ndarray, dots: np.ndarray) -> np.ndarray:
    """V[i, j] = softmax over j ∈ E(i) of −(2 − 2⟨x_i, x_j⟩) (rows are never empty: i ∈ E(i))."""
    logits = 2.0 * dots.astype(np.float64)
    starts = indptr[:-1]
    row_max = np.maximum.reduceat(logits, starts)
    lengths = np.diff(indptr)
    e = np.exp(logits - np.repeat(row_max, lengths))
    return (e / np.repeat(np.add.reduceat(e, starts), lengths)).astype(np.float32)


def jaccard_distance(features: torch.Tensor, k1: int = 30, k2: int = 6) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance between all rows of `features` (L2-normalised, N × d).

    Returns an N × N float32 CSR matrix holding every pair with D < 1 (zeros, the diagonal
    included, stored explicitly; an absent entry means 1.0): the form scikit-learn's
    DBSCAN(metric="precomputed") takes. The matrix is exactly symmetric. The kNN search runs on
    the features' device (CPU or CUDA); the sparse encoding runs on the CPU.
    """
    features = _check_features(features)
    for name, value in (("k1", k1), ("k2", k2)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n = features.shape[0]
    # Neighbourhood sizes are clamped to N; round() is half-to-even, as SpCL's np.around.
    h = min(round(k1 / 2) + 1, n)
    k1 = min(int(k1), n)
    k2 = min(int(k2), n)

    knn_t, knn_dots_t = exact_knn(features, max(k1, k2))
    knn = knn_t.to(torch.int32).cpu().numpy()
    knn_dots = knn_dots_t.cpu().numpy()
    del knn_t, knn_dots_t

    r_members, r_counts = kr.reciprocal_sets(knn, k1)
    h_members, h_counts = kr.reciprocal_sets(knn, h)
    parts = kr.run_row_blocks(
        kr.expanded_sets, n, r_members, r_counts, h_members, h_counts, knn[:, :k1], knn_dots
    )
    e_indptr, e_cols, e_dots = kr.stitch_rows(parts)
    del parts, r_members, h_members, knn_dots
    _fill_missing_dots(features, e_indptr, e_cols, e_dots)
    v_data = _softmax_rows(e_indptr, e_dots)
    del e_dots

    if k2 > 1:
        parts = kr.run_row_blocks(kr.query_expansion, n, knn, k2, e_indptr, e_cols, v_data)
        v_indptr, v_cols, v_data = kr.stitch_rows(parts)
        del parts
    else:
        v_indptr, v_cols = e_indptr, e_cols
    del e_indptr, e_cols
    v = sp.csr_matrix((v_data, v_cols, v_indptr), shape=(n, n))
    v.sort_indices()  # same summation order for (i, j) and (j, i): exact symmetry
    v_by_col = v.tocsc()
    blocks = kr.row_blocks(n)
    counted = kr.run_blocks(
        kr.jaccard_upper_counts, blocks, v.indptr, v.indices, v_by_col.indptr, v_by_col.indices
    )
    upper = np.concatenate([c[0] for c in counted])
    lower_by_block = np.stack([c[1] for c in counted])  # blocks × n
    del counted
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(upper + lower_by_block.sum(axis=0), out=indptr[1:])
    # row j: its lower part (j' < j) block after block, in row order, then its upper part
    cursors = np.cumsum(lower_by_block, axis=0) - lower_by_block + indptr[:-1]
    upper_begin = indptr[:-1] + lower_by_block.sum(axis=0)
    del lower_by_block
    indices = np.empty(indptr[-1], np.int32)
    data = np.empty(indptr[-1], np.float32)
    kr.run_blocks(
        kr.jaccard_upper_fill,
        blocks,
        v.indptr,
        v.indices,
        v.data,
        v_by_col.indptr,
        v_by_col.indices,
        v_by_col.data,
        upper_begin,
        indices,
        data,
        per_block=list(cursors),
    )
    # one index dtype for both arrays, as SciPy requires (tocoo and others refuse a mix)
    if indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    else:
        indices = indices.astype(np.int64)
    dist = sp.csr_matrix((n, n), dtype=np.float32)
    dist.data, dist.indices, dist.indptr = data, indices, indptr
    return dist


def _radius_graph(
    dist: sp.spmatrix | np.ndarray, radius: float
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The entries ≤ radius, and each sample's distance to itself (0 where not stored).

    That is all DBSCAN at eps ≤ radius looks at: a small fraction of the Jaccard matrix.
    """
    n = dist.shape[0]
    if sp.issparse(dist):
        dist = sp.csr_matrix(dist)
        diagonal = np.concatenate(
            kr.run_row_blocks(kr.stored_diagonal, n, dist.indptr, dist.indices, dist.data)
        )
    else:
        dense = np.asarray(dist)
        diagonal = dense.diagonal().copy()
        rows, cols = np.nonzero(dense <= radius)
        dist = sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=(n, n))
    parts = kr.run_row_blocks(
        kr.rows_within,
        n,
        dist.indptr,
        dist.indices,
        dist.data.astype(np.float32, copy=False),
        radius,
    )
    return sp.csr_matrix(kr.stitch_rows(parts)[::-1], shape=(n, n)), diagonal


def _dbscan_labels(
    graph: sp.csr_matrix, diagonal: np.ndarray, eps: float, min_samples: int
) -> np.ndarray:
    """DBSCAN cluster ids (scikit-learn's, see ``kr.dbscan``), every outlier given a cluster id
    of its own."""
    labels = kr.dbscan(graph.indptr, graph.indices, graph.data, eps, min_samples, diagonal <= eps)
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return labels


def _cluster_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A(i) ∩ B(i)| / |A(i) ∪ B(i)| per sample, from label co-occurrence counts (O(N log N))."""
    size_a = np.bincount(a)[a]
    size_b = np.bincount(b)[b]
    _, pair, pair_count = np.unique(
        a * (int(b.max()) + 1) + b, return_inverse=True, return_counts=True
    )
    inter = pair_count[pair]
    return inter / (size_a + size_b - inter)


def _check_clustering_args(dist: object, eps: float, eps_gap: float, min_samples: int) -> None:
    shape = getattr(dist, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"dist must be a non-empty square distance matrix, got shape {shape}")
    if not (eps - eps_gap > 0 and eps + eps_gap < 1):
        raise ValueError(
            f"need 0 < eps - eps_gap and eps + eps_gap < 1 (Jaccard distances lie in [0, 1]), "
            f"got eps={eps}, eps_gap={eps_gap}"
        )
    if eps_gap < 0:
        raise ValueError(f"eps_gap must be >= 0, got {eps_gap}")
    if not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")


def self_paced_labels(
    dist: sp.csr_matrix | np.ndarray,
    eps: float = 0.6,
    eps_gap: float = 0.02,
    min_samples: int = 4,
    indep_threshold: float | None = None,
) -> tuple[np.ndarray, float | None]:
    """Reliable pseudo-labels by SpCL's self-paced criterion.

    DBSCAN at eps, eps − eps_gap (tight) and eps + eps_gap (loose). A sample keeps its eps-cluster
    when the cluster is independent enough (its least independent member, measured against the
    loose run, is within `indep_threshold`) and the sample is as compact as the cluster's most
    compact member (measured against the tight run); otherwise it becomes an un-clustered
    instance. `indep_threshold=None` sets the threshold from this clustering (the 90th percentile
    of multi-member clusters' independence, fixed by SpCL at the first epoch) and returns it.

    Returns ``(labels, threshold)``: int64 labels, kept clusters numbered 0..K−1 in DBSCAN order,
    then one new value per un-clustered instance.
    """
    _check_clustering_args(dist, eps, eps_gap, min_samples)
    graph, diagonal = _radius_graph(dist, eps + eps_gap)
    clusters = _dbscan_labels(graph, diagonal, eps, min_samples)
    tight = _dbscan_labels(graph, diagonal, eps - eps_gap, min_samples)
    loose = _dbscan_labels(graph, diagonal, eps + eps_gap, min_samples)

    comp = 1.0 - _cluster_iou(clusters, tight)
    indep = 1.0 - _cluster_iou(clusters, loose)
    n_clusters = int(clusters.max()) + 1
    cluster_comp = np.full(n_clusters, np.inf)
    cluster_indep = np.full(n_clusters, np.inf)
    np.minimum.at(cluster_comp, clusters, comp)
    np.minimum.at(cluster_indep, clusters, indep)

    if indep_threshold is None:
        multi = np.sort(cluster_indep[np.bincount(clusters, minlength=n_clusters) > 1])
        if multi.size:
            indep_threshold = float(multi[min(multi.size - 1, int(np.round(multi.size * 0.9)))])
    if indep_threshold is None:
        keep = np.zeros(clusters.shape[0], dtype=bool)
    else:
        keep = (cluster_indep[clusters] <= indep_threshold) & (comp <= cluster_comp[clusters])

    labels = np.empty(clusters.shape[0], dtype=np.int64)
    kept_ids = np.unique(clusters[keep])
    labels[keep] = np.searchsorted(kept_ids, clusters[keep])
    labels[~keep] = kept_ids.size + np.arange(int((~keep).sum()))
    return labels, indep_threshold


jit_cache.preload()  # the kernels load while the caller prepares its features
