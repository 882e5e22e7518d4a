"""The metric losses of the SAM paper's retrieval table besides the triplet loss, on a batch.

The paper pairs each form of similarity mining with its metric loss (its Table 1): a Siamese
network with the contrastive loss, a triplet network with the triplet loss
(:mod:`reid.losses.triplet`), a quadruplet network with the quadruplet loss. Both losses here take
a ``(B, B)`` matrix of Euclidean distances ``d`` and the labels, so that they apply to any
embedding (:func:`metric_loss_from_features` computes the distances).

* **Contrastive** (Hadsell, Chopra and LeCun, CVPR 2006), over every pair ``i < j`` of the batch:
  ``L = mean_{positive pairs} d_ij^2 + mean_{negative pairs} relu(m - d_ij)^2``; the two means
  keep the few positive pairs of a P x K batch from being drowned by the many negative ones (this
  project's choice; a term without pairs is 0).
* **Quadruplet** (Chen et al., "Beyond Triplet Loss", CVPR 2017), batch-hard: per anchor ``a``
  with a positive and a negative in the batch, its hardest positive ``p`` and hardest negative
  ``n`` (the triplet miner, :func:`reid.losses.triplet.batch_hard_mining`), and the batch's
  closest pair of images ``(n1, n2)`` of two different identities both other than ``a``'s:
  ``relu(d_ap - d_an + m) + relu(d_ap - d_{n1 n2} + m / 2)``, mean over anchors. Distances, not
  squared distances, as the batch-hard triplet loss; the second margin is half the first, as in
  the paper's experiments (1 and 0.5).
* **Margin** (Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017;
  :mod:`reid.losses.margin`): on the Euclidean distances of the features L2-normalised to unit
  length, ``max(0, alpha + y (D - beta))`` over every positive pair and one negative per pair drawn
  by distance-weighted sampling, with the learnable boundary ``beta`` that the model holds.
"""

from __future__ import annotations

import torch

from reid.metrics.distance import euclidean_distance

from .margin import MARGIN_ALPHA, MARGIN_BETA, margin_loss_from_features
from .triplet import MinedTuples, batch_hard_mining, triplet_loss_from_distances

__all__ = ["METRIC_LOSSES", "contrastive_loss_from_distances", "metric_loss_from_features",
           "quadruplet_loss_from_distances"]

METRIC_LOSSES: tuple[str, ...] = ("triplet", "contrastive", "quadruplet", "margin")
"""The metric losses of ``LOSS.METRIC``."""


def _check(dist: torch.Tensor, pids: torch.Tensor) -> None:
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"need a square (B, B) distance matrix, got {tuple(dist.shape)}")
    if pids.shape != (dist.shape[0],):
        raise ValueError(f"need (B,) labels for B = {dist.shape[0]}, got {tuple(pids.shape)}")


def contrastive_loss_from_distances(dist: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """The contrastive loss of a batch (module docstring)."""
    _check(dist, pids)
    upper = torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)
    same = pids[:, None] == pids[None, :]
    positive, negative = dist[upper & same], dist[upper & ~same]
    zero = dist.sum() * 0.0
    pull = positive.pow(2).mean() if positive.numel() else zero
    push = torch.relu(margin - negative).pow(2).mean() if negative.numel() else zero
    return pull + push


def quadruplet_loss_from_distances(
    dist: torch.Tensor, pids: torch.Tensor, margin: float
) -> tuple[torch.Tensor, MinedTuples]:
    """The batch-hard quadruplet loss (module docstring) and the anchors' mined triplets."""
    _check(dist, pids)
    tuples = batch_hard_mining(dist, pids)
    if tuples.num_tuples == 0:
        return dist.sum() * 0.0, tuples
    a, p, n = tuples.anchor, tuples.positive, tuples.negative
    d_ap, d_an = dist[a, p], dist[a, n]
    first = torch.relu(d_ap - d_an + margin)
    # for each anchor: the closest pair of two other identities, both different from the anchor's
    different = pids[:, None] != pids[None, :]
    pair_ok = different[None, :, :] & different[a][:, :, None] & different[a][:, None, :]  # (T, B, B)
    masked = torch.where(pair_ok, dist[None, :, :], torch.full_like(dist[None, :, :], float("inf")))
    d_nn = masked.flatten(1).min(dim=1).values
    has_pair = torch.isfinite(d_nn)
    second = torch.where(has_pair, torch.relu(d_ap - torch.where(has_pair, d_nn, d_ap) + margin / 2), d_ap * 0.0)
    return (first + second).mean(), tuples


def metric_loss_from_features(
    name: str,
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float,
    margin_beta: torch.Tensor | float = MARGIN_BETA,
    margin_alpha: float = MARGIN_ALPHA,
) -> tuple[torch.Tensor, MinedTuples]:
    """``name``'s loss (``triplet``, ``contrastive``, ``quadruplet`` or ``margin``) on the Euclidean
    distances of ``features``, and the batch-hard triplets of the batch (what similarity mining
    reuses).

    ``margin`` is the margin of the first three; the margin loss takes ``margin_alpha`` and the
    boundary ``margin_beta`` (the model's learnable parameter; a number gives a fixed boundary)
    and sees the features L2-normalised, whose distances also give its batch-hard triplets."""
    if name not in METRIC_LOSSES:
        raise ValueError(f"metric loss must be one of {METRIC_LOSSES}, got {name!r}")
    if name == "margin":
        loss, _, unit_dist = margin_loss_from_features(features, pids, margin_beta, margin_alpha)
        return loss, batch_hard_mining(unit_dist.detach(), pids)
    dist = euclidean_distance(features)
    if name == "triplet":
        return triplet_loss_from_distances(dist, pids, margin)
    if name == "quadruplet":
        return quadruplet_loss_from_distances(dist, pids, margin)
    return contrastive_loss_from_distances(dist, pids, margin), batch_hard_mining(dist.detach(), pids)
