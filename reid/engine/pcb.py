"""PCB training step: ID loss (mean over stripes) + a metric loss (batch-hard triplet by default;
contrastive, quadruplet or Wu et al.'s margin loss with ``LOSS.METRIC``, :mod:`reid.losses.metric`)."""

from __future__ import annotations

from typing import Any

import torch

from reid.losses import part_cross_entropy
from reid.losses.margin import MARGIN_ALPHA
from reid.losses.metric import METRIC_LOSSES, metric_loss_from_features

from .base import ReidEngine


def stripe_accuracy(logits: list[torch.Tensor], pids: torch.Tensor) -> float:
    """Training accuracy of the identity predicted from the sum of the stripes' logits."""
    predicted = torch.stack(logits).sum(0).argmax(1)
    return float((predicted == pids).float().mean())


class PCBEngine(ReidEngine):
    """Trains PCB with ``id_weight * L_id + triplet_weight * L_metric``.

    Args:
        id_weight: weight of the ID loss.
        triplet_weight: weight of the metric loss (0 skips it; named for the default, triplet).
        margin: margin of the metric loss (not of ``margin``, which takes ``margin_alpha``).
        metric: ``triplet`` (batch hard), ``contrastive``, ``quadruplet`` or ``margin`` (Wu et al.;
            needs a model holding its learnable boundary ``margin_beta``, whose value is logged as
            ``margin_beta``); logged under its name.
        label_smoothing: label smoothing of the ID loss.
        margin_alpha: the margin ``alpha`` of the ``margin`` loss.
        **kwargs: see :class:`~reid.engine.base.ReidEngine`.
    """

    def __init__(
        self,
        *args: Any,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        label_smoothing: float = 0.0,
        metric: str = "triplet",
        margin_alpha: float = MARGIN_ALPHA,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if metric not in METRIC_LOSSES:
            raise ValueError(f"metric loss must be one of {METRIC_LOSSES}, got {metric!r}")
        if metric == "margin" and getattr(self.model, "margin_beta", None) is None:
            raise ValueError("metric loss 'margin' needs a model holding its learnable boundary (margin_beta)")
        self.metric = metric
        self.margin_alpha = margin_alpha
        self.weights = {"id": id_weight, metric: triplet_weight}
        self.margin = margin
        self.label_smoothing = label_smoothing

    def metric_terms(self, output: Any, pids: Any) -> tuple[dict, Any]:
        """ID and metric terms of a PCB output; returns ``(terms, mined tuples)`` (the batch-hard
        triplets, whatever the metric loss: what similarity mining reuses)."""
        terms = {"id": part_cross_entropy(output.logits, pids, self.label_smoothing)}
        extra = {}
        if self.metric == "margin":
            extra = dict(margin_beta=self.model.margin_beta, margin_alpha=self.margin_alpha)
        metric, mined = metric_loss_from_features(
            self.metric, output.features.flatten(1), pids, self.margin, **extra
        )
        if self.weights[self.metric] > 0:
            terms[self.metric] = metric
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
        if self.metric == "margin":
            logged["margin_beta"] = float(self.model.margin_beta.detach())
        return logged
