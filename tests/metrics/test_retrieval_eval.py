"""Tests for reid.metrics.retrieval_eval: hand-computed cases and brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import DistanceRows
from reid.metrics.retrieval_eval import (
    RetrievalResult,
    kmeans,
    nmi,
    normalized_mutual_information,
    retrieval_metrics,
)

# ---------------------------------------------------------------------------------------------
# Brute-force oracle
# ---------------------------------------------------------------------------------------------


def _oracle(dist: np.ndarray, labels, ks) -> dict:
    """The definitions, with plain loops: each query ranks the others by (distance, index)."""
    n = len(labels)
    recall = {k: 0 for k in ks}
    map_r, r_prec, first = [], [], []
    for q in range(n):
        others = sorted((j for j in range(n) if j != q), key=lambda j: (float(dist[q][j]), j))
        rel = [labels[j] == labels[q] for j in others]
        r = sum(rel)
        for k in ks:
            recall[k] += any(rel[:k])
        first.append(rel.index(True) + 1 if r else 0)
        if r == 0:
            map_r.append(math.nan)
            r_prec.append(math.nan)
            continue
        hits, ap = 0, 0.0
        for i in range(1, r + 1):
            if rel[i - 1]:
                hits += 1
                ap += hits / i
        map_r.append(ap / r)
        r_prec.append(hits / r)
    valid = [v for v in map_r if not math.isnan(v)]
    return {
        "recall": {k: recall[k] / n for k in ks},
        "map_at_r": sum(valid) / len(valid) if valid else math.nan,
        "r_precision": (
            sum(v for v in r_prec if not math.isnan(v)) / len(valid) if valid else math.nan
        ),
        "num_excluded": n - len(valid),
        "map_per_query": map_r,
        "rp_per_query": r_prec,
        "first": first,
    }


def _assert_matches(got: RetrievalResult, ref: dict) -> None:
    assert list(got.recall) == list(ref["recall"])
    for k, v in ref["recall"].items():
        assert got.recall[k] == pytest.approx(v, abs=1e-12), k
    assert got.num_excluded == ref["num_excluded"]
    assert got.num_queries == len(ref["first"])
    assert got.first_hit_rank.tolist() == ref["first"]
    np.testing.assert_allclose(got.map_at_r_per_query, ref["map_per_query"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.r_precision_per_query, ref["rp_per_query"], rtol=0, atol=1e-12)
    if math.isnan(ref["map_at_r"]):
        assert math.isnan(got.map_at_r) and math.isnan(got.r_precision)
    else:
        assert got.map_at_r == pytest.approx(ref["map_at_r"], abs=1e-12)
        assert got.r_precision == pytest.approx(ref["r_precision"], abs=1e-12)


def _random_problem(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, list]:
    n = int(rng.integers(2, 28))
    labels = rng.integers(0, int(rng.integers(1, 9)), n)
    if rng.random() < 0.3:  # add singleton classes
        labels[rng.integers(0, n, 2)] = [100, 101]
    if kind == "float":
        dist = rng.random((n, n))
    elif kind == "int_ties":
        dist = rng.integers(0, 3, (n, n)).astype(np.float32)
    else:  # ties and infinite distances
        dist = rng.integers(0, 2, (n, n)).astype(np.float64)
        dist[rng.random((n, n)) < 0.4] = np.inf
    ks = sorted({int(k) for k in rng.integers(1, n, int(rng.integers(1, 4)))})
    return dist, labels, ks


# ---------------------------------------------------------------------------------------------
# Hand-computed case
# ---------------------------------------------------------------------------------------------

# Images 0, 1, 4 of class 0 (R = 2), images 2, 3 of class 1 (R = 1), image 5 alone in class 2
# (R = 0). The diagonal is 0 (it would come first if the query were not left out); image 5 is
# farthest from everyone. Rankings by (distance, index), "+" a same-class image:
#   q0: 2(d1) 1+(d2) 3(d2) 4+(d3)  first hit 2, R-Prec 1/2, MAP@R = (0 + 1/2) / 2 = 1/4
#   q1: 3(d1) 4+(d1) 0+(d2) 2(d2)  first hit 2 (3 before 4 by index), R-Prec 1/2, MAP@R 1/4
#   q2: 0(d1) 3+(d1) 1(d2) 4(d2)   first hit 2 (0 before 3 by index), R-Prec 0, MAP@R 0
#   q3: 1(d1) 2+(d1) 0(d2) 4(d2)   first hit 2, R-Prec 0, MAP@R 0
#   q4: 1+(d1) 2(d2) 3(d2) 0+(d3)  first hit 1, R-Prec 1/2, MAP@R = (1 + 0) / 2 = 1/2
#   q5: no other image of class 2: a miss for Recall@K, excluded from MAP@R and R-Precision.
# Recall@1 = 1/6 (q4), Recall@2 = 5/6 (all but q5), Recall@5 = 5/6.
# R-Precision = (1/2 + 1/2 + 0 + 0 + 1/2) / 5 = 3/10; MAP@R = (1/4 + 1/4 + 0 + 0 + 1/2) / 5 = 1/5.
HAND_LABELS = ["a", "a", "b", "b", "a", "c"]
HAND_DIST = np.array(
    [
        [0, 2, 1, 2, 3, 5],
        [2, 0, 2, 1, 1, 5],
        [1, 2, 0, 1, 2, 5],
        [2, 1, 1, 0, 2, 5],
        [3, 1, 2, 2, 0, 5],
        [5, 5, 5, 5, 5, 0],
    ],
    dtype=np.float32,
)


def test_hand_computed_case_with_ties() -> None:
    result = retrieval_metrics(HAND_DIST, HAND_LABELS, recall_ks=(1, 2, 5))
    assert result.recall == pytest.approx({1: 1 / 6, 2: 5 / 6, 5: 5 / 6}, abs=1e-15)
    assert result.r_precision == pytest.approx(3 / 10, abs=1e-15)
    assert result.map_at_r == pytest.approx(1 / 5, abs=1e-15)
    assert result.num_queries == 6 and result.num_excluded == 1
    assert result.first_hit_rank.tolist() == [2, 2, 2, 2, 1, 0]
    assert result.map_at_r_per_query[:5].tolist() == pytest.approx([1 / 4, 1 / 4, 0, 0, 1 / 2])
    assert result.r_precision_per_query[:5].tolist() == pytest.approx([1 / 2, 1 / 2, 0, 0, 1 / 2])
    assert math.isnan(result.map_at_r_per_query[5]) and math.isnan(result.r_precision_per_query[5])
    _assert_matches(result, _oracle(HAND_DIST, HAND_LABELS, [1, 2, 5]))


def test_input_not_modified_and_tensor_input() -> None:
    dist = HAND_DIST.copy()
    ref = retrieval_metrics(dist, HAND_LABELS, recall_ks=(1, 2))
    assert np.array_equal(dist, HAND_DIST)
    tensor = torch.from_numpy(dist).double()
    got = retrieval_metrics(tensor, HAND_LABELS, recall_ks=(1, 2), block_rows=2)
    assert got.recall == ref.recall and got.map_at_r == ref.map_at_r
    assert np.array_equal(got.first_hit_rank, ref.first_hit_rank)


# ---------------------------------------------------------------------------------------------
# Brute-force oracle on random problems
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float", "int_ties", "inf_ties"])
def test_matches_oracle_on_random_problems(kind: str) -> None:
    rng = np.random.default_rng({"float": 0, "int_ties": 1, "inf_ties": 2}[kind])
    for _ in range(40):
        dist, labels, ks = _random_problem(rng, kind)
        ref = _oracle(dist, labels.tolist(), ks)
        n = dist.shape[0]
        for block in (1, 3, n):
            _assert_matches(retrieval_metrics(dist, labels, ks, block_rows=block), ref)
            rows = DistanceRows(lambda a, b: dist[a:b], dist.shape, block, dtype=dist.dtype)
            _assert_matches(retrieval_metrics(rows, labels, ks), ref)


def test_all_singletons_do_not_crash() -> None:
    dist = np.random.default_rng(4).random((5, 5))
    result = retrieval_metrics(dist, [0, 1, 2, 3, 4], recall_ks=(1, 4))
    assert result.recall == {1: 0.0, 4: 0.0}
    assert result.num_excluded == 5
    assert math.isnan(result.map_at_r) and math.isnan(result.r_precision)
    assert result.first_hit_rank.tolist() == [0] * 5


def test_first_hit_beyond_top_k() -> None:
    # q0's only same-class image (3) is its farthest, beyond k = max(K, max R) = 1.
    dist = np.array([[0, 1, 1, 2], [1, 0, 1, 1], [1, 1, 0, 1], [2, 1, 1, 0]], dtype=np.float64)
    labels = [0, 1, 2, 0]
    result = retrieval_metrics(dist, labels, recall_ks=(1,))
    assert result.first_hit_rank.tolist() == [3, 0, 0, 3]
    _assert_matches(result, _oracle(dist, labels, [1]))


@pytest.mark.parametrize("integer_features", [True, False])
def test_from_features_matches_oracle(integer_features: bool) -> None:
    # Integer features give exact integer distances full of ties, whatever the blocking.
    gen = torch.Generator().manual_seed(5)
    for n in (7, 40):
        if integer_features:
            x = torch.randint(0, 3, (n, 4), generator=gen).float()
        else:
            x = torch.randn(n, 16, generator=gen)
        labels = torch.randint(0, 5, (n,), generator=gen)
        ks = [1, 2, 4]
        ref = _oracle(compute_distance_matrix(x, x).numpy(), labels.tolist(), ks)
        for rows in (1, 3):
            block_mb = rows * 4 * n / 2**20
            dist = DistanceRows.from_features(x, x, compute_distance_matrix, block_mb=block_mb)
            assert dist.block_rows == rows
            _assert_matches(retrieval_metrics(dist, labels, ks), ref)


# ---------------------------------------------------------------------------------------------
# NMI and k-means
# ---------------------------------------------------------------------------------------------


def test_nmi_hand_cases() -> None:
    a = [0, 0, 1, 1, 2, 2]
    assert normalized_mutual_information(a, a) == 1.0
    assert normalized_mutual_information(a, ["z", "z", "x", "x", "y", "y"]) == 1.0  # renamed
    assert normalized_mutual_information([3, 3, 3], [7, 7, 7]) == 1.0  # H = 0 on both sides
    # Independent: every cell has n * n_ab = n_a * n_b (4 * 1 = 2 * 2), so I = 0 exactly.
    assert normalized_mutual_information([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert normalized_mutual_information([0, 0, 0, 0], [0, 1, 0, 1]) == 0.0  # H(A) = 0
    # A = [0, 0, 0, 1], B = [0, 0, 1, 1]; cells (0,0): 2, (0,1): 1, (1,1): 1; n = 4.
    #   I = 2/4 ln(4*2 / (3*2)) + 1/4 ln(4*1 / (3*2)) + 1/4 ln(4*1 / (1*2))
    #     = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2 = 3/2 ln 2 - 3/4 ln 3
    #   H(A) = 3/4 ln(4/3) + 1/4 ln 4 = 2 ln 2 - 3/4 ln 3,  H(B) = ln 2
    #   NMI = 2 I / (H(A) + H(B)) = (3 ln 2 - 3/2 ln 3) / (3 ln 2 - 3/4 ln 3) ~ 0.343711
    ln2, ln3 = math.log(2), math.log(3)
    expected = (3 * ln2 - 1.5 * ln3) / (3 * ln2 - 0.75 * ln3)
    got = normalized_mutual_information([0, 0, 0, 1], [0, 0, 1, 1])
    assert got == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(0.343711, abs=1e-6)
    got = normalized_mutual_information([0, 0, 1, 1], [0, 0, 0, 1])  # symmetric
    assert got == pytest.approx(expected, rel=1e-14)


def _blobs(seed: int, num_blobs: int = 6, per_blob: int = 15, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_blobs, dim, generator=gen) * 100
    labels = torch.arange(num_blobs).repeat_interleave(per_blob)
    x = centres[labels] + torch.randn(len(labels), dim, generator=gen)
    perm = torch.randperm(len(labels), generator=gen)
    return x[perm], labels[perm]


def _nmi_by_loops(a, b) -> float:
    """NMI = 2 I / (H(a) + H(b)) from the contingency counts, summed in plain Python loops."""
    n = len(a)
    joint, pa, pb = {}, {}, {}
    for x, y in zip(a, b):
        joint[(x, y)] = joint.get((x, y), 0) + 1
        pa[x] = pa.get(x, 0) + 1
        pb[y] = pb.get(y, 0) + 1
    info = sum(c / n * math.log((c / n) / ((pa[x] / n) * (pb[y] / n))) for (x, y), c in joint.items())
    h_a = -sum(c / n * math.log(c / n) for c in pa.values())
    h_b = -sum(c / n * math.log(c / n) for c in pb.values())
    return 1.0 if h_a + h_b == 0 else 2 * info / (h_a + h_b)


def test_nmi_matches_a_loop_oracle_on_random_partitions() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 80))
        a = rng.integers(0, int(rng.integers(1, 8)), n)
        b = rng.integers(0, int(rng.integers(1, 8)), n)
        assert normalized_mutual_information(a, b) == pytest.approx(_nmi_by_loops(a.tolist(), b.tolist()), abs=1e-12)


def test_kmeans_recovers_separated_blobs() -> None:
    for seed in range(3):
        x, labels = _blobs(seed)
        clusters = kmeans(x, 6, seed=seed)
        assert clusters.dtype == np.int64 and clusters.shape == (90,)
        assert normalized_mutual_information(labels, clusters) == 1.0
        assert nmi(x, labels, seed=seed) == 1.0


def test_kmeans_deterministic_for_a_seed_whatever_the_input_type() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(150, 5, generator=gen)  # no cluster structure: many iterations
    ref = kmeans(x, 9, seed=3)
    assert np.array_equal(kmeans(x, 9, seed=3), ref)
    assert len(np.unique(ref)) == 9
    assert np.array_equal(kmeans(x.numpy(), 9, seed=3), ref)  # a numpy array: the same clustering
    assert np.array_equal(kmeans(x.double(), 9, seed=3), ref)  # float64 either way


def test_kmeans_is_a_fixed_point_of_lloyd() -> None:
    """Run to convergence, every point is nearest its own cluster's mean (the definition of a
    Lloyd fixed point), checked by brute force."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(120, 4, generator=gen).double()
    clusters = kmeans(x, 5, seed=0, max_iter=300)
    means = torch.stack([x[torch.from_numpy(clusters == c)].mean(0) for c in range(5)])
    nearest = ((x[:, None, :] - means[None]) ** 2).sum(2).argmin(1).numpy()
    assert np.array_equal(nearest, clusters)


def test_kmeans_duplicate_points_and_edge_sizes() -> None:
    x = torch.tensor([[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 2)
    clusters = kmeans(x, 3, seed=0, max_iter=5)  # only 2 distinct points: must not fail
    assert clusters.shape == (6,) and clusters.min() >= 0 and clusters.max() < 3
    assert kmeans(x, 1).tolist() == [0] * 6
    assert sorted(kmeans(torch.arange(5.0)[:, None], 5).tolist()) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise() -> None:
    dist = np.zeros((4, 4))
    labels = [0, 0, 1, 1]
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(4), labels)
    with pytest.raises(ValueError, match="at least 2 images"):
        retrieval_metrics(np.zeros((1, 1)), [0], recall_ks=(1,))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        retrieval_metrics(dist, [0, 1, 2], recall_ks=(1,))
    with pytest.raises(ValueError, match="K=4 is larger than the 3 other images"):
        retrieval_metrics(dist, labels, recall_ks=(1, 4))
    with pytest.raises(ValueError, match="K >= 1, got K=0"):
        retrieval_metrics(dist, labels, recall_ks=(0,))
    with pytest.raises(ValueError, match="at least one K"):
        retrieval_metrics(dist, labels, recall_ks=())
    with pytest.raises(ValueError, match="integers"):
        retrieval_metrics(dist, labels, recall_ks=(1.5,))
    with pytest.raises(ValueError, match="block_rows"):
        retrieval_metrics(dist, labels, recall_ks=(1,), block_rows=0)
    bad = dist.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, labels, recall_ks=(1,))
    with pytest.raises(ValueError, match="one length"):
        normalized_mutual_information([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="at least one item"):
        normalized_mutual_information([], [])
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"num_clusters must be in \[1, 5\]"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.randn(5), 2)
    with pytest.raises(ValueError, match="max_iter"):
        kmeans(x, 2, max_iter=0)
    with pytest.raises(ValueError, match="finite"):
        kmeans(torch.tensor([[0.0], [math.inf]]), 1)
    with pytest.raises(ValueError, match="like the features"):
        nmi(x, [0, 1])
