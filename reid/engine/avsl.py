"""AVSL training step and evaluation: per-level metric losses + the overall loss on ``d_hat``.

The objective ``sum_l w_l L_m(d^l) + w_f L_f(d_hat)`` (AVSL paper, section 3.4, eq. 10) is
computed by :class:`reid.losses.AVSLLoss` (which describes the terms); the engine weights the
terms and steps the optimiser. Evaluation compares queries and gallery with ``d_hat`` through
the model's chunked :meth:`~reid.models.avsl.AVSL.pairwise_distance`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from reid.losses import AVSLLoss
from reid.losses.margin import MARGIN_ALPHA
from reid.models.avsl import AVSLOutput

from .base import ReidEngine

logger = logging.getLogger(__name__)


class AVSLEngine(ReidEngine):
    """Trains AVSL with ``sum_l level_weights[l] * L_m(d^l) + overall_weight * L_f(d_hat)``.

    Logged terms (returned by :meth:`forward_backward`): ``metric_<level>`` per level,
    ``overall``, their weighted sum ``loss``, and ``reliability`` (mean ``p`` over the batch's
    pairs and the rectified levels, a diagnostic); with the margin loss also the boundaries
    ``beta_<level>`` and ``beta_overall``. The edge buffers are updated by the model's
    train-mode forward at every step. ``EvalOptions.dist_metric`` and ``normalize_feature`` are
    ignored: test distances are ``d_hat``.

    Reference: AVSL paper, section 3.4, eq. 10 and "Evaluation".

    Args:
        loss: ``triplet`` (batch hard, on squared distances), ``proxy_anchor`` or ``margin``
            (Wu et al.; needs a model built with ``margin_beta``) (:data:`reid.losses.AVSL_LOSSES`).
        margin: triplet margin (squared-distance units).
        level_weights: weight of each level's metric loss (default all 1).
        overall_weight: weight of ``L_f``.
        proxy_alpha: ProxyAnchor scale.
        proxy_pos_margin: ProxyAnchor positive margin (distance).
        proxy_neg_margin: ProxyAnchor negative margin (distance).
        margin_alpha: the margin loss's margin ``alpha`` (distance units).
        chunk_size: queries per chunk at test time (None: automatic).
        **kwargs: see :class:`~reid.engine.base.ReidEngine`.
    """

    def __init__(
        self,
        *args: Any,
        loss: str = "triplet",
        margin: float = 0.3,
        level_weights: Sequence[float] | None = None,
        overall_weight: float = 1.0,
        proxy_alpha: float = 16.0,
        proxy_pos_margin: float = 1.8,
        proxy_neg_margin: float = 2.2,
        margin_alpha: float = MARGIN_ALPHA,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.criterion = AVSLLoss(
            self.model.levels, loss=loss, margin=margin, proxy_alpha=proxy_alpha,
            proxy_pos_margin=proxy_pos_margin, proxy_neg_margin=proxy_neg_margin, margin_alpha=margin_alpha,
        )
        self.criterion.check_model(self.model)
        levels = list(self.model.levels)
        level_weights = [1.0] * len(levels) if level_weights is None else list(level_weights)
        if len(level_weights) != len(levels):
            raise ValueError(f"expected {len(levels)} level weights (levels {levels}), got {level_weights}")
        self.chunk_size = chunk_size
        self.term_names = self.criterion.term_names
        self.weights = {name: float(w) for name, w in zip(self.term_names, level_weights)}
        self.weights["overall"] = float(overall_weight)
        if self.eval_options.dist_metric != "euclidean" or self.eval_options.normalize_feature:
            logger.info("AVSL ignores TEST.DIST_METRIC and TEST.NORMALIZE_FEATURE: test distances are d_hat")

    # -- training ------------------------------------------------------------------------------

    def metric_terms(
        self, output: AVSLOutput, pids: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``metric_<level>`` and ``overall`` loss terms of a train-mode output, and the
        ``reliability`` diagnostic (:class:`reid.losses.AVSLLoss`)."""
        return self.criterion(self.model, output, pids)

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on a training batch; returns the logged terms as floats."""
        imgs, pids = self.to_device(data)
        with self.autocast():
            output = self.model(imgs)
        if not isinstance(output, AVSLOutput):
            raise TypeError(f"expected the model's train-mode AVSLOutput, got {type(output).__name__}")
        terms, stats = self.metric_terms(self.float32(output), pids)
        logged = self.optimise(terms)
        logged.update(stats)
        return logged
