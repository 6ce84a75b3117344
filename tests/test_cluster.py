"""jaccard_distance and self_paced_labels against slow, literal re-statements of the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from trainer.cluster import jaccard_distance, self_paced_labels


def clustered(n: int, dim: int = 16, groups: int = 8, noise: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    x = centres[rng.integers(0, groups, n)] + noise * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def to_dense(dist: sp.csr_matrix) -> np.ndarray:
    """Absent entries mean 1.0."""
    dense = np.ones(dist.shape)
    rows = np.repeat(np.arange(dist.shape[0]), np.diff(dist.indptr))
    dense[rows, dist.indices] = dist.data
    return dense


def oracle_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The definition, step by step, with sets and dense matrices."""
    n = len(x)
    x = x.astype(np.float64)
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    order = [[i] + [j for j in np.argsort(sq[i], kind="stable") if j != i] for i in range(n)]

    def nearest(i: int, m: int) -> set[int]:
        return set(order[i][: min(m, n)])

    def reciprocal(i: int, m: int) -> set[int]:
        return {j for j in nearest(i, m) if i in nearest(j, m)}

    h = round(k1 / 2) + 1
    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        e_i = set(r_i)
        for c in r_i:
            r_c = reciprocal(c, h)
            if len(r_c & r_i) > 2 / 3 * len(r_c):
                e_i |= r_c
        e = sorted(e_i)
        w = np.exp(-(2 - 2 * x[e] @ x[i]))
        v[i, e] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[order[i][: min(k2, n)]].mean(axis=0) for i in range(n)])
    m = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    return np.maximum(0.0, 1.0 - m / (2.0 - m))


@pytest.mark.parametrize(
    ("n", "k1", "k2", "noise", "seed"),
    [
        (150, 20, 6, 0.6, 0),
        (120, 30, 6, 0.9, 1),  # noisy: many expansion members outside the kNN table
        (100, 5, 1, 0.5, 2),  # odd k1 (h = round(2.5) + 1 = 3), no query expansion
        (90, 11, 3, 1.5, 3),  # nearly unstructured
        (7, 30, 6, 0.5, 4),  # N < k1 and N < h: neighbourhoods clamp to N
    ],
)
def test_matches_definition(n: int, k1: int, k2: int, noise: float, seed: int) -> None:
    x = clustered(n, noise=noise, seed=seed)
    dist = jaccard_distance(torch.from_numpy(x), k1=k1, k2=k2)
    expected = oracle_jaccard(x, k1, k2)
    np.testing.assert_allclose(to_dense(dist), expected, atol=2e-6)
    # Exactly the pairs with D < 1 are stored.
    assert dist.nnz == int((expected < 1).sum())


def test_sparse_form_properties() -> None:
    dist = jaccard_distance(torch.from_numpy(clustered(300, noise=0.8, seed=5)))
    assert isinstance(dist, sp.csr_matrix)
    assert dist.dtype == np.float32 and dist.shape == (300, 300)
    assert (abs(dist - dist.T)).max() == 0  # exactly symmetric
    diag = dist.diagonal()
    assert np.all(diag == 0)
    # The diagonal is an explicit stored entry in every row.
    rows = np.repeat(np.arange(300), np.diff(dist.indptr))
    assert np.sum(rows == dist.indices) == 300
    assert dist.data.min() >= 0 and dist.data.max() < 1
    # Stored entries (explicit zeros included) form a symmetric pattern.
    pattern = sp.csr_matrix((np.ones(dist.nnz), dist.indices, dist.indptr), shape=dist.shape)
    assert (pattern != pattern.T).nnz == 0


def test_usable_by_dbscan_directly() -> None:
    x = clustered(200, noise=0.3, seed=6)
    dist = jaccard_distance(torch.from_numpy(x))
    sparse_labels = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dist)
    dense_labels = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(to_dense(dist))
    np.testing.assert_array_equal(sparse_labels, dense_labels)
    assert sparse_labels.max() >= 4  # it found the structure
    assert dist.indices.dtype == dist.indptr.dtype  # what SciPy's conversions require
    assert dist.tocoo().nnz == dist.nnz


def test_duplicates_and_single_item() -> None:
    x = clustered(40, seed=7)
    x[10] = x[11] = x[12]  # exact duplicates tie at distance 0
    dist = jaccard_distance(torch.from_numpy(x), k1=8, k2=3)
    assert np.all(dist.diagonal() == 0)
    assert (abs(dist - dist.T)).max() == 0
    dense = to_dense(dist)
    assert dense[10, 11] == pytest.approx(0, abs=1e-6)
    one = jaccard_distance(torch.ones(1, 4) / 2)
    assert one.shape == (1, 1) and one.nnz == 1 and one.data[0] == 0


def test_inputs_accepted_and_rejected() -> None:
    x = clustered(50, seed=8)
    ref = to_dense(jaccard_distance(torch.from_numpy(x), k1=10))
    np.testing.assert_array_equal(to_dense(jaccard_distance(x, k1=10)), ref)
    as64 = jaccard_distance(torch.from_numpy(x).double(), k1=10)
    np.testing.assert_array_equal(to_dense(as64), ref)
    bad = torch.from_numpy(x.copy())
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        jaccard_distance(bad)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        jaccard_distance(bad)
    with pytest.raises(ValueError, match="2-D"):
        jaccard_distance(torch.ones(5))
    with pytest.raises(ValueError, match="2-D"):
        jaccard_distance(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="non-empty"):
        jaccard_distance(torch.ones(0, 4))
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=0)


def test_two_thirds_rule_integer_form() -> None:
    """The kernel tests 3·|∩| > 2·|R'|; that is the definition's |∩| > 2/3·|R'| for every size."""
    for size in range(1, 200):
        for inter in range(size + 1):
            assert (3 * inter > 2 * size) == (inter > 2 / 3 * size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = torch.from_numpy(clustered(400, noise=0.8, seed=9))
    cpu = to_dense(jaccard_distance(x))
    gpu = to_dense(jaccard_distance(x.cuda()))
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)


# --- self_paced_labels ---------------------------------------------------------------------


def oracle_self_paced(dense: np.ndarray, eps, gap, min_samples, threshold):
    """The criterion with explicit member sets; returns (partition of kept clusters, threshold)."""
    n = len(dense)

    def run(e: float) -> list[int]:
        lab = DBSCAN(eps=e, min_samples=min_samples, metric="precomputed").fit_predict(dense)
        nxt = lab.max() + 1
        out = []
        for value in lab:
            out.append(value if value >= 0 else nxt)
            nxt += value < 0
        return out

    c, t, lo = run(eps), run(eps - gap), run(eps + gap)

    def members(lab: list[int], i: int) -> set[int]:
        return {j for j in range(n) if lab[j] == lab[i]}

    comp = [
        1 - len(members(c, i) & members(t, i)) / len(members(c, i) | members(t, i))
        for i in range(n)
    ]
    indep = [
        1 - len(members(c, i) & members(lo, i)) / len(members(c, i) | members(lo, i))
        for i in range(n)
    ]
    clusters = sorted(set(c))
    comp_k = {k: min(comp[i] for i in range(n) if c[i] == k) for k in clusters}
    indep_k = {k: min(indep[i] for i in range(n) if c[i] == k) for k in clusters}
    if threshold is None:
        multi = sorted(indep_k[k] for k in clusters if c.count(k) > 1)
        if multi:
            threshold = multi[min(len(multi) - 1, int(np.round(len(multi) * 0.9)))]
    groups: dict[int, set[int]] = {}
    for i in range(n):
        if threshold is not None and indep_k[c[i]] <= threshold and comp[i] <= comp_k[c[i]]:
            groups.setdefault(c[i], set()).add(i)
        else:
            groups[-1 - i] = {i}
    return {frozenset(g) for g in groups.values()}, threshold


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == v).tolist()) for v in np.unique(labels)}


def line_distances(seed: int, n: int = 80) -> np.ndarray:
    """Points on a line in loose groups, so that eps ± gap really changes the clustering."""
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.integers(0, 12, n) * 1.0 + rng.normal(scale=0.22, size=n))
    return np.minimum(1.0, np.abs(pos[:, None] - pos[None]) * 0.9)


def as_sparse(dense: np.ndarray) -> sp.csr_matrix:
    rows, cols = np.nonzero(dense < 1)
    return sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=dense.shape)


@pytest.mark.parametrize("seed", range(8))
def test_self_paced_matches_definition(seed: int) -> None:
    dense = line_distances(seed)
    labels, threshold = self_paced_labels(as_sparse(dense), eps=0.3, eps_gap=0.05)
    expected, expected_threshold = oracle_self_paced(dense, 0.3, 0.05, 4, None)
    assert threshold == pytest.approx(expected_threshold)
    assert partition(labels) == expected
    # Given back at a later epoch, the threshold is kept and used as given.
    later = np.roll(dense, 3, axis=(0, 1))
    labels2, threshold2 = self_paced_labels(later, eps=0.3, eps_gap=0.05, indep_threshold=0.05)
    assert threshold2 == 0.05
    assert partition(labels2) == oracle_self_paced(later, 0.3, 0.05, 4, 0.05)[0]


def test_self_paced_filters_something() -> None:
    """The cases above exercise both rejection rules, not only the trivial keep-all."""
    rejected_any = False
    for seed in range(8):
        dense = line_distances(seed)
        labels, _ = self_paced_labels(dense, eps=0.3, eps_gap=0.05)
        plain = DBSCAN(eps=0.3, min_samples=4, metric="precomputed").fit_predict(dense)
        rejected_any |= int((np.bincount(labels) == 1).sum()) > int((plain < 0).sum())
    assert rejected_any


def test_label_layout_and_edge_cases() -> None:
    dense = line_distances(3)
    labels, _ = self_paced_labels(dense, eps=0.3, eps_gap=0.05)
    assert labels.dtype == np.int64 and labels.shape == (80,)
    sizes = np.bincount(labels)
    assert np.all(sizes > 0)  # compact: 0..max all used
    # Un-clustered instances come after the clusters, one value each.
    first_single = int(np.argmax(sizes == 1))
    assert np.all(sizes[first_single:] == 1)
    # Sparse (absent = 1) and dense inputs agree.
    np.testing.assert_array_equal(self_paced_labels(as_sparse(dense), 0.3, 0.05)[0], labels)

    far = np.ones((6, 6)) - np.eye(6)
    labels, threshold = self_paced_labels(far)
    assert threshold is None and sorted(labels) == list(range(6))


def test_self_paced_on_jaccard_output() -> None:
    x = clustered(240, groups=6, noise=0.35, seed=10)
    labels, threshold = self_paced_labels(jaccard_distance(x))
    assert 0 <= threshold <= 1
    assert int((np.bincount(labels) > 1).sum()) >= 4


def test_self_paced_rejects_bad_arguments() -> None:
    dense = line_distances(0, n=10)
    with pytest.raises(ValueError, match="eps"):
        self_paced_labels(dense, eps=0.99, eps_gap=0.02)
    with pytest.raises(ValueError, match="eps"):
        self_paced_labels(dense, eps=0.01, eps_gap=0.02)
    with pytest.raises(ValueError, match="min_samples"):
        self_paced_labels(dense, min_samples=0)
    with pytest.raises(ValueError, match="square"):
        self_paced_labels(np.ones((3, 4)))
