"""PCB training step: ID loss (mean over stripes) + batch-hard triplet loss."""

from __future__ import annotations

from typing import Any

import torch

from reid.losses import batch_hard_triplet_loss, part_cross_entropy

from .base import ReidEngine


def stripe_accuracy(logits: list[torch.Tensor], pids: torch.Tensor) -> float:
    """Training accuracy of the identity predicted from the sum of the stripes' logits."""
    predicted = torch.stack(logits).sum(0).argmax(1)
    return float((predicted == pids).float().mean())


class PCBEngine(ReidEngine):
    """Trains PCB with ``id_weight * L_id + triplet_weight * L_triplet``.

    Args:
        id_weight: weight of the ID loss.
        triplet_weight: weight of the triplet loss (0 skips it).
        margin: triplet margin.
        label_smoothing: label smoothing of the ID loss.
        **kwargs: see :class:`~reid.engine.base.ReidEngine`.
    """

    def __init__(
        self,
        *args: Any,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.weights = {"id": id_weight, "triplet": triplet_weight}
        self.margin = margin
        self.label_smoothing = label_smoothing

    def metric_terms(self, output: Any, pids: Any) -> tuple[dict, Any]:
        """ID and triplet terms of a PCB output; returns ``(terms, mined tuples)``."""
        terms = {"id": part_cross_entropy(output.logits, pids, self.label_smoothing)}
        triplet, mined = batch_hard_triplet_loss(output.features.flatten(1), pids, self.margin)
        if self.weights["triplet"] > 0:
            terms["triplet"] = triplet
        return terms, mined

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        """One step (forward under the engine's autocast, float32 losses); the logged terms."""
        imgs, pids = self.to_device(data)
        with self.autocast():
            output = self.model(imgs)
        output = self.float32(output)
        terms, _ = self.metric_terms(output, pids)
        logged = self.optimise(terms)
        logged["acc"] = stripe_accuracy(output.logits, pids)
        return logged
