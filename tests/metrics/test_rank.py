"""Tests for reid.metrics.rank: hand-computed oracles and equality with torchreid."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
import pytest
import torch

from reid.metrics import NoValidQueryError, RankingResult, evaluate, evaluate_rank

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Cython evaluation ... is unavailable"
    from torchreid.reid.metrics.rank import evaluate_rank as torchreid_evaluate_rank


def _torchreid(*args, **kwargs):
    """torchreid's Python evaluation, its "Note:" print silenced; an exception is returned."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return torchreid_evaluate_rank(*args, use_cython=False, **kwargs)
    except (AssertionError, ValueError) as err:
        return err


def _ours(*args, **kwargs):
    try:
        return evaluate_rank(*args, **kwargs)
    except (AssertionError, ValueError) as err:
        return err


def _assert_same(ref, got) -> None:
    """Bit-identical (cmc, mAP), or the same kind of failure."""
    if isinstance(ref, Exception) or isinstance(got, Exception):
        assert isinstance(ref, Exception) and isinstance(got, Exception), (ref, got)
        assert isinstance(got, type(ref)), (ref, got)
        return
    assert got[0].dtype == ref[0].dtype == np.float32
    assert np.array_equal(got[0], ref[0]), (ref[0], got[0])
    assert type(got[1]) is type(ref[1])
    assert got[1] == ref[1], (ref[1], got[1])


def _random_problem(rng: np.random.Generator, kind: str) -> tuple:
    """A small random problem; ``kind`` picks the distances: continuous or full of ties."""
    num_q, num_g = int(rng.integers(1, 25)), int(rng.integers(1, 60))
    num_ids, num_cams = int(rng.integers(1, 12)), int(rng.integers(1, 4))
    labels = (
        rng.integers(0, num_ids, num_q),
        rng.integers(0, num_ids, num_g),
        rng.integers(0, num_cams, num_q),
        rng.integers(0, num_cams, num_g),
    )
    if kind == "float32":
        dist = rng.random((num_q, num_g)).astype(np.float32)
    elif kind == "int_ties":
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    else:  # float64 with ties
        dist = rng.integers(0, 3, (num_q, num_g)).astype(np.float64) / 2
    return (dist, *labels)


# ---------------------------------------------------------------------------------------------
# Hand-computed oracle
# ---------------------------------------------------------------------------------------------

# Query 0 (id 1, cam 0) sees the gallery in index order. Gallery 1 and 6 share its id and
# camera and are removed, so the kept ranking is g0 g2 g3 g4 g5 g7 with true matches
# (id 1, other camera) g2, g4, g7 at ranks 2, 4, 6:
#   AP = (1/2 + 2/4 + 3/6) / 3 = 1/2,  INP = 3/6 = 1/2, first match at rank 2.
# Query 1 (id 2, cam 1): its only true match g3 (id 2, cam 0) is nearest:
#   AP = 1, INP = 1/1 = 1, first match at rank 1 (nothing removed, 8 kept).
# Query 2 (id 9): no gallery entry of that id, skipped.
# Query 3 (id 3, cam 0): true matches g0 (rank 1) and g5 (rank 8 of 8 kept):
#   AP = (1/1 + 2/8) / 2 = 5/8, INP = 2/8 = 1/4.
# mAP = (1/2 + 1 + 5/8) / 3 = 17/24, mINP = (1/2 + 1 + 1/4) / 3 = 7/12.
# CMC (max_rank 6): first matches at 2, 1, 1 -> [2/3, 1, 1, 1, 1, 1].
TINY_G_PIDS = [3, 1, 1, 2, 1, 3, 1, 1]
TINY_G_CAMS = [1, 0, 1, 0, 1, 1, 0, 1]
TINY_Q_PIDS = [1, 2, 9, 3]
TINY_Q_CAMS = [0, 1, 0, 0]
TINY_DIST = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        [0.5, 0.6, 0.7, 0.1, 0.8, 0.9, 0.3, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.7, 0.8],
    ],
    dtype=np.float32,
)


def _tiny(**kwargs) -> RankingResult:
    return evaluate(TINY_DIST, TINY_Q_PIDS, TINY_G_PIDS, TINY_Q_CAMS, TINY_G_CAMS, **kwargs)


def test_hand_computed_ap_inp_cmc() -> None:
    result = _tiny(max_rank=6)
    assert result.num_valid == 3
    assert result.valid.tolist() == [True, True, False, True]
    assert result.ap[[0, 1, 3]].tolist() == pytest.approx([1 / 2, 1.0, 5 / 8], abs=1e-15)
    assert math.isnan(result.ap[2]) and math.isnan(result.inp[2])
    assert result.inp[[0, 1, 3]].tolist() == pytest.approx([1 / 2, 1.0, 1 / 4], abs=1e-15)
    assert result.first_match_rank.tolist() == [2, 1, 0, 1]
    assert result.mAP == pytest.approx(17 / 24, abs=1e-15)
    assert result.mINP == pytest.approx(7 / 12, abs=1e-15)
    assert result.cmc.tolist() == pytest.approx([2 / 3, 1, 1, 1, 1, 1], abs=1e-7)
    cmc, mAP = evaluate_rank(TINY_DIST, TINY_Q_PIDS, TINY_G_PIDS, TINY_Q_CAMS, TINY_G_CAMS, 6)
    assert np.array_equal(cmc, result.cmc) and mAP == result.mAP


def test_hand_computed_equals_torchreid() -> None:
    args = (
        TINY_DIST,
        np.array(TINY_Q_PIDS),
        np.array(TINY_G_PIDS),
        np.array(TINY_Q_CAMS),
        np.array(TINY_G_CAMS),
    )
    _assert_same(_torchreid(*args, max_rank=6), _ours(*args, max_rank=6))


def test_inputs_may_be_tensors_or_lists() -> None:
    ref = _tiny(max_rank=5)
    got = evaluate(
        torch.from_numpy(TINY_DIST),
        torch.tensor(TINY_Q_PIDS),
        torch.tensor(TINY_G_PIDS),
        TINY_Q_CAMS,
        torch.tensor(TINY_G_CAMS),
        max_rank=5,
        chunk_size=1,
    )
    assert np.array_equal(ref.cmc, got.cmc) and ref.mAP == got.mAP and ref.mINP == got.mINP


# ---------------------------------------------------------------------------------------------
# Equality with torchreid
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "int_ties", "float64_ties"])
def test_equals_torchreid_on_random_problems(kind: str) -> None:
    rng = np.random.default_rng({"float32": 0, "int_ties": 1, "float64_ties": 2}[kind])
    outcomes = set()
    for _ in range(60):
        problem = _random_problem(rng, kind)
        max_rank = int(rng.choice([1, 5, 50]))
        ref = _torchreid(*problem, max_rank=max_rank)
        got = _ours(*problem, max_rank=max_rank, chunk_size=int(rng.integers(1, 8)))
        _assert_same(ref, got)
        outcomes.add(type(ref).__name__)
    # The problems cover results, ragged CMC rows (ValueError) and no valid query.
    assert {"tuple", "ValueError", "AssertionError"} <= outcomes


def test_equals_torchreid_with_mixed_ties_on_larger_gallery() -> None:
    # Integer distances on a 300-entry gallery: almost every true match ties with non-matches,
    # and numpy's SIMD argsort (what torchreid calls) orders them in no simple way.
    rng = np.random.default_rng(3)
    for _ in range(4):
        dist = rng.integers(0, 6, (30, 300)).astype(np.float32)
        labels = (
            rng.integers(0, 20, 30),
            rng.integers(0, 20, 300),
            rng.integers(0, 3, 30),
            rng.integers(0, 3, 300),
        )
        _assert_same(_torchreid(dist, *labels, max_rank=20), _ours(dist, *labels, max_rank=20))


def test_max_rank_larger_than_gallery(caplog: pytest.LogCaptureFixture) -> None:
    dist = np.array([[0.3, 0.1, 0.2], [0.2, 0.3, 0.1]], dtype=np.float32)
    labels = (np.array([0, 1]), np.array([0, 1, 0]), np.array([0, 0]), np.array([1, 1, 1]))
    with caplog.at_level(logging.WARNING, logger="reid.metrics.rank"):
        got = _ours(dist, *labels, max_rank=50)
    assert "Note: number of gallery samples is quite small, got 3" in caplog.text
    _assert_same(_torchreid(dist, *labels, max_rank=50), got)
    assert got[0].shape == (3,)  # nothing removed: every CMC row has the 3 gallery entries


def test_ragged_cmc_rows_fail_like_torchreid_but_evaluate_pads() -> None:
    # Query 0 loses gallery 2 (same id and camera), query 1 keeps all 3: rows of 2 and 3.
    dist = np.array([[0.3, 0.1, 0.2], [0.2, 0.3, 0.1]], dtype=np.float32)
    labels = (np.array([0, 1]), np.array([0, 1, 0]), np.array([0, 0]), np.array([1, 1, 0]))
    ref = _torchreid(dist, *labels, max_rank=10)
    assert isinstance(ref, ValueError)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(dist, *labels, max_rank=10)
    # Query 0: kept g1 (id 1), g0 (id 0, match) -> rank 2; query 1: g1 at rank 3.
    result = evaluate(dist, *labels, max_rank=10)
    assert result.cmc.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert result.mAP == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_no_valid_query_raises_assertion_error() -> None:
    dist = np.zeros((2, 3), dtype=np.float32)
    labels = ([5, 6], [0, 1, 5], [0, 0], [1, 1, 0])  # id 5 only in its own camera
    assert isinstance(_torchreid(dist, *(np.array(x) for x in labels)), AssertionError)
    with pytest.raises(NoValidQueryError, match="all query identities"):
        evaluate(dist, *labels)
    with pytest.raises(AssertionError):
        evaluate_rank(dist, *labels)


# ---------------------------------------------------------------------------------------------
# Ties, chunks, devices
# ---------------------------------------------------------------------------------------------


def test_stable_tie_break_uses_gallery_order() -> None:
    # One query (id 0, cam 0); all distances equal. Gallery: g0 id 1, g1 id 0 (cam 1), g2 id 2.
    # Stable order g0 g1 g2: the true match is at rank 2 -> AP = 1/2, CMC = [0, 1, 1].
    dist = np.ones((1, 3), dtype=np.float32)
    labels = ([0], [1, 0, 2], [0], [1, 1, 1])
    result = evaluate(dist, *labels, tie_break="stable")
    assert result.ap[0] == 0.5 and result.cmc.tolist() == [0.0, 1.0, 1.0]
    # The same match first in gallery order: rank 1.
    result = evaluate(dist, [0], [0, 1, 2], [0], [1, 1, 1], tie_break="stable")
    assert result.ap[0] == 1.0
    # "numpy" order is whatever np.argsort gives.
    order = np.argsort(dist, axis=1)[0]
    rank = int(np.flatnonzero(order == 1)[0]) + 1
    assert evaluate(dist, *labels).ap[0] == 1 / rank


def test_chunked_equals_unchunked_and_stable_equals_numpy_without_ties() -> None:
    rng = np.random.default_rng(4)
    dist = rng.random((40, 200)).astype(np.float32)
    labels = (
        rng.integers(0, 15, 40),
        rng.integers(0, 15, 200),
        rng.integers(0, 3, 40),
        rng.integers(0, 3, 200),
    )
    whole = evaluate(dist, *labels, chunk_size=40)
    for other in (
        evaluate(dist, *labels, chunk_size=1),
        evaluate(dist, *labels, chunk_size=7),
        evaluate(dist, *labels, tie_break="stable"),
        evaluate(torch.from_numpy(dist).double(), *labels, chunk_size=13),
    ):
        assert np.array_equal(whole.cmc, other.cmc)
        assert whole.mAP == other.mAP and whole.mINP == other.mINP
        assert np.array_equal(whole.ap, other.ap, equal_nan=True)


def test_non_finite_distances_follow_numpy_sort() -> None:
    rng = np.random.default_rng(5)
    dist = rng.random((10, 30)).astype(np.float32)
    dist[0, 3], dist[1, :5], dist[2, 7] = np.nan, np.inf, -np.inf
    labels = (
        rng.integers(0, 5, 10),
        rng.integers(0, 5, 30),
        rng.integers(0, 2, 10),
        rng.integers(0, 2, 30),
    )
    _assert_same(_torchreid(dist, *labels, max_rank=5), _ours(dist, *labels, max_rank=5))


def test_minp_and_ap_against_brute_force() -> None:
    # Brute force: stable sort, remove junk, AP = mean precision at each hit, INP = hits/last.
    rng = np.random.default_rng(6)
    dist = rng.random((15, 40))
    q_pids, g_pids = rng.integers(0, 6, 15), rng.integers(0, 6, 40)
    q_cams, g_cams = rng.integers(0, 2, 15), rng.integers(0, 2, 40)
    result = evaluate(dist, q_pids, g_pids, q_cams, g_cams, tie_break="stable")
    aps, inps = [], []
    for q in range(15):
        kept = [
            g
            for g in sorted(range(40), key=lambda g: dist[q, g])
            if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])
        ]
        hits = [i + 1 for i, g in enumerate(kept) if g_pids[g] == q_pids[q]]
        if hits:
            aps.append(sum((k + 1) / r for k, r in enumerate(hits)) / len(hits))
            inps.append(len(hits) / hits[-1])
    assert result.num_valid == len(aps)
    assert result.ap[result.valid] == pytest.approx(aps, rel=1e-12)
    assert result.inp[result.valid] == pytest.approx(inps, rel=1e-12)
    assert result.mINP == pytest.approx(np.mean(inps), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# CUHK03 single-gallery-shot metric
# ---------------------------------------------------------------------------------------------


def _cuhk03_problem(seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    num_q, num_g = 12, 50
    dist = (
        rng.integers(0, 8, (num_q, num_g)).astype(np.float32)
        if seed % 2
        else rng.random((num_q, num_g))
    )
    return (
        dist,
        rng.integers(0, 8, num_q),
        rng.integers(0, 8, num_g),
        rng.integers(0, 2, num_q),
        rng.integers(0, 2, num_g),
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cuhk03_equals_torchreid_under_the_same_global_seed(seed: int) -> None:
    problem = _cuhk03_problem(seed)
    np.random.seed(seed)
    ref = _torchreid(*problem, max_rank=10, use_metric_cuhk03=True)
    after_ref = np.random.random_sample()
    np.random.seed(seed)
    got = _ours(*problem, max_rank=10, use_metric_cuhk03=True, chunk_size=5)
    after_got = np.random.random_sample()
    _assert_same(ref, got)
    assert after_ref == after_got  # the global stream advanced by exactly as many draws
    # seed= and rng= reproduce the same numbers without touching the global state.
    _assert_same(ref, _ours(*problem, max_rank=10, use_metric_cuhk03=True, seed=seed))
    rng = np.random.RandomState(seed)
    _assert_same(ref, _ours(*problem, max_rank=10, use_metric_cuhk03=True, rng=rng))


def test_cuhk03_single_identity_gallery_is_deterministic() -> None:
    # One entry per gallery identity: no draw matters; query 0's match is 2nd of 3 identities,
    # query 1's is 1st -> CMC = [1/2, 1, 1]; AP = (1/2 + 1) / 2.
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    labels = ([1, 2], [0, 1, 2], [0, 0], [1, 1, 1])
    result = evaluate(dist, *labels, use_metric_cuhk03=True, seed=0)
    assert result.cmc.tolist() == [0.5, 1.0, 1.0]
    assert result.mAP == 0.75


def test_torch_sorting_path_equals_torchreid(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path taken on GPUs (torch.sort of whole rows), forced on the CPU; the CPU's own path
    # (counting the entries up to the farthest true match) is what every other test checks.
    from reid.metrics import match_ranks

    monkeypatch.setattr(match_ranks, "_counts_on", lambda device: False)
    rng = np.random.default_rng(7)
    for kind in ("float32", "int_ties", "float64_ties"):
        for _ in range(10):
            problem = _random_problem(rng, kind)
            _assert_same(
                _torchreid(*problem, max_rank=5), _ours(*problem, max_rank=5, chunk_size=3)
            )


def test_only_entries_up_to_the_farthest_true_match_are_sorted() -> None:
    # structured problems (true matches close, most of the gallery far): the CPU path sorts a few
    # entries per row, and its numbers stay torchreid's, ties and duplicates of the threshold included
    from reid.metrics import match_ranks

    rng = np.random.default_rng(11)
    for trial in range(30):
        num_q, num_g, num_ids = 12, 80, 10
        q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
        q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
        dist = rng.integers(5, 40, (num_q, num_g)).astype(np.float32)
        dist[q_pids[:, None] == g_pids[None, :]] = rng.integers(0, 8, int((q_pids[:, None] == g_pids).sum()))
        problem = (dist, q_pids, g_pids, q_cams, g_cams)
        for tie_break in ("numpy", "stable"):
            _assert_same(_torchreid(*problem, max_rank=5) if tie_break == "numpy" else
                         _ours(*problem, max_rank=5, tie_break="stable"),
                         _ours(*problem, max_rank=5, tie_break=tie_break, chunk_size=4))
    # only the entries up to a row's farthest true match are marked, and the same-identity ones are not
    rows = np.array([[0.5, 3.0, 1.0, 9.0, 2.0], [4.0, 0.25, 8.0, 7.0, 6.0], [1.0, 2.0, 2.0, 0.0, 5.0]],
                    dtype=np.float32)
    # row 0: true match column 2 at 1.0, one non-match closer (0.5): rank 2; row 1: its match
    # (column 1) is nearest: rank 1; row 2: matches columns 0 and 2 (1.0, 2.0) and a removed
    # column 3 at 0.0, which does not count: ranks 1 and 2 by the strict count, and column 1
    # (a non-match) ties the second match, so the row is flagged for the sorting path
    cols = np.array([[2, 0, 0], [1, 0, 0], [0, 2, 3]])  # padding: 0
    valid = np.array([[True, False, False], [True, False, False], [True, True, True]])
    junk = np.array([[False] * 3, [False] * 3, [False, False, True]])
    keep = np.empty(rows.shape, dtype=bool)
    ranks, n_rel, needs_sort = match_ranks._counted_match_ranks(rows, cols, valid, junk, keep)
    assert n_rel.tolist() == [1, 1, 2]
    assert ranks[0, :1].tolist() == [2] and ranks[1, :1].tolist() == [1] and ranks[2].tolist() == [1, 2]
    assert needs_sort.tolist() == [False, False, True]
    assert keep.tolist() == [[True, False, False, False, False], [False] * 5, [False, True, False, False, False]]


def test_many_non_finite_distances_follow_torchreid() -> None:
    # NaN, +inf and -inf scattered over true matches, removed entries and non-matches alike: a NaN
    # non-match is never counted (every sort puts it last), a non-finite true match sends its
    # query to the sorting path; the numbers stay torchreid's
    rng = np.random.default_rng(23)
    for trial in range(40):
        problem = list(_random_problem(rng, "float32" if trial % 2 else "int_ties"))
        dist = problem[0]
        for value in (np.nan, np.inf, -np.inf):
            dist[rng.random(dist.shape) < 0.08] = value
        try:
            ref = _torchreid(*problem, max_rank=1)
        except AssertionError:  # no valid query: both refuse
            with pytest.raises(AssertionError):
                _ours(*problem, max_rank=1)
            continue
        _assert_same(ref, _ours(*problem, max_rank=1, chunk_size=4))


def test_stable_ties_are_counted_as_a_stable_sort_ranks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # The oracle: torchreid's own evaluation with its argsort made stable (ties by gallery index).
    # The counting path resolves those ties itself, without sorting rows; problems dense with
    # ties between true matches and non-matches, chunked and not.
    import torchreid.reid.metrics.rank as torchreid_rank
    from reid.metrics import match_ranks

    problems = []
    rng = np.random.default_rng(29)
    for kind in ("int_ties", "float64_ties", "float32"):
        problems += [_random_problem(rng, kind) for _ in range(15)]
    sorted_rows = []
    original = match_ranks._sorted_match_ranks
    monkeypatch.setattr(match_ranks, "_sorted_match_ranks",
                        lambda rows, *args: (sorted_rows.append(len(rows)), original(rows, *args))[1])
    for problem in problems:
        ours = [_ours(*problem, max_rank=3, tie_break="stable", chunk_size=c) for c in (2, 100)]
        argsort = np.argsort
        with monkeypatch.context() as patch:
            patch.setattr(torchreid_rank.np, "argsort",
                          lambda a, axis=-1, kind=None, order=None: argsort(a, axis=axis, kind="stable"))
            ref = _torchreid(*problem, max_rank=3)
        for got in ours:
            _assert_same(ref, got)
    assert not sorted_rows  # every rank counted, none sorted (the distances are finite)
