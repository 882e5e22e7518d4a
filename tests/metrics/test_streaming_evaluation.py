"""Streaming evaluation (:class:`reid.metrics.DistanceRows`) equals the dense evaluator exactly.

The dense evaluator is itself checked against torchreid and against hand oracles in
``test_rank.py``; here every problem is evaluated twice, once on the whole matrix and once with
rows produced block by block, and the results must be identical bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.metrics import DistanceRows, RankingResult, compute_distance_matrix, evaluate, evaluate_rank
from tests.metrics.test_rank import (
    TINY_DIST,
    TINY_G_CAMS,
    TINY_G_PIDS,
    TINY_Q_CAMS,
    TINY_Q_PIDS,
    _cuhk03_problem,
    _random_problem,
)


class CountingRows:
    """Rows of a matrix handed out by block; records every block asked for."""

    def __init__(self, dist: np.ndarray) -> None:
        self.dist = dist
        self.calls: list[tuple[int, int]] = []

    def __call__(self, start: int, stop: int) -> np.ndarray:
        self.calls.append((start, stop))
        return self.dist[start:stop].copy()


def streamed(dist: np.ndarray, block_rows: int) -> tuple[DistanceRows, CountingRows]:
    rows = CountingRows(dist)
    return DistanceRows(rows, dist.shape, block_rows, dtype=dist.dtype), rows


def assert_identical(dense: RankingResult, stream: RankingResult) -> None:
    assert np.array_equal(dense.cmc, stream.cmc) and dense.cmc.dtype == stream.cmc.dtype
    assert dense.mAP == stream.mAP and dense.mINP == stream.mINP
    assert np.array_equal(dense.ap, stream.ap, equal_nan=True)
    assert np.array_equal(dense.inp, stream.inp, equal_nan=True)
    assert np.array_equal(dense.first_match_rank, stream.first_match_rank)
    assert np.array_equal(dense.valid, stream.valid) and dense.num_valid == stream.num_valid


def test_hand_oracle_case_block_by_block() -> None:
    source, rows = streamed(TINY_DIST, block_rows=1)
    result = evaluate(source, TINY_Q_PIDS, TINY_G_PIDS, TINY_Q_CAMS, TINY_G_CAMS, max_rank=6)
    # the hand-computed numbers of test_rank.py: mAP 17/24, mINP 7/12, CMC [2/3, 1, ...]
    assert result.mAP == pytest.approx(17 / 24) and result.mINP == pytest.approx(7 / 12)
    assert result.cmc == pytest.approx([2 / 3, 1, 1, 1, 1, 1])
    assert np.isnan(result.ap[2]) and not result.valid[2]  # the query without a true match
    # one block at a time, each row block asked for once (tie rows reuse the cached block)
    assert sorted(set(rows.calls)) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("kind", ["float32", "int_ties", "float64_ties"])
@pytest.mark.parametrize("tie_break", ["numpy", "stable"])
def test_equals_dense_on_random_problems_with_ties(kind: str, tie_break: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        dist, q_pids, g_pids, q_cams, g_cams = _random_problem(rng, kind)
        try:
            dense = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, tie_break=tie_break)
        except AssertionError:  # no valid query: streaming must fail the same way
            with pytest.raises(AssertionError):
                evaluate(streamed(dist, 3)[0], q_pids, g_pids, q_cams, g_cams, max_rank=10, tie_break=tie_break)
            continue
        for block in (1, 2, 7, dist.shape[0]):
            stream = evaluate(
                streamed(dist, block)[0], q_pids, g_pids, q_cams, g_cams, max_rank=10, tie_break=tie_break
            )
            assert_identical(dense, stream)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cuhk03_metric_equals_dense(seed: int) -> None:
    problem = _cuhk03_problem(seed)
    dense = evaluate(*problem, max_rank=10, use_metric_cuhk03=True, seed=seed)
    stream = evaluate(streamed(problem[0], 5)[0], *problem[1:], max_rank=10, use_metric_cuhk03=True, seed=seed)
    assert_identical(dense, stream)


def test_evaluate_rank_takes_rows_too() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = _cuhk03_problem(1)
    cmc, m_ap = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    cmc_s, m_ap_s = evaluate_rank(streamed(dist, 4)[0], q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert np.array_equal(cmc, cmc_s) and m_ap == m_ap_s


def test_large_random_problem_from_features() -> None:
    """A larger problem built like a re-id test set (identity centres plus noise), many
    same-camera exclusions and queries without a match, distances computed block by block."""
    gen = torch.Generator().manual_seed(5)
    num_ids, dim = 150, 32
    centres = torch.randn(num_ids, dim, generator=gen)
    g_pids = torch.randint(0, num_ids, (6000,), generator=gen)
    q_pids = torch.randint(0, num_ids + 20, (700,), generator=gen)  # some identities not in the gallery
    gallery = centres[g_pids] + 0.9 * torch.randn(6000, dim, generator=gen)
    query = centres[q_pids % num_ids] + 0.9 * torch.randn(700, dim, generator=gen)
    # round the features so that some distances tie exactly
    gallery, query = (torch.round(x * 4) / 4 for x in (gallery, query))
    g_cams, q_cams = torch.randint(0, 4, (6000,), generator=gen), torch.randint(0, 4, (700,), generator=gen)
    dense_dist = compute_distance_matrix(query, gallery, "euclidean")
    calls = []

    def distances(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        calls.append(len(q))
        return compute_distance_matrix(q, g, "euclidean")

    rows = DistanceRows.from_features(query, gallery, distances, block_mb=4 * 6000 * 64 / 2**20)
    assert rows.block_rows == 64
    for tie_break in ("numpy", "stable"):
        dense = evaluate(dense_dist, q_pids, g_pids, q_cams, g_cams, tie_break=tie_break)
        assert_identical(dense, evaluate(rows, q_pids, g_pids, q_cams, g_cams, tie_break=tie_break))
    assert max(calls) == 64 and not (~np.isnan(dense.ap)).all()


def test_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="block_rows"):
        DistanceRows(lambda a, b: np.zeros((b - a, 3)), (4, 3), 0)
    bad = DistanceRows(lambda a, b: np.zeros((b - a, 2)), (4, 3), 2)
    with pytest.raises(ValueError, match="expected"):
        evaluate(bad, [0, 1, 2, 3], [0, 1, 2], [0, 0, 0, 0], [1, 1, 1])
    with pytest.raises(TypeError, match="row slices"):
        bad[[0, 1]]


def test_float64_features_stream_as_the_dense_float64_matrix() -> None:
    # two distances that differ in float64 but are equal in float32: casting the streamed rows to
    # float32 turned a strict order into a tie, and the evaluation into another one
    query = torch.tensor([[0.0]], dtype=torch.float64)
    gallery = torch.tensor([[1.0], [1.0 + 1e-12], [3.0]], dtype=torch.float64)
    assert np.float32(1.0) == np.float32(1.0 + 1e-12)  # the collision this guards against

    def distances(q, g):
        return torch.cdist(q, g)

    rows = DistanceRows.from_features(query, gallery, distances)
    assert rows.dtype == np.float64 and rows[0:1].dtype == np.float64
    assert rows[0:1][0, 1] > rows[0:1][0, 0]  # the order survives
    dense = distances(query, gallery).numpy()
    args = (np.array([1]), np.array([2, 1, 3]), np.array([0]), np.array([1, 1, 1]))
    assert_identical(evaluate(dense, *args, max_rank=3), evaluate(rows, *args, max_rank=3))
    # the true match (gallery 1) ranks second, behind the closer non-match: AP 1/2
    assert evaluate(rows, *args, max_rank=3).mAP == pytest.approx(0.5)
    f32 = DistanceRows.from_features(query.float(), gallery.float(), distances)
    assert f32.dtype == np.float32
