"""Score targets: callables mapping normalised embeddings to one score per sample.

A *score function* takes the ``(B, D)`` L2-normalised embeddings of a batch and returns the
``(B,)`` scores ``s_i`` whose gradients explain each image (as the targets of pytorch-grad-cam).
Score ``i`` must depend on embedding ``i`` only through the graph (weights built from other
samples must be detached), so that one backward pass of ``sum_i s_i`` gives each sample's own
gradient.

Reference: SAM paper, section 3.1: ``s_i = w^T f_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from .weights import pair_weights, quadruplet_weights, triplet_weights

__all__ = ["ScoreFn", "TupleScore", "WeightedScore", "pair_score", "quadruplet_score", "triplet_score"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""``(B, D)`` normalised embeddings -> ``(B,)`` scores."""


@dataclass(frozen=True)
class WeightedScore:
    """``s_i = w_i . f_i`` with fixed weights.

    Reference: SAM paper, section 3.1.

    Attributes:
        weights: ``(B, D)`` weights, one row per sample; used detached.
    """

    weights: torch.Tensor

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` normalised embeddings -> ``(B,)`` scores."""
        if self.weights.shape != embeddings.shape:
            raise ValueError(
                f"weights {tuple(self.weights.shape)} do not match embeddings "
                f"{tuple(embeddings.shape)}"
            )
        return (embeddings * self.weights.detach()).sum(dim=1)


@dataclass(frozen=True)
class TupleScore:
    """``s_i = w . f_i`` for tuples whose images are stacked role by role in one batch.

    The batch holds ``num_roles`` blocks of ``T`` images each (e.g. all anchors, then all
    positives, then all negatives). The weights of tuple ``t`` are computed by ``weight_fn``
    from the tuple's *detached* embeddings and shared by every image of the tuple, so the
    weights are constants for the gradient. The maps of a tuple thus need one forward and
    one backward pass only.

    Reference: SAM paper, section 3.1.

    Attributes:
        weight_fn: ``num_roles`` tensors ``(T, D)`` -> ``(T, D)`` weights, e.g.
            :func:`~reid.explain.weights.triplet_weights`.
        num_roles: images per tuple (2, 3 or 4).
    """

    weight_fn: Callable[..., torch.Tensor]
    num_roles: int

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(num_roles * T, D)`` normalised embeddings -> ``(num_roles * T,)`` scores."""
        total, dim = embeddings.shape
        if total % self.num_roles:
            raise ValueError(f"batch of {total} is not {self.num_roles} equal blocks of roles")
        roles = embeddings.detach().reshape(self.num_roles, total // self.num_roles, dim)
        weights = self.weight_fn(*roles.unbind(0))
        return (embeddings * weights.repeat(self.num_roles, 1)).sum(dim=1)


def pair_score(same: bool | torch.Tensor) -> TupleScore:
    """Score for Siamese pairs stacked as ``[x1; x2]`` (see :func:`pair_weights`).

    Args:
        same: a bool or a ``(T,)`` bool tensor: whether each pair shows one identity.
    """
    return TupleScore(partial(pair_weights, same=same), 2)


def triplet_score() -> TupleScore:
    """Score for triplets stacked as ``[xa; xp; xn]`` (see :func:`triplet_weights`)."""
    return TupleScore(triplet_weights, 3)


def quadruplet_score() -> TupleScore:
    """Score for quadruplets stacked as ``[xa; xp; xn1; xn2]`` (see :func:`quadruplet_weights`)."""
    return TupleScore(quadruplet_weights, 4)
