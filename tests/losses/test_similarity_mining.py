"""Tests for reid.losses.similarity_mining."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import (
    FORMS,
    ROLES,
    MinedTuples,
    batch_hard_mining,
    mining_tuples,
    quadruplet_mining_loss,
    quadruplets,
    siamese_mining_loss,
    siamese_pairs,
    similarity_mining_loss,
    soft_mask,
    soft_mask_weights,
    triplet_mining_loss,
    triplets,
)
from reid.metrics import euclidean_distance


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _embeddings(n: int, t: int = 3, dim: int = 4, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t, dim, generator=gen, dtype=torch.float64) for _ in range(n)]


# --- maps and masks --------------------------------------------------------------------------


def test_soft_mask_hand_example() -> None:
    # The map has the image's size, so upsampling is the identity; min 0, max 4.
    raw = [[0.0, 1.0], [2.0, 4.0]]
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, 1.0]], [[5.0] * 2] * 2]])
    omega, sigma = 10.0, 0.5
    expected = torch.empty_like(images)
    for i in range(2):
        for j in range(2):
            m = raw[i][j] / 4.0
            keep = 1.0 - 1.0 / (1.0 + math.exp(-omega * (m - sigma)))
            for c in range(3):
                expected[0, c, i, j] = images[0, c, i, j].item() * keep
    got = soft_mask(images, torch.tensor([raw]), omega=omega, sigma=sigma)
    assert torch.allclose(got, expected)
    # Spot check one pixel by hand: M = 0.25 -> keep = 1 - sigmoid(-2.5).
    assert math.isclose(got[0, 0, 0, 1].item(), 2.0 * (1.0 - _sigmoid(-2.5)), rel_tol=1e-6)


def test_soft_mask_is_invariant_to_map_scale_and_offset() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 4, generator=gen)
    maps = torch.rand(2, 4, 2, generator=gen)
    assert torch.allclose(soft_mask(images, maps), soft_mask(images, 3.0 * maps + 1.0), atol=1e-6)


def test_soft_mask_weights_shape_and_range() -> None:
    maps = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(1))
    weights = soft_mask_weights(maps, (12, 8), omega=10.0, sigma=0.5)
    assert weights.shape == (2, 12, 8)
    low, high = 1.0 - _sigmoid(10.0 * 0.5), 1.0 - _sigmoid(-10.0 * 0.5)
    assert weights.min() >= low - 1e-6 and weights.max() <= high + 1e-6
    assert math.isclose(weights.min().item(), low, rel_tol=1e-5)  # max-attention pixel


def test_soft_mask_gradcheck_wrt_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 4, 6, generator=gen, dtype=torch.float64)
    maps = torch.rand(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: soft_mask(images, m), (maps,))


def test_soft_mask_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError):
        soft_mask(torch.rand(2, 3, 4, 4), torch.rand(3, 2, 2))


# --- tuples ----------------------------------------------------------------------------------


@pytest.fixture
def mined() -> MinedTuples:
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    return batch_hard_mining(euclidean_distance(x), pids, num_negatives=2)


def test_tuple_helpers_follow_mined_tuples(mined: MinedTuples) -> None:
    pairs = siamese_pairs(mined)
    assert tuple(pairs) == ROLES["siamese"]
    assert torch.equal(pairs["anchor"], mined.anchor)
    assert torch.equal(pairs["positive"], mined.positive)
    trip = triplets(mined)
    assert tuple(trip) == ROLES["triplet"]
    assert torch.equal(trip["negative"], mined.negatives[:, 0])
    quad = quadruplets(mined)
    assert tuple(quad) == ROLES["quadruplet"]
    assert torch.equal(quad["negative1"], mined.negatives[:, 0])
    assert torch.equal(quad["negative2"], mined.negatives[:, 1])
    for form in FORMS:
        assert tuple(mining_tuples(mined, form)) == ROLES[form]


def test_quadruplets_need_two_negatives() -> None:
    one = MinedTuples(torch.tensor([0]), torch.tensor([1]), torch.tensor([[2]]))
    with pytest.raises(ValueError):
        quadruplets(one)
    with pytest.raises(ValueError):
        mining_tuples(one, "pentuplet")


# --- losses ----------------------------------------------------------------------------------


def _dist(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


@pytest.mark.parametrize("normalize", [True, False])
def test_triplet_mining_loss_matches_oracle(normalize: bool) -> None:
    fa, fp, fn = _embeddings(3)
    total = 0.0
    for a, p, n in zip(fa.tolist(), fp.tolist(), fn.tolist()):
        if normalize:
            a, p, n = _unit(a), _unit(p), _unit(n)
        total += _dist(a, p) - _dist(a, n)
    expected = total / fa.shape[0]
    got = triplet_mining_loss(fa, fp, fn, normalize=normalize)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("normalize", [True, False])
def test_siamese_mining_loss_matches_oracle(normalize: bool) -> None:
    f1, f2 = _embeddings(2)
    total = 0.0
    for u, v in zip(f1.tolist(), f2.tolist()):
        if normalize:
            u, v = _unit(u), _unit(v)
        total += -_dist(u, v)
    expected = total / f1.shape[0]
    got = siamese_mining_loss(f1, f2, normalize=normalize)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("normalize", [True, False])
def test_quadruplet_mining_loss_matches_oracle(normalize: bool) -> None:
    fa, fp, fn1, fn2 = _embeddings(4)
    total = 0.0
    for a, p, n1, n2 in zip(fa.tolist(), fp.tolist(), fn1.tolist(), fn2.tolist()):
        if normalize:
            a, p, n1, n2 = _unit(a), _unit(p), _unit(n1), _unit(n2)
        total += (_dist(a, p) - _dist(a, n1)) + (_dist(a, p) - _dist(a, n2))
    expected = total / fa.shape[0]
    got = quadruplet_mining_loss(fa, fp, fn1, fn2, normalize=normalize)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


def test_hand_computed_triplet_value() -> None:
    # Unit vectors: |a - p| = sqrt(2), |a - n| = 2, so L = sqrt(2) - 2.
    fa = torch.tensor([[1.0, 0.0]])
    fp = torch.tensor([[0.0, 1.0]])
    fn = torch.tensor([[-1.0, 0.0]])
    assert math.isclose(triplet_mining_loss(fa, fp, fn).item(), math.sqrt(2) - 2, rel_tol=1e-6)
    # normalize=True rescales: the same directions with other lengths give the same value.
    rescaled = triplet_mining_loss(3 * fa, 0.5 * fp, 2 * fn)
    assert torch.isclose(rescaled, triplet_mining_loss(fa, fp, fn))


@pytest.mark.parametrize("form", FORMS)
def test_dispatcher_matches_direct_calls(form: str) -> None:
    embs = dict(zip(ROLES[form], _embeddings(len(ROLES[form]))))
    direct = {
        "siamese": siamese_mining_loss,
        "triplet": triplet_mining_loss,
        "quadruplet": quadruplet_mining_loss,
    }[form]
    expected = direct(*(embs[r] for r in ROLES[form]))
    assert torch.equal(similarity_mining_loss(form, embs), expected)


def test_dispatcher_rejects_wrong_roles_and_forms() -> None:
    fa, fp = _embeddings(2)
    with pytest.raises(ValueError):
        similarity_mining_loss("triplet", {"anchor": fa, "positive": fp})
    with pytest.raises(ValueError):
        similarity_mining_loss("contrastive", {"anchor": fa, "positive": fp})


def test_losses_reject_mismatched_shapes() -> None:
    fa, fp = _embeddings(2)
    with pytest.raises(ValueError):
        siamese_mining_loss(fa, fp[:2])


@pytest.mark.parametrize("form", FORMS)
def test_empty_tuples_give_connected_zero(form: str) -> None:
    embs = {r: torch.zeros(0, 4, requires_grad=True) for r in ROLES[form]}
    loss = similarity_mining_loss(form, embs)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.grad_fn is not None
    loss.backward()
    assert all(e.grad is not None for e in embs.values())


def test_gradient_flows_from_loss_to_maps_through_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 4, generator=gen)
    maps = torch.rand(6, 4, 2, generator=gen, requires_grad=True)
    encoder = torch.nn.Linear(3 * 8 * 4, 5)
    mined = MinedTuples(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([[4], [5]]))
    idx = triplets(mined)
    feats = {r: encoder(soft_mask(images[i], maps[i]).flatten(1)) for r, i in idx.items()}
    similarity_mining_loss("triplet", feats).backward()
    assert maps.grad is not None
    assert (maps.grad.flatten(1).abs().sum(1) > 0).all()
