"""FeatureIndex: exact cosine ranking, id mapping, IVF, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.index import FEATURES_FILE, FeatureIndex, choose_kind, gpu_count


def unit_rows(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_equals_brute_force_cosine() -> None:
    gallery, queries = unit_rows(500), unit_rows(7, seed=1)
    ids = np.arange(1000, 1500)[::-1].copy()  # external ids in another order
    index = FeatureIndex.build(gallery, ids)
    assert (index.kind, index.size, index.dim) == ("flat", 500, 32)
    scores, found = index.search(queries, 10)
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, 1), atol=1e-5)


def test_k_larger_than_index_and_errors() -> None:
    index = FeatureIndex.build(unit_rows(3), [7, 8, 9])
    scores, found = index.search(unit_rows(2, seed=2), 10)
    assert found.shape == (2, 3) and set(found[0]) == {7, 8, 9}
    assert np.all(np.diff(scores, axis=1) <= 0)
    with pytest.raises(ValueError, match="dimension"):
        index.search(unit_rows(1, d=8), 1)
    with pytest.raises(ValueError, match="one id per row"):
        FeatureIndex.build(unit_rows(3), [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        FeatureIndex.build(unit_rows(3), [1, 1, 2])
    bad = unit_rows(3)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FeatureIndex.build(bad, [1, 2, 3])


def test_ivf_with_all_lists_probed_is_exact() -> None:
    gallery, queries = unit_rows(2000), unit_rows(5, seed=3)
    index = FeatureIndex.build(gallery, np.arange(2000), ivf_threshold=1000)
    assert index.kind == "ivf"
    _, found = index.search(queries, 5, nprobe=100_000)
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(found, expected)


def test_save_and_load(tmp_path: Path) -> None:
    gallery = unit_rows(300)
    index = FeatureIndex.build(gallery, np.arange(300) * 3)
    folder = index.save(tmp_path / "idx", features=gallery)
    loaded = FeatureIndex.load(folder)
    q = unit_rows(4, seed=4)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.load(folder / FEATURES_FILE), gallery)
    with pytest.raises(FileExistsError):
        index.save(folder)
    (folder / "ids.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="readable index"):
        FeatureIndex.load(folder)


@pytest.mark.skipif(gpu_count() == 0, reason="needs faiss with a GPU")
def test_gpu_build_matches_cpu() -> None:
    gallery, q = unit_rows(1000), unit_rows(3, seed=5)
    cpu = FeatureIndex.build(gallery, np.arange(1000), use_gpu=False)
    gpu = FeatureIndex.build(gallery, np.arange(1000), use_gpu=True)
    np.testing.assert_array_equal(cpu.search(q, 10)[1], gpu.search(q, 10)[1])


def test_the_flat_scan_ranks_as_faiss_does_in_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import index as index_module

    x = unit_rows(500, 64, 3)
    index = FeatureIndex.build(x, np.arange(500) + 1000)
    queries = unit_rows(37, 64, 4)
    faiss_scores, faiss_rows = index.index.search(queries, 10)  # FAISS's own scan
    monkeypatch.setattr(index_module, "SCAN_CHUNK_SCORES", 500 * 8)  # chunks of 8 queries
    scores, ids = index.search(queries, 10)
    assert np.array_equal(ids, faiss_rows + 1000)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-6)


@pytest.mark.parametrize("threshold", [10**9, 1000], ids=["flat", "ivf"])
def test_allowed_rows_are_searched_inside_the_index(threshold: int) -> None:
    """A mask of 3% of the rows: k results, all allowed, the exact best of them."""
    gallery, queries = unit_rows(2000), unit_rows(4, seed=5)
    index = FeatureIndex.build(gallery, np.arange(2000), ivf_threshold=threshold)
    allowed = np.zeros(2000, bool)
    allowed[np.random.default_rng(1).choice(2000, 60, replace=False)] = True
    _, found = index.search(queries, 10, nprobe=100_000, allowed=allowed)
    rows = np.flatnonzero(allowed)
    sims = queries @ gallery[rows].T
    expected = rows[np.argsort(-sims, axis=1, kind="stable")[:, :10]]
    np.testing.assert_array_equal(found, expected)
    # fewer allowed rows than k: the others are missing (-1), never a blocked row
    few = np.zeros(2000, bool)
    few[[3, 7]] = True
    _, found = index.search(queries, 5, nprobe=100_000, allowed=few)
    assert all(set(r[r >= 0]) == {3, 7} and (r < 0).sum() == 3 for r in found)
    with pytest.raises(ValueError, match="one flag per row"):
        index.search(queries, 5, allowed=few[:10])


def test_with_rows_keeps_the_kind_and_the_trained_quantiser() -> None:
    gallery = unit_rows(2000)
    ivf = FeatureIndex.build(gallery, np.arange(2000), ivf_threshold=1000)
    grown = ivf.with_rows(np.concatenate([gallery[100:], unit_rows(50, seed=9)]))
    assert grown.kind == "ivf" and grown.size == 1950
    assert np.array_equal(grown.ids, np.arange(1950))
    _, found = grown.search(gallery[100:105], 1, nprobe=100_000)
    assert list(found[:, 0]) == [0, 1, 2, 3, 4]
    flat = FeatureIndex.build(gallery[:10], np.arange(10))
    assert flat.with_rows(gallery[:20]).kind == "flat"
    assert flat.with_rows(gallery[:20], ivf_threshold=15).kind == "ivf"
    assert flat.with_rows(gallery[:0]).size == 0


def test_choose_kind_by_size_and_memory() -> None:
    assert choose_kind(10, 2048) == "flat"
    assert choose_kind(10**6, 2048, ivf_threshold=10**7, memory_bytes=4 * 10**9) == "flat16"
    assert choose_kind(10**6, 2048, memory_bytes=10**10) == "ivf"
    assert choose_kind(10**7, 2048, memory_bytes=24 * 10**9) == "ivfpq"
    assert choose_kind(10, 8, requested="ivfpq") == "ivfpq"
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_kind(10, 8, requested="hnsw")


def _clustered(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    """Unit rows around 50 centres: what re-ID embeddings look like (identities)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat16", "ivf", "ivfpq"])
def test_every_kind_finds_the_exact_neighbours_on_small_data(kind: str, tmp_path: Path) -> None:
    gallery = _clustered(5000, d=256)
    queries = _clustered(20, d=256, seed=1)
    index = FeatureIndex.build(gallery, np.arange(5000), kind=kind)
    assert index.kind == kind
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]
    for loaded in (index, FeatureIndex.load(index.save(tmp_path / kind, gallery))):
        scores, found = loaded.search(queries, 10, nprobe=16)
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, expected, strict=True)])
        assert recall >= 0.95, (kind, recall)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    if kind == "ivfpq":  # exact re-scores from the stored fp16 features
        assert np.load(tmp_path / kind / FEATURES_FILE).dtype == np.float16
        assert index.bytes_per_vector < 256 * 2
        rows = found[:, 0]
        np.testing.assert_allclose(scores[:, 0], np.sum(queries * gallery[rows], axis=1), atol=2e-3)
    allowed = np.zeros(5000, bool)
    allowed[::7] = True
    _, found = index.search(queries, 5, nprobe=64, allowed=allowed)
    assert np.all(found[found >= 0] % 7 == 0)
