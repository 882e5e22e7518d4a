"""Batch-hard triplet loss and the batch-hard miner it is built on.

The loss is computed from a distance matrix (:func:`triplet_loss_from_distances`: any
dissimilarity, e.g. AVSL's level distances or ``d_hat``); :func:`batch_hard_triplet_loss` and
:class:`TripletLoss` are its form on embeddings, with the Euclidean distances of
:func:`reid.metrics.euclidean_distance`. The miner is a separate, pure function so that the
similarity-mining objective (SAM paper, section 3.2) can reuse exactly the tuples that the metric
loss was computed on.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reid.metrics.distance import euclidean_distance

logger = logging.getLogger(__name__)

__all__ = [
    "MinedTuples",
    "TripletLoss",
    "batch_hard_mining",
    "batch_hard_triplet_loss",
    "triplet_loss_from_distances",
]


class MinedTuples(NamedTuple):
    """Indices into the batch of the mined tuples, one row per kept anchor.

    Attributes:
        anchor: ``(T,)`` long, the anchor of each tuple.
        positive: ``(T,)`` long, its hardest positive (same identity, not itself).
        negatives: ``(T, N)`` long, its ``N`` hardest negatives (different identity), hardest
            first.
    """

    anchor: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor

    @property
    def negative(self) -> torch.Tensor:
        """``(T,)`` long: the hardest negative of each tuple (column 0 of ``negatives``)."""
        return self.negatives[:, 0]

    @property
    def num_tuples(self) -> int:
        """Number of tuples ``T``."""
        return int(self.anchor.shape[0])


def batch_hard_mining(
    dist: torch.Tensor, pids: torch.Tensor, num_negatives: int = 1
) -> MinedTuples:
    """Batch-hard mining: the farthest positive and the closest negatives of every anchor.

    Every sample of the batch is tried as an anchor. Its hardest positive is the farthest
    other sample with the same identity; its hardest negatives are the ``num_negatives``
    closest samples with another identity (they may share an identity with each other).
    Anchors with no positive, or fewer than ``num_negatives`` negatives, are dropped. Ties
    are broken by the smallest index. Mining runs without gradients.

    Reference: Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017, section 2 (batch hard); for quadruplets (two hardest negatives) the project's
    docs/method.md section 3, as the SAM paper (section 3.2) does not say how they are mined.

    Args:
        dist: ``(B, B)`` pairwise distances.
        pids: ``(B,)`` identity labels.
        num_negatives: Negatives per anchor (1 for triplets, 2 for quadruplets).

    Returns:
        ``MinedTuples`` with ``anchor (T,)``, ``positive (T,)`` and
        ``negatives (T, num_negatives)``, all long and on ``dist``'s device.
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"expected a square (B, B) distance matrix, got {tuple(dist.shape)}")
    if pids.shape != (dist.shape[0],):
        raise ValueError(f"expected pids of shape ({dist.shape[0]},), got {tuple(pids.shape)}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    with torch.no_grad():
        batch = dist.shape[0]
        pids = pids.to(dist.device)
        same = pids.view(-1, 1) == pids.view(1, -1)
        eye = torch.eye(batch, dtype=torch.bool, device=dist.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        valid = pos_mask.any(dim=1) & (neg_mask.sum(dim=1) >= num_negatives)
        anchor = valid.nonzero(as_tuple=True)[0]

        d = dist.detach()[anchor]
        # Ties: stable sorts keep the smallest index first.
        d_pos = d.masked_fill(~pos_mask[anchor], float("-inf"))
        positive = torch.sort(d_pos, dim=1, descending=True, stable=True).indices[:, 0]
        d_neg = d.masked_fill(~neg_mask[anchor], float("inf"))
        negatives = torch.sort(d_neg, dim=1, stable=True).indices[:, :num_negatives]
    if anchor.numel() < batch:
        logger.debug("batch-hard mining dropped %d of %d anchors", batch - anchor.numel(), batch)
    return MinedTuples(anchor=anchor, positive=positive, negatives=negatives)


def triplet_loss_from_distances(
    dist: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.3,
    soft_margin: bool = False,
    num_negatives: int = 1,
) -> tuple[torch.Tensor, MinedTuples]:
    """Batch-hard triplet loss on a distance matrix, returned with the tuples it was computed on.

    For each kept anchor ``a`` with hardest positive ``p`` and hardest negative ``n``
    (:func:`batch_hard_mining`): ``relu(d(a, p) - d(a, n) + margin)`` (torchreid's
    ``TripletLoss``, a margin ranking loss), or with ``soft_margin=True`` the smooth version
    ``softplus(d(a, p) - d(a, n) + margin)`` (pass ``margin=0`` for the soft margin of Hermans
    et al.). Mean over anchors. Unlike torchreid, the anchor itself never counts as its own
    positive.

    Reference: Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017, section 2 (batch hard, soft margin).

    Args:
        dist: ``(B, B)`` distances (any dissimilarity, e.g. Euclidean distances of embeddings,
            AVSL's squared level distances ``d^l`` or ``d_hat``).
        pids: ``(B,)`` identity labels.
        margin: The margin, in the units of ``dist``.
        soft_margin: Use ``softplus`` instead of the hinge.
        num_negatives: Negatives to mine per anchor (2 to reuse the tuples for quadruplets);
            the loss always uses the hardest one.

    Returns:
        ``(loss, tuples)``: a scalar tensor and the ``MinedTuples``. With no valid anchor the
        loss is a zero that stays connected to ``dist`` in the autograd graph.

    Raises:
        ValueError: ``dist`` not square, ``pids`` not ``(B,)``, ``num_negatives < 1``.
    """
    tuples = batch_hard_mining(dist, pids, num_negatives=num_negatives)
    if tuples.num_tuples == 0:
        logger.debug("no valid triplet in the batch; returning a zero loss")
        return dist.sum() * 0.0, tuples
    d_ap = dist[tuples.anchor, tuples.positive]
    d_an = dist[tuples.anchor, tuples.negative]
    violation = d_ap - d_an + margin
    per_anchor = F.softplus(violation) if soft_margin else F.relu(violation)
    return per_anchor.mean(), tuples


def batch_hard_triplet_loss(
    features: torch.Tensor, pids: torch.Tensor, margin: float = 0.3, soft_margin: bool = False, num_negatives: int = 1
) -> tuple[torch.Tensor, MinedTuples]:
    """Batch-hard triplet loss on embeddings: :func:`triplet_loss_from_distances` of their
    Euclidean distances (:func:`reid.metrics.euclidean_distance`).

    Features are used as given (no normalisation).

    Args:
        features: ``(B, D)`` embeddings.
        pids: ``(B,)`` identity labels.
        margin: The margin.
        soft_margin: Use ``softplus`` instead of the hinge.
        num_negatives: Negatives to mine per anchor (the loss uses the hardest).

    Returns:
        ``(loss, tuples)``, see :func:`triplet_loss_from_distances`; with no valid anchor the
        zero loss stays connected to ``features``.
    """
    return triplet_loss_from_distances(
        euclidean_distance(features),
        pids,
        margin=margin,
        soft_margin=soft_margin,
        num_negatives=num_negatives,
    )


class TripletLoss(nn.Module):
    """Module wrapper of :func:`batch_hard_triplet_loss`.

    Args:
        margin: The margin.
        soft_margin: Use ``softplus`` instead of the hinge.
        num_negatives: Negatives to mine per anchor (the loss uses the hardest).
    """

    def __init__(self, margin: float = 0.3, soft_margin: bool = False, num_negatives: int = 1):
        super().__init__()
        self.margin = margin
        self.soft_margin = soft_margin
        self.num_negatives = num_negatives

    def forward(
        self, features: torch.Tensor, pids: torch.Tensor
    ) -> tuple[torch.Tensor, MinedTuples]:
        """See :func:`batch_hard_triplet_loss`; ``features (B, D)``, ``pids (B,)``."""
        return batch_hard_triplet_loss(
            features,
            pids,
            margin=self.margin,
            soft_margin=self.soft_margin,
            num_negatives=self.num_negatives,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, soft_margin={self.soft_margin}, "
            f"num_negatives={self.num_negatives}"
        )
