"""Tests for reid.losses.triplet."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import (
    MinedTuples,
    TripletLoss,
    batch_hard_mining,
    batch_hard_triplet_loss,
    triplet_loss_from_distances,
)
from reid.metrics import euclidean_distance

PIDS = [0, 0, 1, 1, 1, 2, 2, 3]  # identity 3 has a single sample: no positive


def _features(n: int = len(PIDS), dim: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64)


def _dist_oracle(x: list[list[float]]) -> list[list[float]]:
    return [[math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v))) for v in x] for u in x]


def _mining_oracle(
    dist: list[list[float]], pids: list[int], num_negatives: int
) -> list[tuple[int, int, list[int]]]:
    """Brute-force batch-hard mining: (anchor, positive, negatives) per kept anchor."""
    out = []
    for a in range(len(pids)):
        positives = [j for j in range(len(pids)) if j != a and pids[j] == pids[a]]
        negatives = [j for j in range(len(pids)) if pids[j] != pids[a]]
        if not positives or len(negatives) < num_negatives:
            continue
        p = positives[0]
        for j in positives:
            if dist[a][j] > dist[a][p]:
                p = j
        ranked = sorted(negatives, key=lambda j: (dist[a][j], j))
        out.append((a, p, ranked[:num_negatives]))
    return out


def test_pairwise_distance_matches_oracle() -> None:
    x = _features(4)
    expected = torch.tensor(_dist_oracle(x.tolist()), dtype=torch.float64)
    got = euclidean_distance(x)
    # The diagonal is sqrt(1e-12) = 1e-6 by the clamp.
    assert torch.allclose(got, expected, atol=2e-6)
    y = _features(2, seed=1)
    cross = euclidean_distance(x, y)
    assert cross.shape == (4, 2)
    assert math.isclose(cross[1, 0].item(), math.dist(x[1].tolist(), y[0].tolist()), rel_tol=1e-9)


def test_pairwise_distance_gradient_finite_for_duplicates() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    euclidean_distance(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("num_negatives", [1, 2])
def test_mining_matches_brute_force(num_negatives: int) -> None:
    x = _features()
    dist = euclidean_distance(x)
    tuples = batch_hard_mining(dist, torch.tensor(PIDS), num_negatives=num_negatives)
    expected = _mining_oracle(dist.tolist(), PIDS, num_negatives)
    got = [
        (a, p, n)
        for a, p, n in zip(
            tuples.anchor.tolist(), tuples.positive.tolist(), tuples.negatives.tolist()
        )
    ]
    assert got == expected
    assert tuples.negatives.shape == (len(expected), num_negatives)
    assert tuples.anchor.dtype == tuples.positive.dtype == tuples.negatives.dtype == torch.long


def test_mined_tuples_are_valid() -> None:
    pids = torch.tensor(PIDS)
    tuples = batch_hard_mining(euclidean_distance(_features()), pids, num_negatives=2)
    assert 7 not in tuples.anchor.tolist()  # the singleton identity has no positive
    assert tuples.num_tuples == 7
    assert (tuples.positive != tuples.anchor).all()
    assert (pids[tuples.positive] == pids[tuples.anchor]).all()
    assert (pids[tuples.negatives] != pids[tuples.anchor].unsqueeze(1)).all()
    assert torch.equal(tuples.negative, tuples.negatives[:, 0])


def test_anchor_without_enough_negatives_is_dropped() -> None:
    pids = torch.tensor([0, 0, 0, 1, 1])
    dist = euclidean_distance(_features(5))
    assert batch_hard_mining(dist, pids, num_negatives=2).anchor.tolist() == [0, 1, 2, 3, 4]
    # Identity 1's anchors have 3 negatives: kept with 3; identity 0's have only 2.
    assert batch_hard_mining(dist, pids, num_negatives=3).anchor.tolist() == [3, 4]


def test_ties_break_to_smallest_index() -> None:
    dist = torch.tensor(
        [
            [0.0, 2.0, 2.0, 1.0, 1.0],
            [2.0, 0.0, 1.0, 3.0, 3.0],
            [2.0, 1.0, 0.0, 3.0, 3.0],
            [3.0, 1.0, 1.0, 0.0, 5.0],
            [1.0, 3.0, 3.0, 5.0, 0.0],
        ]
    )  # rows need not be symmetric for the miner
    tuples = batch_hard_mining(dist, torch.tensor([0, 0, 0, 1, 1]))
    assert tuples.positive[0].item() == 1
    assert tuples.negative[0].item() == 3
    assert tuples.anchor.tolist() == [0, 1, 2, 3, 4]
    assert tuples.negative[3].item() == 1
    assert tuples.positive[1].item() == 0


def test_mining_does_not_track_gradients() -> None:
    x = _features().requires_grad_(True)
    tuples = batch_hard_mining(euclidean_distance(x), torch.tensor(PIDS))
    assert not any(t.requires_grad for t in tuples)


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.3, 2.0])
def test_loss_matches_oracle(margin: float, soft_margin: bool) -> None:
    x = _features()
    dist = _dist_oracle(x.tolist())
    terms = []
    for a, p, negs in _mining_oracle(dist, PIDS, 1):
        v = dist[a][p] - dist[a][negs[0]] + margin
        terms.append(math.log1p(math.exp(v)) if soft_margin else max(0.0, v))
    expected = sum(terms) / len(terms)
    loss, tuples = batch_hard_triplet_loss(
        x, torch.tensor(PIDS), margin=margin, soft_margin=soft_margin
    )
    assert tuples.num_tuples == len(terms)
    assert torch.isclose(loss, torch.tensor(expected, dtype=torch.float64))


def test_loss_matches_torchreid() -> None:
    losses = pytest.importorskip("torchreid.reid.losses")
    x = _features(6, dim=5).float()
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = losses.TripletLoss(margin=0.3)(x, pids)
    loss, _ = batch_hard_triplet_loss(x, pids, margin=0.3)
    assert torch.isclose(loss, expected, atol=1e-6)


def test_loss_uses_hardest_negative_with_two_mined() -> None:
    x, pids = _features(), torch.tensor(PIDS)
    one, _ = batch_hard_triplet_loss(x, pids, margin=1.0, num_negatives=1)
    two, tuples = batch_hard_triplet_loss(x, pids, margin=1.0, num_negatives=2)
    assert tuples.negatives.shape[1] == 2
    # Anchor sets can differ only when an anchor lacks a second negative; not the case here.
    assert torch.isclose(one, two)


def test_module_wrapper_matches_function() -> None:
    x, pids = _features(), torch.tensor(PIDS)
    module = TripletLoss(margin=0.5, soft_margin=True)
    loss, _ = module(x, pids)
    expected, _ = batch_hard_triplet_loss(x, pids, margin=0.5, soft_margin=True)
    assert torch.equal(loss, expected)
    assert "margin=0.5" in repr(module)


def test_gradient_flows_to_features() -> None:
    x = _features().requires_grad_(True)
    loss, tuples = batch_hard_triplet_loss(x, torch.tensor(PIDS), margin=5.0)
    loss.backward()
    used = set(tuples.anchor.tolist()) | set(tuples.positive.tolist()) | set(
        tuples.negative.tolist()
    )
    for i in range(len(PIDS)):
        assert (x.grad[i].abs().sum() > 0) == (i in used)


@pytest.mark.parametrize("pids", [[0, 0, 0, 0], [0, 1, 2, 3]])
def test_empty_case(pids: list[int]) -> None:
    x = _features(4).requires_grad_(True)
    loss, tuples = batch_hard_triplet_loss(x, torch.tensor(pids), num_negatives=2)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert isinstance(tuples, MinedTuples)
    assert tuples.anchor.shape == (0,) and tuples.positive.shape == (0,)
    assert tuples.negatives.shape == (0, 2)


def test_inputs_not_modified() -> None:
    x = _features()
    before = x.clone()
    batch_hard_triplet_loss(x, torch.tensor(PIDS))
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "dist, pids, k",
    [
        (torch.zeros(3, 4), torch.zeros(3), 1),
        (torch.zeros(3, 3), torch.zeros(4), 1),
        (torch.zeros(3, 3), torch.zeros(3), 0),
    ],
)
def test_mining_rejects_bad_input(dist: torch.Tensor, pids: torch.Tensor, k: int) -> None:
    with pytest.raises(ValueError):
        batch_hard_mining(dist, pids, num_negatives=k)


# Moved from tests/engine/test_avsl_engine.py (AVSL trains with the distance form).
def test_triplet_loss_from_distances_hand_oracle():
    dist = torch.tensor(
        [[0.0, 1.0, 3.0, 2.0], [1.0, 0.0, 0.5, 4.0], [3.0, 0.5, 0.0, 2.0], [2.0, 4.0, 2.0, 0.0]]
    )
    loss, tuples = triplet_loss_from_distances(dist, torch.tensor([0, 0, 1, 1]), margin=0.3)
    # anchors: relu(1 - 2 + .3) = 0, 1 - .5 + .3 = .8, 2 - .5 + .3 = 1.8, 2 - 2 + .3 = .3
    assert loss.item() == pytest.approx((0.0 + 0.8 + 1.8 + 0.3) / 4)
    assert tuples.negative.tolist() == [3, 2, 1, 0]
    dist.requires_grad_(True)
    empty, _ = triplet_loss_from_distances(dist, torch.tensor([0, 1, 2, 3]))
    assert empty.item() == 0.0 and empty.requires_grad


# -- one loss: the embedding form is the distance form on Euclidean distances ------------------

# Points 0, 1, 3, 6 on a line: the distance matrix is |i - j|, written out by hand.
LINE = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
LINE_DIST = torch.tensor(
    [[0.0, 1.0, 3.0, 6.0], [1.0, 0.0, 2.0, 5.0], [3.0, 2.0, 0.0, 3.0], [6.0, 5.0, 3.0, 0.0]],
    dtype=torch.float64,
)
LINE_PIDS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("soft_margin", [False, True])
def test_distance_form_on_a_hand_matrix_equals_the_embedding_form(soft_margin: bool) -> None:
    # anchor: (hardest positive, hardest negative) -> d_ap - d_an + 0.3
    # 0: (1, 2) -> 1 - 3 + .3; 1: (0, 2) -> 1 - 2 + .3; 2: (3, 1) -> 3 - 2 + .3; 3: (2, 1) -> 3 - 5 + .3
    violations = [-1.7, -0.7, 1.3, -1.7]
    per_anchor = [math.log1p(math.exp(v)) if soft_margin else max(v, 0.0) for v in violations]
    expected = sum(per_anchor) / 4
    from_dist, tuples = triplet_loss_from_distances(
        LINE_DIST, LINE_PIDS, margin=0.3, soft_margin=soft_margin
    )
    assert from_dist.item() == pytest.approx(expected, abs=1e-12)
    assert tuples.positive.tolist() == [1, 0, 3, 2] and tuples.negative.tolist() == [2, 2, 1, 1]
    from_emb, emb_tuples = batch_hard_triplet_loss(
        LINE, LINE_PIDS, margin=0.3, soft_margin=soft_margin
    )
    assert from_emb.item() == pytest.approx(expected, abs=1e-9)  # diagonal: sqrt(1e-12)
    for a, b in zip(tuples, emb_tuples):
        assert torch.equal(a, b)


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("num_negatives", [1, 2])
def test_embedding_form_is_the_distance_form_of_euclidean_distances(
    soft_margin: bool, num_negatives: int
) -> None:
    x, pids = _features().requires_grad_(True), torch.tensor(PIDS)
    loss, tuples = batch_hard_triplet_loss(
        x, pids, margin=0.4, soft_margin=soft_margin, num_negatives=num_negatives
    )
    expected, expected_tuples = triplet_loss_from_distances(
        euclidean_distance(x), pids, margin=0.4, soft_margin=soft_margin,
        num_negatives=num_negatives,
    )
    assert torch.equal(loss, expected)
    for a, b in zip(tuples, expected_tuples):
        assert torch.equal(a, b)
    (grad,) = torch.autograd.grad(loss, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert torch.equal(grad, expected_grad)


def test_distance_form_rejects_a_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        triplet_loss_from_distances(torch.zeros(3, 4), torch.zeros(3))
