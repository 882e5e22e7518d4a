"""Similarity weight vectors for Siamese pairs, triplets and quadruplets.

Each function maps the L2-normalised embeddings of a batch of tuples to one weight vector per
tuple. The weights are computed from *detached* embeddings: they are constants for every
gradient taken afterwards (``docs/method.md`` section 2).

Reference: SAM paper (Zheng et al., "Learning Similarity Attention"), section 3.1.
"""

from __future__ import annotations

import torch

__all__ = ["pair_weights", "quadruplet_weights", "triplet_weights"]


def _check_same_shape(*embeddings: torch.Tensor) -> None:
    first = embeddings[0]
    if first.dim() != 2:
        raise ValueError(f"expected embeddings of shape (B, D), got {tuple(first.shape)}")
    for other in embeddings[1:]:
        if other.shape != first.shape:
            raise ValueError(
                f"embeddings must share one shape (B, D), got {tuple(first.shape)} "
                f"and {tuple(other.shape)}"
            )


def pair_weights(f1: torch.Tensor, f2: torch.Tensor, same: bool | torch.Tensor) -> torch.Tensor:
    """Siamese weights: ``1 - |f1 - f2|`` for a same-identity pair, ``|f1 - f2|`` otherwise.

    Reference: SAM paper, section 3.1, "Extensions to other architectures" (Siamese model).

    Args:
        f1: ``(B, D)`` L2-normalised embeddings of the first images.
        f2: ``(B, D)`` L2-normalised embeddings of the second images.
        same: whether each pair shows one identity: a bool for the whole batch or a ``(B,)``
            bool tensor.

    Returns:
        ``(B, D)`` weights, detached from the graph.
    """
    _check_same_shape(f1, f2)
    diff = (f1.detach() - f2.detach()).abs()
    same_t = torch.as_tensor(same, dtype=torch.bool, device=diff.device)
    if same_t.dim() == 0:
        same_t = same_t.expand(diff.shape[0])
    if same_t.shape != (diff.shape[0],):
        raise ValueError(f"same must be a bool or a ({diff.shape[0]},) tensor, got {tuple(same_t.shape)}")
    return torch.where(same_t[:, None], 1.0 - diff, diff)


def triplet_weights(fa: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Triplet weights ``w = (1 - |fa - fp|) * |fa - fn|`` (elementwise).

    Reference: SAM paper, section 3.1 (``w = w^p ⊙ w^n``).

    Args:
        fa: ``(B, D)`` L2-normalised anchor embeddings.
        fp: ``(B, D)`` L2-normalised positive embeddings.
        fn: ``(B, D)`` L2-normalised negative embeddings.

    Returns:
        ``(B, D)`` weights, detached from the graph.
    """
    _check_same_shape(fa, fp, fn)
    fa = fa.detach()
    return (1.0 - (fa - fp.detach()).abs()) * (fa - fn.detach()).abs()


def quadruplet_weights(
    fa: torch.Tensor, fp: torch.Tensor, fn1: torch.Tensor, fn2: torch.Tensor
) -> torch.Tensor:
    """Quadruplet weights ``w = (1 - |fa - fp|) * |fa - fn1| * |fa - fn2|`` (elementwise).

    Reference: SAM paper, section 3.1, "Extensions to other architectures" (quadruplet model).

    Args:
        fa: ``(B, D)`` L2-normalised anchor embeddings.
        fp: ``(B, D)`` L2-normalised positive embeddings.
        fn1: ``(B, D)`` L2-normalised embeddings of the first negatives.
        fn2: ``(B, D)`` L2-normalised embeddings of the second negatives.

    Returns:
        ``(B, D)`` weights, detached from the graph.
    """
    _check_same_shape(fa, fp, fn1, fn2)
    fa = fa.detach()
    return (
        (1.0 - (fa - fp.detach()).abs())
        * (fa - fn1.detach()).abs()
        * (fa - fn2.detach()).abs()
    )
