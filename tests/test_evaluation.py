"""Tests for trainer.evaluation.rank_metrics against a per-query scikit-learn oracle."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from trainer import evaluation
from trainer.evaluation import rank_metrics

KEYS = ("mAP", "rank1", "rank5", "rank10")


def oracle(dist, q_ids, g_ids, q_cams=None, g_cams=None) -> dict[str, float]:
    """Straightforward reference: one query at a time, sklearn AP, explicit CMC loop."""
    dist, q_ids, g_ids = np.asarray(dist, dtype=np.float64), np.asarray(q_ids), np.asarray(g_ids)
    aps: list[float] = []
    first_ranks: list[int] = []
    for i in range(dist.shape[0]):
        keep = np.ones(dist.shape[1], dtype=bool)
        if q_cams is not None:
            keep = ~((g_ids == q_ids[i]) & (np.asarray(g_cams) == q_cams[i]))
        labels = g_ids[keep] == q_ids[i]
        if not labels.any():
            continue
        d = dist[i, keep]
        aps.append(average_precision_score(labels, -d))
        for rank, j in enumerate(np.argsort(d, kind="stable"), start=1):
            if labels[j]:
                first_ranks.append(rank)
                break
    n = len(aps)
    assert n > 0
    ranks = np.asarray(first_ranks)
    return {
        "mAP": float(np.mean(aps)),
        "rank1": float(np.sum(ranks <= 1) / n),
        "rank5": float(np.sum(ranks <= 5) / n),
        "rank10": float(np.sum(ranks <= 10) / n),
    }


def random_case(seed: int, n_query: int = 23, n_gallery: int = 157, *, ties: bool, cams: bool):
    rng = np.random.default_rng(seed)
    dist = rng.random((n_query, n_gallery))
    if ties:
        dist = np.round(dist, 1)  # about 11 distinct values: many tie groups
    g_ids = rng.integers(0, 12, n_gallery)
    q_ids = rng.integers(0, 15, n_query)  # ids 12..14 never occur in the gallery -> skipped
    q_cams = rng.integers(0, 3, n_query) if cams else None
    g_cams = rng.integers(0, 3, n_gallery) if cams else None
    return dist, q_ids, g_ids, q_cams, g_cams


@functools.cache
def random_case_expected(seed: int, ties: bool, cams: bool) -> dict[str, float]:
    """Oracle result, computed once per case and shared by all chunk sizes."""
    return oracle(*random_case(seed, ties=ties, cams=cams))


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert isinstance(got[key], float)
        assert 0.0 <= got[key] <= 1.0
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("cams", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 1, 4, 7])
def test_matches_oracle(seed: int, ties: bool, cams: bool, chunk_rows: int | None) -> None:
    dist, q_ids, g_ids, q_cams, g_cams = random_case(seed, ties=ties, cams=cams)
    got = rank_metrics(dist, q_ids, g_ids, q_cams, g_cams, chunk_rows=chunk_rows)
    assert_close(got, random_case_expected(seed, ties, cams))


def test_default_chunking_uses_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    dist, q_ids, g_ids, q_cams, g_cams = random_case(7, n_query=40, ties=True, cams=True)
    expected = oracle(dist, q_ids, g_ids, q_cams, g_cams)
    calls: list[int] = []
    original = evaluation._chunk_stats

    def spy(block, *args):
        calls.append(block.shape[0])
        return original(block, *args)

    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 6 * dist.shape[1] + 5)
    monkeypatch.setattr(evaluation, "_chunk_stats", spy)
    assert_close(rank_metrics(dist, q_ids, g_ids, q_cams, g_cams), expected)
    assert calls == [6] * 6 + [4]


def test_many_positives_and_heavy_ties() -> None:
    rng = np.random.default_rng(11)
    dist = rng.integers(0, 4, (30, 200)).astype(np.float32)  # 4 distinct values only
    q_ids, g_ids = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    q_cams, g_cams = rng.integers(0, 2, 30), rng.integers(0, 2, 200)
    for cams in ((None, None), (q_cams, g_cams)):
        got = rank_metrics(dist, q_ids, g_ids, *cams, chunk_rows=8)
        assert_close(got, oracle(dist, q_ids, g_ids, *cams))


def test_perfect_ranking() -> None:
    dist = np.array([[0.1, 0.5, 0.9, 0.2], [0.8, 0.1, 0.7, 0.9]])
    got = rank_metrics(dist, [1, 2], [1, 2, 3, 1])
    assert got == {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0}


def test_known_average_precision() -> None:
    # Ranking: miss, hit, hit -> AP = (1/2 + 2/3) / 2 = 7/12 = 0.5833...
    got = rank_metrics(np.array([[0.1, 0.2, 0.3]]), [5], [4, 5, 5])
    assert got["mAP"] == pytest.approx(7 / 12)
    assert (got["rank1"], got["rank5"], got["rank10"]) == (0.0, 1.0, 1.0)


def test_ties_are_one_threshold_for_ap_but_stable_for_cmc() -> None:
    # The hit shares distance 0.2 with a miss: sklearn counts both -> AP = 1/3, not 1/2.
    got = rank_metrics(np.array([[0.1, 0.2, 0.2]]), [1], [0, 1, 0])
    assert got["mAP"] == pytest.approx(1 / 3)
    # CMC uses gallery order inside a tie: hit first -> rank 1, hit second -> rank 2.
    assert rank_metrics(np.array([[0.2, 0.2]]), [1], [1, 0])["rank1"] == 1.0
    assert rank_metrics(np.array([[0.2, 0.2]]), [1], [0, 1])["rank1"] == 0.0


def test_infinite_distances() -> None:
    # Groups: {0: miss}, {inf: hit, hit} -> AP = 2 * (2/3) / 2.
    got = rank_metrics(np.array([[np.inf, 0.0, np.inf]]), [1], [1, 0, 1])
    assert got["mAP"] == pytest.approx(2 / 3)
    assert got["rank1"] == 0.0
    assert got["rank5"] == 1.0
    # Padding of the shorter positive list equals a real +inf / int max distance: query 0
    # (miss, miss, hit at the max value) has AP 1/3, query 1 is perfect.
    q_ids, g_ids = [1, 2], [1, 2, 2]
    inf_dist = np.array([[np.inf, 0.0, 1.0], [0.5, 0.2, 0.1]])
    assert rank_metrics(inf_dist, q_ids, g_ids)["mAP"] == pytest.approx(2 / 3)
    top = np.iinfo(np.int64).max
    int_dist = np.array([[top, 0, 1], [5, 2, 1]], dtype=np.int64)
    assert rank_metrics(int_dist, q_ids, g_ids)["mAP"] == pytest.approx(2 / 3)


def test_same_camera_matches_are_ignored() -> None:
    # Gallery item 0 has the query's id and camera: removed, not counted as hit or miss.
    dist = np.array([[0.0, 0.3, 0.1]])
    got = rank_metrics(dist, [7], [7, 7, 3], [0], [0, 1, 0])
    assert got["mAP"] == pytest.approx(0.5)
    assert got["rank1"] == 0.0
    # Same-camera items of another identity stay in the ranking as misses.
    assert rank_metrics(dist, [7], [3, 7, 7], [0], [0, 0, 1])["mAP"] == pytest.approx(0.5)
    # Without cameras nothing is removed: hit, miss, hit -> (1 + 2/3) / 2.
    assert rank_metrics(dist, [7], [7, 7, 3])["mAP"] == pytest.approx(5 / 6)


def test_queries_without_valid_match_are_skipped() -> None:
    dist = np.array([[0.1, 0.2], [0.2, 0.1], [0.1, 0.2]])
    # Query 1 (id 9) is absent from the gallery; query 2's only match is same-camera.
    got = rank_metrics(dist, [1, 9, 2], [1, 2], [0, 0, 1], [1, 1])
    assert got == {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0}


def test_torch_and_numpy_inputs_agree(tmp_path) -> None:
    dist, q_ids, g_ids, q_cams, g_cams = random_case(3, ties=True, cams=True)
    expected = rank_metrics(dist, q_ids, g_ids, q_cams, g_cams)
    as_t = torch.from_numpy
    got_torch = rank_metrics(as_t(dist), as_t(q_ids), as_t(g_ids), as_t(q_cams), as_t(g_cams))
    assert got_torch == expected
    got_f32 = rank_metrics(torch.from_numpy(dist).float(), q_ids, g_ids, q_cams, g_cams)
    assert_close(got_f32, expected)  # rounded values stay exact ties in float32
    got_lists = rank_metrics(dist.tolist(), q_ids.tolist(), g_ids.tolist(), list(q_cams), g_cams)
    assert got_lists == expected
    # Transposed / non-contiguous tensor and string labels.
    got_nc = rank_metrics(torch.from_numpy(dist.T.copy()).T, q_ids, g_ids, q_cams, g_cams)
    assert got_nc == expected
    got_str = rank_metrics(dist, q_ids.astype(str), g_ids.astype(str), q_cams, g_cams)
    assert got_str == expected

    mm = np.memmap(tmp_path / "dist.f32", dtype=np.float32, mode="w+", shape=dist.shape)
    mm[:] = dist
    mm.flush()
    ro = np.memmap(tmp_path / "dist.f32", dtype=np.float32, mode="r", shape=dist.shape)
    assert_close(rank_metrics(ro, q_ids, g_ids, q_cams, g_cams, chunk_rows=5), expected)


def test_integer_and_half_distances() -> None:
    rng = np.random.default_rng(5)
    dist = rng.integers(0, 6, (12, 40))
    q_ids, g_ids = rng.integers(0, 4, 12), rng.integers(0, 4, 40)
    expected = oracle(dist, q_ids, g_ids)
    assert_close(rank_metrics(dist, q_ids, g_ids, chunk_rows=5), expected)
    assert_close(rank_metrics(torch.from_numpy(dist).int(), q_ids, g_ids), expected)
    assert_close(rank_metrics(dist.astype(np.float16), q_ids, g_ids), expected)
    assert_close(rank_metrics(torch.from_numpy(dist).half(), q_ids, g_ids), expected)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros(3), [1], [1, 2, 3]), {}, "2-D"),
        ((np.zeros((1, 2, 3)), [1], [1, 2]), {}, "2-D"),
        ((np.zeros((2, 3)), [1], [1, 2, 3]), {}, "query_ids has 1 entries"),
        ((np.zeros((2, 3)), [1, 2], [1, 2]), {}, "gallery_ids has 2 entries"),
        ((np.zeros((2, 3)), [[1, 2]], [1, 2, 3]), {}, "query_ids must be 1-D"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0]), {}, "together"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], None, [0, 0, 0]), {}, "together"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0], [0, 0, 0]), {}, "query_cams has 1"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 1], [0, 0]), {}, "gallery_cams has 2"),
        ((np.zeros((2, 3)), [1, 2], [1, 2, 3]), {"chunk_rows": 0}, "chunk_rows"),
        ((np.zeros((2, 3), dtype=complex), [1, 2], [1, 2, 3]), {}, "real"),
        ((np.zeros((2, 3)), [1, 2], [3, 4, 5]), {}, "no valid query"),
        ((np.zeros((1, 2)), [1], [1, 2], [0], [0, 1]), {}, "no valid query"),
        ((np.zeros((0, 3)), [], [1, 2, 3]), {}, "no valid query"),
        ((np.zeros((2, 0)), [1, 2], []), {}, "no valid query"),
    ],
)
def test_errors(args, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rank_metrics(*args, **kwargs)


@pytest.mark.parametrize("as_torch", [False, True])
def test_nan_rejected_in_any_chunk(as_torch: bool) -> None:
    dist = np.random.default_rng(0).random((10, 6))
    dist[8, 2] = np.nan
    if as_torch:
        dist = torch.from_numpy(dist)
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(dist, list(range(10)), [0, 1, 2, 3, 4, 5], chunk_rows=3)
