"""The contrastive and quadruplet losses against hand-computed values on tiny batches."""

import math

import pytest
import torch

from reid.losses.metric import (
    METRIC_LOSSES,
    contrastive_loss_from_distances,
    metric_loss_from_features,
    quadruplet_loss_from_distances,
)
from reid.losses.triplet import batch_hard_triplet_loss

# Four images: identities 0, 0, 1, 2. Symmetric distances:
#        0    1    2    3
#   0    0   1.0  0.5  2.0
#   1   1.0   0   1.5  0.2
#   2   0.5  1.5   0   3.0
#   3   2.0  0.2  3.0   0
DIST = torch.tensor([[0.0, 1.0, 0.5, 2.0], [1.0, 0.0, 1.5, 0.2], [0.5, 1.5, 0.0, 3.0], [2.0, 0.2, 3.0, 0.0]])
PIDS = torch.tensor([0, 0, 1, 2])


def test_contrastive_by_hand():
    # positive pairs: (0,1) d=1 -> 1; mean 1.
    # negative pairs (i<j): (0,2) 0.5, (0,3) 2.0, (1,2) 1.5, (1,3) 0.2, (2,3) 3.0; margin 1:
    #   relu(1 - d)^2 = 0.25, 0, 0, 0.64, 0 -> mean 0.89 / 5 = 0.178
    assert float(contrastive_loss_from_distances(DIST, PIDS, margin=1.0)) == pytest.approx(1.0 + 0.178)
    # a batch without positive pairs: only the push term
    assert float(contrastive_loss_from_distances(DIST[2:, 2:], PIDS[2:], margin=4.0)) == pytest.approx((4 - 3) ** 2)


def test_quadruplet_by_hand():
    # anchors with a positive and a negative: 0 (p=1, d_ap 1.0; hardest negative 2, d_an 0.5) and
    # 1 (p=0, d_ap 1.0; hardest negative 3, d_an 0.2). Pairs of two other identities, both not the
    # anchor's (identity 0): only (2, 3), d = 3.0. Margin 1 (second margin 0.5):
    #   anchor 0: relu(1.0 - 0.5 + 1) + relu(1.0 - 3.0 + 0.5) = 1.5 + 0 = 1.5
    #   anchor 1: relu(1.0 - 0.2 + 1) + relu(1.0 - 3.0 + 0.5) = 1.8 + 0 = 1.8
    loss, tuples = quadruplet_loss_from_distances(DIST, PIDS, margin=1.0)
    assert float(loss) == pytest.approx((1.5 + 1.8) / 2)
    assert tuples.anchor.tolist() == [0, 1] and tuples.negative.tolist() == [2, 3]
    # with margin 5 the second term is active: relu(1 - 3 + 2.5) = 0.5 for both anchors
    loss, _ = quadruplet_loss_from_distances(DIST, PIDS, margin=5.0)
    assert float(loss) == pytest.approx(((1 - 0.5 + 5 + 0.5) + (1 - 0.2 + 5 + 0.5)) / 2)


def test_quadruplet_without_a_second_negative_identity_keeps_the_first_term():
    dist, pids = DIST[:3, :3], PIDS[:3]  # identities 0, 0, 1: no pair of two other identities
    loss, _ = quadruplet_loss_from_distances(dist, pids, margin=1.0)
    # anchor 0: relu(1 - 0.5 + 1) = 1.5; anchor 1: relu(1 - 1.5 + 1) = 0.5
    assert float(loss) == pytest.approx((1.5 + 0.5) / 2)


def test_from_features_and_gradients():
    torch.manual_seed(0)
    features = torch.randn(8, 5, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, mined = metric_loss_from_features("triplet", features, pids, 0.3)
    reference, ref_mined = batch_hard_triplet_loss(features, pids, 0.3)
    assert float(loss) == pytest.approx(float(reference)) and torch.equal(mined.negative, ref_mined.negative)
    for name in METRIC_LOSSES:
        loss, mined = metric_loss_from_features(name, features, pids, 0.3)
        assert math.isfinite(float(loss)) and mined.num_tuples == 8
        (grad,) = torch.autograd.grad(loss, features)
        assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="metric loss must be one of"):
        metric_loss_from_features("hinge", features, pids, 0.3)
    with pytest.raises(ValueError, match="square"):
        contrastive_loss_from_distances(torch.zeros(2, 3), pids[:2], 1.0)
