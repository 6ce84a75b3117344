"""FeatureIndex: exact cosine ranking, id mapping, IVF, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.index import FEATURES_FILE, FeatureIndex, gpu_count


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
