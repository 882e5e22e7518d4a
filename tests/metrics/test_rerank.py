"""Tests for reid.metrics.rerank: a hand-computed case and bit-equality with torchreid."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from reid.metrics import compute_distance_matrix, re_ranking

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torchreid's "Cython evaluation ... is unavailable"
    from torchreid.reid.utils.rerank import re_ranking as torchreid_re_ranking


def _problem(seed: int, num_q: int, num_g: int, rounded: bool = False) -> tuple[np.ndarray, ...]:
    """Squared Euclidean q-g, q-q, g-g distances of clustered features (rounded: many ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, 8))
    q = centres[rng.integers(0, 6, num_q)] + 0.5 * rng.standard_normal((num_q, 8))
    g = centres[rng.integers(0, 6, num_g)] + 0.5 * rng.standard_normal((num_g, 8))
    if rounded:
        q, g = np.round(q), np.round(g)
    q_t, g_t = torch.tensor(q, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
    return tuple(
        compute_distance_matrix(a, b).numpy() for a, b in ((q_t, g_t), (q_t, q_t), (g_t, g_t))
    )


# One query q and gallery g0, g1 with distances q-g0 = 1, q-g1 = 2, g0-g1 = 3.
# Squared and divided by each column's maximum (4, 9, 9), row i of the scaled matrix is column
# i: q: [0, 1/4, 1], g0: [1/9, 0, 1], g1: [4/9, 1, 0]. With k1 = 1 the 2 nearest are
# q: (q, g0), g0: (g0, q), g1: (g1, q); k-reciprocal sets R(q) = R(g0) = {q, g0}, R(g1) = {g1};
# round(1/2) + 1 = 1, so each half set is the candidate itself and is kept (1 > 2/3).
# V[q] = (1, a, 0) / (1 + a), a = exp(-1/4); V[g0] = (b, 1, 0) / (1 + b), b = exp(-1/9);
# V[g1] = (0, 0, 1). With k2 = 1 there is no query expansion.
# Jaccard: q-g0: s = min(1/(1+a), b/(1+b)) + min(a/(1+a), 1/(1+b)), d = 1 - s / (2 - s);
# q-g1: no common non-zero, d = 1. Final: 0.7 d + 0.3 * (1/4, 1).
def test_hand_computed() -> None:
    q_g = np.array([[1.0, 2.0]], dtype=np.float32)
    q_q = np.array([[0.0]], dtype=np.float32)
    g_g = np.array([[0.0, 3.0], [3.0, 0.0]], dtype=np.float32)
    a, b = math.exp(-1 / 4), math.exp(-1 / 9)
    s = min(1 / (1 + a), b / (1 + b)) + min(a / (1 + a), 1 / (1 + b))
    expected = [0.7 * (1 - s / (2 - s)) + 0.3 / 4, 0.7 * 1 + 0.3 * 1]
    got = re_ranking(q_g, q_q, g_g, k1=1, k2=1, lambda_value=0.3)
    assert got.dtype == np.float32 and got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)
    # lambda = 1 leaves the scaled original distances (1/4, 4/4).
    assert re_ranking(q_g, q_q, g_g, k1=1, k2=1, lambda_value=1.0)[0].tolist() == [0.25, 1.0]


@pytest.mark.parametrize(
    ("seed", "num_q", "num_g", "k1", "k2", "rounded"),
    [
        (0, 12, 40, 20, 6, False),  # torchreid's defaults, k1 + 1 > half the rows
        (1, 20, 90, 5, 3, False),
        (2, 15, 60, 4, 1, False),  # no query expansion
        (3, 10, 50, 6, 10, True),  # k2 > k1 + 1; integer features: many tied distances
        (4, 25, 70, 3, 2, True),
    ],
)
def test_bit_identical_to_torchreid(
    seed: int, num_q: int, num_g: int, k1: int, k2: int, rounded: bool
) -> None:
    q_g, q_q, g_g = _problem(seed, num_q, num_g, rounded)
    ref = torchreid_re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3, chunk_size=7)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.array_equal(got, ref)
    assert np.array_equal(
        np.argsort(got, axis=1, kind="stable"), np.argsort(ref, axis=1, kind="stable")
    )


def test_chunks_tensors_and_float64_inputs() -> None:
    q_g, q_q, g_g = _problem(5, 9, 30)
    whole = re_ranking(q_g, q_q, g_g, k1=6, k2=3)
    assert np.array_equal(re_ranking(q_g, q_q, g_g, k1=6, k2=3, chunk_size=1), whole)
    as_tensors = re_ranking(
        torch.from_numpy(q_g), torch.from_numpy(q_q), torch.from_numpy(g_g), k1=6, k2=3
    )
    assert np.array_equal(as_tensors, whole)
    wide = [m.astype(np.float64) for m in (q_g, q_q, g_g)]
    assert np.array_equal(re_ranking(*wide, k1=6, k2=3), torchreid_re_ranking(*wide, k1=6, k2=3))


def test_shape_errors() -> None:
    q_g, q_q, g_g = _problem(6, 3, 5)
    with pytest.raises(ValueError, match="expected"):
        re_ranking(q_g, g_g, q_q)
    with pytest.raises(ValueError, match="k1 and k2"):
        re_ranking(q_g, q_q, g_g, k1=0)
