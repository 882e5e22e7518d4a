"""Tests for reid.losses.similarity_mining."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import (
    FORMS,
    OBJECTIVES,
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


def test_objectives() -> None:
    assert OBJECTIVES == ("erase", "printed")


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_triplet_mining_loss_matches_oracle(normalize: bool, objective: str) -> None:
    fa, fp, fn = _embeddings(3)
    total = 0.0
    for a, p, n in zip(fa.tolist(), fp.tolist(), fn.tolist()):
        if normalize:
            a, p, n = _unit(a), _unit(p), _unit(n)
        if objective == "erase":
            total += _dist(a, n) - _dist(a, p)
        else:
            total += _dist(a, p) - _dist(a, n)
    expected = total / fa.shape[0]
    got = triplet_mining_loss(fa, fp, fn, normalize=normalize, objective=objective)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_siamese_mining_loss_matches_oracle(normalize: bool, objective: str) -> None:
    f1, f2 = _embeddings(2)
    total = 0.0
    for u, v in zip(f1.tolist(), f2.tolist()):
        if normalize:
            u, v = _unit(u), _unit(v)
        total += -_dist(u, v)  # the same under both objectives
    expected = total / f1.shape[0]
    got = siamese_mining_loss(f1, f2, normalize=normalize, objective=objective)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_quadruplet_mining_loss_matches_oracle(normalize: bool, objective: str) -> None:
    fa, fp, fn1, fn2 = _embeddings(4)
    total = 0.0
    for a, p, n1, n2 in zip(fa.tolist(), fp.tolist(), fn1.tolist(), fn2.tolist()):
        if normalize:
            a, p, n1, n2 = _unit(a), _unit(p), _unit(n1), _unit(n2)
        if objective == "erase":
            total += (_dist(a, n1) - _dist(a, p)) + (_dist(a, n2) - _dist(a, p))
        else:
            total += (_dist(a, p) - _dist(a, n1)) + (_dist(a, p) - _dist(a, n2))
    expected = total / fa.shape[0]
    got = quadruplet_mining_loss(fa, fp, fn1, fn2, normalize=normalize, objective=objective)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


def test_default_objective_is_erase() -> None:
    fa, fp, fn1, fn2 = _embeddings(4)
    assert torch.equal(triplet_mining_loss(fa, fp, fn1), triplet_mining_loss(fa, fp, fn1, objective="erase"))
    assert torch.equal(
        quadruplet_mining_loss(fa, fp, fn1, fn2), quadruplet_mining_loss(fa, fp, fn1, fn2, objective="erase")
    )
    embs = {"anchor": fa, "positive": fp, "negative": fn1}
    assert torch.equal(similarity_mining_loss("triplet", embs), triplet_mining_loss(fa, fp, fn1))


# Two tuples of 2-d unit vectors (no member opposite its anchor), distances worked out by hand:
#   tuple 1: a (1, 0), p (0, 1), n1 (-0.8, 0.6), n2 (-0.6, -0.8):
#            |a - p| = sqrt(2), |a - n1| = sqrt(1.8^2 + 0.6^2) = sqrt(3.6),
#            |a - n2| = sqrt(1.6^2 + 0.8^2) = sqrt(3.2)
#   tuple 2: a (0, 1), p (0.6, 0.8), n1 (-0.6, -0.8), n2 (0.8, -0.6):
#            |a - p| = sqrt(0.6^2 + 0.2^2) = sqrt(0.4), |a - n1| = sqrt(0.6^2 + 1.8^2) = sqrt(3.6),
#            |a - n2| = sqrt(0.8^2 + 1.6^2) = sqrt(3.2)
HAND = {
    "anchor": [[1.0, 0.0], [0.0, 1.0]],
    "positive": [[0.0, 1.0], [0.6, 0.8]],
    "negative1": [[-0.8, 0.6], [-0.6, -0.8]],
    "negative2": [[-0.6, -0.8], [0.8, -0.6]],
}
R2, R04, R32, R36 = math.sqrt(2.0), math.sqrt(0.4), math.sqrt(3.2), math.sqrt(3.6)
HAND_VALUES = {
    # mean over the two tuples
    ("triplet", "erase"): ((R36 - R2) + (R36 - R04)) / 2,
    ("triplet", "printed"): ((R2 - R36) + (R04 - R36)) / 2,
    ("quadruplet", "erase"): ((R36 - R2) + (R32 - R2) + (R36 - R04) + (R32 - R04)) / 2,
    ("quadruplet", "printed"): ((R2 - R36) + (R2 - R32) + (R04 - R36) + (R04 - R32)) / 2,
    ("siamese", "erase"): -(R2 + R04) / 2,
    ("siamese", "printed"): -(R2 + R04) / 2,
}


def _hand(form: str, scale: float = 1.0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    names = {"siamese": ("anchor", "positive"), "triplet": ("anchor", "positive", "negative1"),
             "quadruplet": ("anchor", "positive", "negative1", "negative2")}[form]
    return {
        role: torch.tensor(HAND[name], dtype=torch.float64).mul(scale).requires_grad_(requires_grad)
        for role, name in zip(ROLES[form], names)
    }


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("normalize", [True, False])
def test_hand_computed_values_of_every_form_and_objective(form: str, objective: str, normalize: bool) -> None:
    # unit vectors: normalising changes nothing; with normalize=True a rescaled input neither
    scale = 3.0 if normalize else 1.0
    got = similarity_mining_loss(form, _hand(form, scale), normalize=normalize, objective=objective)
    assert math.isclose(got.item(), HAND_VALUES[form, objective], rel_tol=1e-12)
    args = [_hand(form)[role] for role in ROLES[form]]
    direct = {"siamese": siamese_mining_loss, "triplet": triplet_mining_loss,
              "quadruplet": quadruplet_mining_loss}[form]
    assert math.isclose(direct(*args, objective=objective).item(), HAND_VALUES[form, objective], rel_tol=1e-12)


def _distance_slopes(form: str, objective: str, normalize: bool) -> dict[str, torch.Tensor]:
    """Per tuple, the derivative of L_sm along moving each non-anchor member straight away from
    the anchor (for unit vectors with ``normalize``: along the tangent of that move, which also
    lengthens the distance). Without ``normalize`` the move lengthens ``||f*a - f*x||`` at unit
    rate and changes no other distance, so the slope is ``(1 / T) d L_sm / d ||f*a - f*x||``."""
    embs = _hand(form, requires_grad=True)
    loss = similarity_mining_loss(form, embs, normalize=normalize, objective=objective)
    grads = dict(zip(embs, torch.autograd.grad(loss, list(embs.values()))))
    slopes = {}
    for role in ROLES[form][1:]:
        x, a = embs[role].detach(), embs["anchor"].detach()
        away = (x - a) / (x - a).norm(dim=1, keepdim=True)
        if normalize:  # keep only the tangent part: the radial part is invisible after normalising
            away = away - (away * x).sum(1, keepdim=True) * x
        slopes[role] = (grads[role] * away).sum(1)
    return slopes


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("form", FORMS)
def test_gradient_with_respect_to_the_masked_distances(form: str, objective: str) -> None:
    # L_sm is linear in the distances: d L_sm / d ||f*a - f*p|| is -1 (triplet erase), -2
    # (quadruplet erase: once per negative), +1 / +2 printed, -1 Siamese (both objectives);
    # d L_sm / d ||f*a - f*n|| is +1 erase, -1 printed. Mean over T = 2 tuples: halved.
    slopes = _distance_slopes(form, objective, normalize=False)
    sign = 1.0 if objective == "erase" else -1.0
    expected_positive = {"siamese": -1.0, "triplet": -sign, "quadruplet": -2.0 * sign}[form]
    assert torch.allclose(slopes["positive"], torch.full((2,), expected_positive / 2, dtype=torch.float64))
    for role in ROLES[form][2:]:
        assert torch.allclose(slopes[role], torch.full((2,), sign / 2, dtype=torch.float64))


@pytest.mark.parametrize("normalize", [True, False])
def test_erase_pushes_the_masked_positive_away_and_printed_pulls_it_in(normalize: bool) -> None:
    for form in ("triplet", "quadruplet"):
        erase = _distance_slopes(form, "erase", normalize)
        printed = _distance_slopes(form, "printed", normalize)
        # minimising L_sm moves against the gradient: a negative slope lengthens ||f*a - f*p||
        assert (erase["positive"] < 0).all() and (printed["positive"] > 0).all()
        for role in ROLES[form][2:]:
            assert (erase[role] > 0).all() and (printed[role] < 0).all()
    # the Siamese form (the same under both objectives) agrees with triplet erase on the pair
    for objective in OBJECTIVES:
        assert (_distance_slopes("siamese", objective, normalize)["positive"] < 0).all()


@pytest.mark.parametrize("call", [
    lambda e: triplet_mining_loss(*e[:3], objective="flipped"),
    lambda e: siamese_mining_loss(*e[:2], objective="flipped"),
    lambda e: quadruplet_mining_loss(*e, objective="flipped"),
    lambda e: similarity_mining_loss("siamese", {"anchor": e[0], "positive": e[1]}, objective="flipped"),
])
def test_unknown_objective_is_refused(call) -> None:
    with pytest.raises(ValueError, match="objective 'flipped'"):
        call(_embeddings(4))


def test_hand_computed_triplet_value() -> None:
    # Unit vectors: |a - p| = sqrt(2), |a - n| = 2, so L = 2 - sqrt(2) (erase), sqrt(2) - 2 (printed).
    fa = torch.tensor([[1.0, 0.0]])
    fp = torch.tensor([[0.0, 1.0]])
    fn = torch.tensor([[-1.0, 0.0]])
    assert math.isclose(triplet_mining_loss(fa, fp, fn).item(), 2 - math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(
        triplet_mining_loss(fa, fp, fn, objective="printed").item(), math.sqrt(2) - 2, rel_tol=1e-6
    )
    # normalize=True rescales: the same directions with other lengths give the same value.
    rescaled = triplet_mining_loss(3 * fa, 0.5 * fp, 2 * fn)
    assert torch.isclose(rescaled, triplet_mining_loss(fa, fp, fn))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("form", FORMS)
def test_dispatcher_matches_direct_calls(form: str, objective: str) -> None:
    embs = dict(zip(ROLES[form], _embeddings(len(ROLES[form]))))
    direct = {
        "siamese": siamese_mining_loss,
        "triplet": triplet_mining_loss,
        "quadruplet": quadruplet_mining_loss,
    }[form]
    expected = direct(*(embs[r] for r in ROLES[form]), objective=objective)
    assert torch.equal(similarity_mining_loss(form, embs, objective=objective), expected)


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
