"""The margin loss of Wu et al. with distance-weighted negative sampling.

Reference: Wu, Manmatha, Smola and Kraehenbuehl, "Sampling Matters in Deep Embedding Learning",
ICCV 2017 (section 4, distance-weighted sampling; section 5, the margin-based loss), and their
released code; docs/method.md section 13.

For a pair ``(i, j)`` of L2-normalised embeddings at Euclidean distance ``D_ij`` (not squared),
with ``y_ij = +1`` for a positive pair (same identity) and ``-1`` for a negative pair::

    loss(i, j) = max(0, alpha + y_ij (D_ij - beta))

``alpha`` is the margin (0.2) and ``beta`` the boundary between positive and negative pairs,
initialised to 1.2 and learned. The learnable ``beta`` is a parameter of the model that trains with
the loss (``PCB.margin_beta``, ``AVSL.margin_beta``), so that the optimiser updates it and
checkpoints keep it; the functions here take it as a tensor.

Pairs (as in Wu et al.'s code): every ordered positive pair ``(a, p)``, ``a != p``, of the batch,
and for each one negative ``n`` of the anchor ``a``, drawn with probability proportional to
``1 / q(D_an)``, where ``q(d) ~ d^(n-2) [1 - d^2 / 4]^((n-3)/2)`` is the density of the distance
between two points drawn uniformly on the unit sphere in ``n`` dimensions (the embedding size).
Distances below ``cutoff`` (0.5) are raised to it first, so that the weight of very close
negatives is bounded; negatives at or beyond ``nonzero_loss_cutoff`` (``beta + alpha``, where the
loss of a negative is zero) get no weight; an anchor with no negative below that cut-off draws
uniformly among its negatives (whose loss is then zero). The weights are computed in log space
and divided by each row's largest one before exponentiation. Each draw is independent (with
replacement), on the CPU, from torch's generator (``generator`` or the global one): the same seed
gives the same pairs on any device.

The loss is the sum over the positive and negative terms divided by the number of terms that are
not zero (Wu et al.'s normalisation; a batch whose terms are all zero gives a zero loss that stays
connected to the distances and to ``beta``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F

from reid.metrics.distance import euclidean_distance

logger = logging.getLogger(__name__)

__all__ = [
    "MARGIN_ALPHA",
    "MARGIN_BETA",
    "SAMPLING_CUTOFF",
    "MarginPairs",
    "distance_from_squared",
    "distance_weighted_sampling",
    "inverse_density_weights",
    "margin_loss_from_distances",
    "margin_loss_from_features",
    "margin_loss_from_pairs",
]

MARGIN_ALPHA = 0.2
"""Wu et al.'s margin ``alpha``."""
MARGIN_BETA = 1.2
"""Wu et al.'s initial boundary ``beta``."""
SAMPLING_CUTOFF = 0.5
"""Distances below this are raised to it before the sampling weights are computed (Wu et al.)."""

_EPS = 1e-12


class MarginPairs(NamedTuple):
    """The pairs of a batch that the margin loss is computed on, one row per positive pair.

    Attributes:
        anchor: ``(T,)`` long, the anchor ``a`` of each positive pair.
        positive: ``(T,)`` long, its positive ``p`` (same identity, ``p != a``).
        negative: ``(T,)`` long, the negative drawn for the pair (another identity than ``a``'s).
    """

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    @property
    def num_pairs(self) -> int:
        """Number of positive pairs ``T`` (as many negative pairs)."""
        return int(self.anchor.shape[0])


def _check(dist: torch.Tensor, pids: torch.Tensor) -> None:
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"need a square (B, B) distance matrix, got {tuple(dist.shape)}")
    if pids.shape != (dist.shape[0],):
        raise ValueError(f"need (B,) labels for B = {dist.shape[0]}, got {tuple(pids.shape)}")


def distance_from_squared(squared: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(squared, 1e-12))``: distances from squared distances (e.g. AVSL's ``d^l`` and
    ``d_hat``) without NaN gradients at zero (the diagonal)."""
    return squared.clamp_min(_EPS).sqrt()


def inverse_density_weights(
    dist: torch.Tensor,
    pids: torch.Tensor,
    dim: int,
    cutoff: float = SAMPLING_CUTOFF,
    nonzero_loss_cutoff: float = MARGIN_BETA + MARGIN_ALPHA,
) -> torch.Tensor:
    """Distance-weighted sampling probabilities: row ``a`` holds ``Pr(n | a)`` over the batch.

    ``Pr(n | a) ~ 1 / q(max(D_an, cutoff))`` for the negatives ``n`` of ``a`` with
    ``D_an < nonzero_loss_cutoff``, zero elsewhere, with
    ``log(1 / q(d)) = -(dim - 2) log d - ((dim - 3) / 2) log(1 - d^2 / 4)``; a row with negatives
    but none below ``nonzero_loss_cutoff`` is uniform over its negatives; a row without negatives
    is zero. Computed in float64, without gradient.

    Args:
        dist: ``(B, B)`` Euclidean distances of unit vectors (in ``[0, 2]``).
        pids: ``(B,)`` identities.
        dim: ``n``, the dimension of the embeddings (>= 2).
        cutoff: distances below it count as ``cutoff``.
        nonzero_loss_cutoff: negatives at this distance or farther get no weight.

    Returns:
        ``(B, B)`` float64 on ``dist``'s device; each row sums to 1 or is zero.
    """
    _check(dist, pids)
    if dim < 2:
        raise ValueError(f"the embedding dimension must be >= 2, got {dim}")
    with torch.no_grad():
        d = dist.detach().double()
        clipped = d.clamp_min(cutoff)
        log_w = -(dim - 2) * clipped.log() - ((dim - 3) / 2) * (1.0 - clipped.pow(2) / 4).clamp_min(_EPS).log()
        pids = pids.to(dist.device)
        negative = pids.view(-1, 1) != pids.view(1, -1)
        candidate = negative & (d < nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~candidate, float("-inf"))
        row_max = log_w.amax(dim=1, keepdim=True)
        weights = (log_w - row_max.masked_fill(~torch.isfinite(row_max), 0.0)).exp()
        fallback = ~candidate.any(dim=1)
        weights[fallback] = negative[fallback].double()
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(_EPS)


def distance_weighted_sampling(
    dist: torch.Tensor,
    pids: torch.Tensor,
    dim: int,
    cutoff: float = SAMPLING_CUTOFF,
    nonzero_loss_cutoff: float = MARGIN_BETA + MARGIN_ALPHA,
    generator: torch.Generator | None = None,
) -> MarginPairs:
    """Every ordered positive pair of the batch with one negative of its anchor drawn from
    :func:`inverse_density_weights` (module docstring).

    Anchors without a positive or without a negative are left out. Pairs are ordered by anchor,
    then by positive. Draws are independent (with replacement), made on the CPU with
    ``generator`` (None: torch's global generator).

    Args:
        dist: ``(B, B)`` Euclidean distances of unit vectors.
        pids: ``(B,)`` identities.
        dim: the embedding dimension ``n`` of the density.
        cutoff: see :func:`inverse_density_weights`.
        nonzero_loss_cutoff: see :func:`inverse_density_weights`.
        generator: a CPU ``torch.Generator`` for the draws.

    Returns:
        :class:`MarginPairs`, long tensors on ``dist``'s device.
    """
    probabilities = inverse_density_weights(dist, pids, dim, cutoff, nonzero_loss_cutoff)
    with torch.no_grad():
        pids = pids.to(dist.device)
        same = pids.view(-1, 1) == pids.view(1, -1)
        eye = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
        positive_mask = same & ~eye
        valid = positive_mask.any(dim=1) & (~same).any(dim=1)
        rows = valid.nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dist.device)
            logger.debug("no anchor with a positive and a negative; no margin pairs")
            return MarginPairs(empty, empty, empty)
        anchor, positive = (positive_mask & valid.view(-1, 1)).nonzero(as_tuple=True)
        counts = positive_mask[rows].sum(dim=1)
        draws = torch.multinomial(
            probabilities[rows].cpu(), int(counts.max()), replacement=True, generator=generator
        ).to(dist.device)
        # the k-th positive pair of the r-th kept anchor takes that anchor's k-th draw
        row_of_pair = torch.repeat_interleave(torch.arange(rows.numel(), device=dist.device), counts)
        first = torch.cumsum(counts, dim=0) - counts
        position = torch.arange(anchor.numel(), device=dist.device) - first[row_of_pair]
        negative = draws[row_of_pair, position]
    return MarginPairs(anchor, positive, negative)


def margin_loss_from_pairs(
    dist: torch.Tensor, pairs: MarginPairs, beta: torch.Tensor | float, alpha: float = MARGIN_ALPHA
) -> torch.Tensor:
    """``(sum_T relu(alpha + D_ap - beta) + sum_T relu(alpha + beta - D_an)) / N``, ``N`` the number
    of non-zero terms (1 when there is none); differentiable in ``dist`` and ``beta``.

    Args:
        dist: ``(B, B)`` distances.
        pairs: the positive pairs and their negatives.
        beta: the boundary, a scalar (tensor or number).
        alpha: the margin.

    Returns:
        A scalar; with no pair a zero connected to ``dist`` (and ``beta``).
    """
    beta = torch.as_tensor(beta, dtype=dist.dtype, device=dist.device).reshape(())
    if pairs.num_pairs == 0:
        return dist.sum() * 0.0 + beta * 0.0
    d_ap = dist[pairs.anchor, pairs.positive]
    d_an = dist[pairs.anchor, pairs.negative]
    positive = F.relu(alpha + d_ap - beta)
    negative = F.relu(alpha + beta - d_an)
    active = int((positive > 0).sum()) + int((negative > 0).sum())
    return (positive.sum() + negative.sum()) / max(active, 1)


def margin_loss_from_distances(
    dist: torch.Tensor,
    pids: torch.Tensor,
    beta: torch.Tensor | float,
    dim: int,
    alpha: float = MARGIN_ALPHA,
    cutoff: float = SAMPLING_CUTOFF,
    nonzero_loss_cutoff: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, MarginPairs]:
    """The margin loss of a batch with distance-weighted sampling (module docstring).

    Args:
        dist: ``(B, B)`` Euclidean distances of unit vectors of dimension ``dim``.
        pids: ``(B,)`` identities.
        beta: the boundary (the model's learnable parameter, or a number).
        dim: the embedding dimension ``n`` of the sampling density.
        alpha: the margin.
        cutoff: distances below it are raised to it for the sampling weights.
        nonzero_loss_cutoff: negatives this far or farther are not drawn; None: the current
            ``beta + alpha``, beyond which a negative's loss is zero.
        generator: a CPU ``torch.Generator`` for the draws (None: torch's global one).

    Returns:
        ``(loss, pairs)``.
    """
    _check(dist, pids)
    if nonzero_loss_cutoff is None:
        nonzero_loss_cutoff = float(torch.as_tensor(beta).detach()) + alpha
    pairs = distance_weighted_sampling(dist, pids, dim, cutoff, nonzero_loss_cutoff, generator)
    return margin_loss_from_pairs(dist, pairs, beta, alpha), pairs


def margin_loss_from_features(
    features: torch.Tensor,
    pids: torch.Tensor,
    beta: torch.Tensor | float = MARGIN_BETA,
    alpha: float = MARGIN_ALPHA,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, MarginPairs, torch.Tensor]:
    """The margin loss on ``features`` L2-normalised (each row to unit length), with the sampling
    density of their dimension.

    Returns:
        ``(loss, pairs, dist)``: ``dist`` the ``(B, B)`` Euclidean distances of the normalised
        rows that the loss saw.
    """
    if features.dim() != 2:
        raise ValueError(f"need (B, D) features, got {tuple(features.shape)}")
    dist = euclidean_distance(F.normalize(features, dim=1))
    loss, pairs = margin_loss_from_distances(dist, pids, beta, features.shape[1], alpha, generator=generator)
    return loss, pairs, dist
