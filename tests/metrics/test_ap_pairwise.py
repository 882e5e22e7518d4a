"""The sparse AP summation of reid.metrics.rank against numpy's dense pairwise sum.

torchreid's AP of a query is ``v.sum() / n_rel`` over a float64 vector as long as the kept
gallery, zero except ``k / r_k`` at the true matches. ``_average_precisions`` reproduces numpy's
pairwise summation tree over the non-zeros alone; these tests pin the tree (a pure-Python copy
checked against ``np.sum``, so a change of numpy's summation fails here first) and compare the
sparse sums with the dense ones bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from reid.metrics import evaluate
from reid.metrics.rank import _average_precisions


def _pairwise(a: np.ndarray, start: int = 0, n: int | None = None) -> float:
    """numpy's float64 pairwise sum of ``a[start:start + n]``, in pure Python."""
    if n is None:
        n = a.shape[0]
    if n < 8:
        res = 0.0
        for i in range(start, start + n):
            res += float(a[i])
        return res
    if n <= 128:
        r = [float(a[start + j]) for j in range(8)]
        for i in range(8, n - n % 8, 8):
            for j in range(8):
                r[j] += float(a[start + i + j])
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(n - n % 8, n):
            res += float(a[start + i])
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, start, n2) + _pairwise(a, start + n2, n - n2)


def _dense_average_precisions(
    ranks: np.ndarray, offsets: np.ndarray, kept_len: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """The AP as torchreid computes it: the dense vector, numpy's ``sum``, / n_rel."""
    out = []
    for q in np.flatnonzero(valid):
        r = ranks[offsets[q] : offsets[q + 1]]
        v = np.zeros(int(kept_len[q]), dtype=np.float64)
        v[r - 1] = np.arange(1, r.shape[0] + 1, dtype=np.float64) / r.astype(np.float64)
        out.append(v.sum() / r.shape[0])
    return np.array(out, dtype=np.float64)


def _query_ranks(rng: np.random.Generator, length: int, pattern: str) -> np.ndarray:
    """Sorted distinct 1-based ranks in ``[1, length]`` laid out as ``pattern`` says."""
    if pattern == "all" and length <= 400:
        return np.arange(1, length + 1)
    if pattern == "single":
        return rng.integers(1, length + 1, 1)
    many = int(rng.integers(2, 60))
    if pattern == "start":
        picked = rng.integers(1, min(length, 500) + 1, many)
    elif pattern == "spread":
        picked = rng.integers(1, length + 1, many)
    elif pattern == "ends":
        head = rng.integers(1, min(length, 300) + 1, many)
        tail = rng.integers(max(1, length - 300), length + 1, int(rng.integers(1, 6)))
        picked = np.concatenate([head, tail])
    elif pattern == "start_and_far":
        head = rng.integers(1, min(length, 400) + 1, many)
        picked = np.concatenate([head, rng.integers(1, length + 1, int(rng.integers(1, 4)))])
    else:  # "cluster": around one random place, likely across a split of the tree
        centre = int(rng.integers(1, length + 1))
        picked = np.clip(centre + rng.integers(-200, 201, many), 1, length)
    return np.unique(picked)


def _random_problem(rng: np.random.Generator, num_q: int) -> tuple:
    """Ranks, offsets, kept lengths and validity of ``num_q`` random queries (some invalid)."""
    patterns = ["all", "single", "start", "spread", "ends", "start_and_far", "cluster"]
    kept_len = np.exp(rng.uniform(0.0, np.log(300_000), num_q)).astype(np.int64)
    kept_len[rng.random(num_q) < 0.2] = rng.integers(1, 200, 1)[0]  # a shared short length
    kept_len[0] = 300_000
    chunks, counts = [], []
    for q in range(num_q):
        if q % 17 == 5:
            counts.append(0)  # a query without a true match
            continue
        pattern = patterns[int(rng.integers(len(patterns)))]
        r = _query_ranks(rng, int(kept_len[q]), pattern)
        chunks.append(r)
        counts.append(r.shape[0])
    ranks = np.concatenate(chunks).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ranks, offsets, kept_len, np.diff(offsets) > 0


# ---------------------------------------------------------------------------------------------
# The oracle: numpy's summation order
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length", [1, 5, 7, 8, 9, 15, 16, 17, 127, 128, 129, 130, 1000, 4099, 70_001]
)
def test_pure_python_pairwise_sum_is_numpy_sum(length: int) -> None:
    rng = np.random.default_rng(length)
    # Values of very different magnitudes, so that the order of the additions shows.
    a = rng.standard_normal(length) * np.exp(rng.uniform(-20, 20, length))
    assert _pairwise(a) == a.sum()
    rows = np.stack([a, a[::-1].copy(), np.abs(a)])
    assert [_pairwise(row) for row in rows] == rows.sum(axis=1).tolist()


def test_pure_python_pairwise_sum_is_not_a_plain_loop() -> None:
    # Guards the guard: on these vectors another summation order gives other bits.
    rng = np.random.default_rng(0)
    a = rng.standard_normal(5000) * np.exp(rng.uniform(-20, 20, 5000))
    sequential = 0.0
    for x in a.tolist():
        sequential += x
    assert sequential != _pairwise(a)
    assert float(a[0]) + _pairwise(a[1:]) != _pairwise(a)


def test_sparse_vectors_sum_like_the_pure_python_tree() -> None:
    rng = np.random.default_rng(1)
    for length in [3, 130, 1001, 65_536, 200_003]:
        r = np.unique(rng.integers(1, length + 1, 40))
        v = np.zeros(length)
        v[r - 1] = np.arange(1, r.shape[0] + 1) / r
        assert _pairwise(v) == v.sum()


# ---------------------------------------------------------------------------------------------
# Sparse against dense
# ---------------------------------------------------------------------------------------------


def test_hand_computed_ap() -> None:
    # Kept gallery of 3, true matches at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    got = _average_precisions(np.array([1, 3]), np.array([0, 2]), np.array([3]), np.array([True]))
    assert got.tolist() == [(1.0 + 2.0 / 3.0) / 2.0]
    # The same through evaluate: one query, gallery (match, non-match, match) by distance.
    dist = np.array([[0.1, 0.2, 0.3]])
    result = evaluate(dist, np.array([0]), np.array([0, 1, 0]), np.array([0]), np.array([1, 1, 1]))
    assert result.ap.tolist() == [(1.0 + 2.0 / 3.0) / 2.0]
    assert result.mAP == (1.0 + 2.0 / 3.0) / 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_equals_dense_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = _random_problem(rng, 150)
    got = _average_precisions(*problem)
    want = _dense_average_precisions(*problem)
    assert got.dtype == np.float64
    assert np.array_equal(got, want)


def test_sparse_equals_dense_on_one_shared_length() -> None:
    # Many queries of the largest kept length, matches over the first few hundred ranks and a
    # few far away (the shape of a real evaluation), and every rank of a short gallery.
    rng = np.random.default_rng(7)
    length = 500_000
    chunks = [_query_ranks(rng, length, "start_and_far") for _ in range(40)]
    chunks += [np.arange(1, 130), np.arange(1, 9), np.array([length]), np.array([1, length])]
    counts = [c.shape[0] for c in chunks]
    ranks = np.concatenate(chunks).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    kept_len = np.full(len(chunks), length, dtype=np.int64)
    kept_len[-4:-2] = [129, 8]
    valid = np.ones(len(chunks), dtype=bool)
    assert np.array_equal(
        _average_precisions(ranks, offsets, kept_len, valid),
        _dense_average_precisions(ranks, offsets, kept_len, valid),
    )


# ---------------------------------------------------------------------------------------------
# Against torchreid, on galleries large enough for the tree to split
# ---------------------------------------------------------------------------------------------


def test_equals_torchreid_on_a_large_gallery() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rank = pytest.importorskip("torchreid.reid.metrics.rank")
    rng = np.random.default_rng(11)
    num_q, num_g = 10, 6000
    q_pids, g_pids = rng.integers(0, 40, num_q), rng.integers(0, 40, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g))
    # Most true matches near the top of the ranking, the others anywhere.
    near = (q_pids[:, None] == g_pids[None, :]) & (rng.random((num_q, num_g)) < 0.8)
    dist[near] *= 0.05
    with contextlib.redirect_stdout(io.StringIO()):
        cmc, mAP = rank.eval_market1501(dist, q_pids, g_pids, q_cams, g_cams, 50)
    result = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert np.array_equal(result.cmc, cmc)
    assert result.mAP == mAP
