"""Identity (classification) loss for part-based models such as PCB."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["part_cross_entropy"]


def _stripe_logits(logits: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Splits the logits into a list of ``(B, C)`` tensors, one per stripe."""
    if isinstance(logits, torch.Tensor):
        if logits.dim() == 2:
            return [logits]
        if logits.dim() != 3:
            raise ValueError(f"expected logits of shape (B, P, C), got {tuple(logits.shape)}")
        return list(logits.unbind(dim=1))
    stripes = list(logits)
    if not stripes:
        raise ValueError("expected at least one stripe of logits")
    for stripe in stripes:
        if stripe.dim() != 2:
            raise ValueError(f"expected stripe logits of shape (B, C), got {tuple(stripe.shape)}")
    return stripes


def part_cross_entropy(
    logits: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean over stripes of the (optionally label-smoothed) cross-entropy.

    Each stripe ``p`` has its own classifier; its loss is the cross-entropy of its logits
    against the identity labels, averaged over the batch. With label smoothing ``eps`` the
    target distribution is ``(1 - eps) * onehot(y) + eps / C``, as in torchreid's
    ``CrossEntropyLoss`` (and ``torch.nn.functional.cross_entropy(label_smoothing=eps)``).

    Reference: Sun et al., "Beyond Part Models", ECCV 2018, section 3.1 (one cross-entropy
    per part, summed; here averaged so the scale does not depend on ``P``). Label smoothing:
    Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, section 7.

    Args:
        logits: A sequence of ``P`` tensors of shape ``(B, C)`` (classes may differ per
            stripe), or one tensor of shape ``(B, P, C)``; a single ``(B, C)`` tensor is
            treated as one stripe.
        targets: Identity labels of shape ``(B,)``, long, in ``[0, C)``.
        label_smoothing: ``eps`` in ``[0, 1]``.

    Returns:
        Scalar tensor: ``(1 / P) * sum_p mean_b CE(logits_p[b], targets[b])``.

    Raises:
        ValueError: On malformed shapes or a smoothing value outside ``[0, 1]``.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    stripes = _stripe_logits(logits)
    if targets.dim() != 1:
        raise ValueError(f"expected targets of shape (B,), got {tuple(targets.shape)}")
    losses = []
    for stripe in stripes:
        if stripe.shape[0] != targets.shape[0]:
            raise ValueError(
                f"batch size mismatch: logits {stripe.shape[0]} vs targets {targets.shape[0]}"
            )
        losses.append(F.cross_entropy(stripe, targets, label_smoothing=label_smoothing))
    return torch.stack(losses).mean()
