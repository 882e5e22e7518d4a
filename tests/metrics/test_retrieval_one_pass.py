"""The retrieval metrics gathered block by block (RetrievalAccumulator), DistanceRows.observed, and
rank_features' single pass over streamed distances on a retrieval set."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from reid.engine.evaluation import EvalOptions, ExtractedFeatures, rank_features
from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import DistanceRows
from reid.metrics.retrieval_eval import RetrievalAccumulator, RetrievalResult, retrieval_metrics


def _tied_problem(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued distances (many ties, true matches tied with other classes) and labels with
    a few singleton classes (R = 0)."""
    feats = rng.integers(0, 3, (num, 3)).astype(np.float32)
    dist = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    labels = rng.integers(0, max(2, num // 5), num)
    labels[: 2] = [1000, 1001]  # two classes of one image
    return dist, rng.permutation(labels)


def _random_blocks(rng: np.random.Generator, num: int) -> list[tuple[int, int]]:
    """A shuffled partition of ``range(num)`` into blocks of random sizes."""
    cuts = np.sort(rng.choice(np.arange(1, num), size=rng.integers(0, min(8, num - 1) + 1), replace=False))
    edges = [0, *cuts.tolist(), num]
    blocks = list(zip(edges[:-1], edges[1:]))
    return [blocks[i] for i in rng.permutation(len(blocks))]


def _assert_same(a: RetrievalResult, b: RetrievalResult) -> None:
    assert a.recall == b.recall
    for x, y in ((a.map_at_r, b.map_at_r), (a.r_precision, b.r_precision)):
        assert (math.isnan(x) and math.isnan(y)) or x == y
    assert (a.num_queries, a.num_excluded) == (b.num_queries, b.num_excluded)
    np.testing.assert_array_equal(a.map_at_r_per_query, b.map_at_r_per_query)
    np.testing.assert_array_equal(a.r_precision_per_query, b.r_precision_per_query)
    np.testing.assert_array_equal(a.first_hit_rank, b.first_hit_rank)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_the_accumulator_equals_retrieval_metrics_in_any_block_order_and_size(dtype):
    rng = np.random.default_rng(7)
    for trial in range(12):
        num = int(rng.integers(3, 40))
        dist, labels = _tied_problem(rng, num)
        dist = dist.astype(dtype)
        ks = (1, 2) if num < 5 else (1, 2, 4)
        expected = retrieval_metrics(dist, labels, ks)
        accumulator = RetrievalAccumulator(labels, ks)
        for start, stop in _random_blocks(rng, num):
            rows = dist[start:stop]
            accumulator.add(start, torch.from_numpy(rows.copy()) if trial % 2 else rows)
        _assert_same(accumulator.result(), expected)


def test_the_accumulator_leaves_the_rows_it_is_given_unchanged():
    rng = np.random.default_rng(1)
    dist, labels = _tied_problem(rng, 20)
    rows = dist[5:12].copy()
    accumulator = RetrievalAccumulator(labels)
    accumulator.add(5, rows)
    np.testing.assert_array_equal(rows, dist[5:12])


def test_the_accumulator_matches_a_streamed_retrieval_metrics_with_blocks_of_other_sizes():
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.integers(0, 4, (57, 4)).astype(np.float32))
    labels = rng.integers(0, 9, 57)
    rows = DistanceRows(lambda a, b: compute_distance_matrix(feats[a:b], feats), (57, 57), block_rows=10)
    expected = retrieval_metrics(rows, labels, (1, 2, 4, 8))
    for block in (1, 7, 57):
        accumulator = RetrievalAccumulator(labels, (1, 2, 4, 8))
        for start in range(0, 57, block):
            accumulator.add(start, compute_distance_matrix(feats[start : start + block], feats))
        _assert_same(accumulator.result(), expected)


def test_result_refuses_missing_and_repeated_rows_and_names_them():
    rng = np.random.default_rng(2)
    dist, labels = _tied_problem(rng, 30)
    accumulator = RetrievalAccumulator(labels)
    accumulator.add(0, dist[0:10])
    accumulator.add(20, dist[20:30])
    assert accumulator.incomplete() is not None
    with pytest.raises(ValueError, match=r"10 rows never added \(10:20\)"):
        accumulator.result()
    accumulator.add(10, dist[10:20])
    assert accumulator.incomplete() is None
    accumulator.result()
    accumulator.add(15, dist[15:17])
    with pytest.raises(ValueError, match=r"2 rows added more than once \(15:17\)"):
        accumulator.result()
    with pytest.raises(ValueError, match="never added"):
        RetrievalAccumulator(labels).result()


def test_add_refuses_rows_that_do_not_fit_the_matrix():
    labels = np.arange(6) % 2
    accumulator = RetrievalAccumulator(labels, (1, 2))
    with pytest.raises(ValueError, match="outside"):
        accumulator.add(4, np.zeros((3, 6)))
    with pytest.raises(ValueError, match="outside"):
        accumulator.add(-1, np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        accumulator.add(0, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        accumulator.add(0, np.full((2, 6), np.nan))
    accumulator.add(0, np.zeros((0, 6)))  # an empty block adds nothing
    assert "6 rows never added (0:6)" in accumulator.incomplete()


def test_the_observer_gets_each_computed_block_once():
    computed: list[tuple[int, int]] = []
    seen: list[tuple[int, int, float]] = []

    def rows_of(start, stop):
        computed.append((start, stop))
        return np.arange(start * 10, stop * 10, dtype=np.float64).reshape(stop - start, 10)

    rows = DistanceRows(rows_of, (10, 10), block_rows=4)
    observed = rows.observed(lambda start, block: seen.append((start, len(block), float(block[0, 0]))))
    assert (observed.shape, observed.block_rows, observed.dtype) == (rows.shape, rows.block_rows, rows.dtype)
    first = observed[0:4]
    assert observed[0:4] is first  # a cache hit: not handed over again
    observed[4:8]
    observed[8:10]
    assert seen == [(0, 4, 0.0), (4, 4, 40.0), (8, 2, 80.0)]
    assert computed == [(0, 4), (4, 8), (8, 10)]
    observed[0:4]  # computed again after other blocks: handed over again
    assert seen[-1] == (0, 4, 0.0) and len(seen) == 4
    rows[4:8]  # the original does not report to the observer
    assert len(seen) == 4


# --------------------------------------------------------------------------------------------
# rank_features: one pass over streamed distances
# --------------------------------------------------------------------------------------------


class _CountedDistances:
    """Squared Euclidean distances that count their calls and the query rows they were asked."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def __call__(self, a, b):
        self.calls += 1
        self.rows += len(a)
        return compute_distance_matrix(a, b, "euclidean")


def _retrieval_set(seed: int, num: int) -> ExtractedFeatures:
    rng = np.random.default_rng(seed)
    feats = torch.from_numpy(rng.integers(0, 3, (num, 3)).astype(np.float32))  # ties
    pids = rng.permutation(np.concatenate([np.repeat(np.arange(num // 4), 4), 100 + np.arange(num % 4)]))
    return ExtractedFeatures(feats, pids, np.arange(num))  # a retrieval set: camid = own index


@pytest.mark.parametrize("num", [37, 64])
def test_rank_features_streams_a_retrieval_set_in_one_pass_with_the_numbers_of_the_matrix(num):
    test = _retrieval_set(num, num)
    dense_options = EvalOptions(ranks=(1, 2, 4), recall_ks=(1, 2, 4, 8), max_matrix_mb=2048.0)
    dense_distances = _CountedDistances()
    dense = rank_features(test, test, dense_options, dense_distances, retrieval=True)
    assert dense_distances.calls == 1

    budget = 4.0 * 5 * num / 2**20  # about five rows of float32 distances per block: it streams
    streamed_options = EvalOptions(ranks=(1, 2, 4), recall_ks=(1, 2, 4, 8), max_matrix_mb=budget)
    block_rows = DistanceRows.from_features(test.features, test.features, None, block_mb=budget).block_rows
    assert 1 < block_rows < num
    streamed_distances = _CountedDistances()
    streamed = rank_features(test, test, streamed_options, streamed_distances, retrieval=True)
    assert streamed == dense
    assert streamed.keys() >= {"rank1", "mAP", "recall@8", "map@r", "r_precision", "nmi"}
    np.testing.assert_array_equal(streamed.cmc, dense.cmc)
    # every block computed once: not once for the ranking and again for the retrieval metrics
    assert streamed_distances.calls == -(-num // block_rows)
    assert streamed_distances.rows == num


def test_rank_features_falls_back_to_a_second_pass_when_the_accumulator_misses_rows(monkeypatch, caplog):
    test = _retrieval_set(5, 30)
    options = EvalOptions(ranks=(1, 2), recall_ks=(1, 2, 4), max_matrix_mb=4.0 * 4 * 30 / 2**20)
    expected = rank_features(test, test, options, _CountedDistances(), retrieval=True)
    monkeypatch.setattr(DistanceRows, "observed", lambda self, callback: self)  # nothing reaches it
    distances = _CountedDistances()
    with caplog.at_level(logging.WARNING, logger="reid.engine.evaluation"):
        metrics = rank_features(test, test, options, distances, retrieval=True)
    assert metrics == expected
    assert distances.rows == 2 * 30  # the ranking's pass and the retrieval metrics' own
    (record,) = [r for r in caplog.records if r.name == "reid.engine.evaluation" and r.levelno == logging.WARNING]
    assert "never added" in record.getMessage() and "second pass" in record.getMessage()


def test_a_streamed_reid_target_is_ranked_in_one_pass_as_before():
    test = _retrieval_set(9, 24)
    options = EvalOptions(ranks=(1, 2), recall_ks=(1, 2), max_matrix_mb=4.0 * 4 * 24 / 2**20)
    distances = _CountedDistances()
    rank_features(test, test, options, distances)  # not a retrieval set: ranking only, one pass
    assert distances.rows == 24
