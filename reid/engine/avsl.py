"""AVSL training step and evaluation: per-level metric losses + the overall loss on ``d_hat``.

The objective is ``sum_l w_l L_m(d^l) + w_f L_f(d_hat)`` (AVSL paper, section 3.4, eq. 10).
``d^l = sum_i delta^l_i`` is the squared Euclidean distance of the normalised level embeddings
(:func:`reid.metrics.euclidean_squared_distance`, clamped at zero) and trains the trunk and the
projections; ``L_f`` sees the nodes detached (and the proxies detached), so it trains only the
reliability parameters. ``L`` is either a batch-hard triplet loss on the distances
(:func:`reid.losses.triplet_loss_from_distances`, default, for P x K batches) or the ProxyAnchor
loss of the paper (needs a model built with ``proxies=True``). Evaluation compares queries and
gallery with ``d_hat`` through the model's chunked :meth:`~reid.models.avsl.AVSL.pairwise_distance`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from reid.losses import triplet_loss_from_distances
from reid.metrics import euclidean_squared_distance
from reid.models.avsl import AVSLOutput

from .base import ReidEngine
from .evaluation import ranking_metrics

logger = logging.getLogger(__name__)

LOSSES = ("triplet", "proxy_anchor")


def proxy_anchor_loss(
    dist: torch.Tensor,
    pids: torch.Tensor,
    alpha: float = 16.0,
    pos_margin: float = 1.8,
    neg_margin: float = 2.2,
) -> torch.Tensor:
    """ProxyAnchor loss on sample-to-proxy distances.

    ``mean_{c in P+} log(1 + sum_{x: y_x = c} exp(alpha (d(x, c) - pos_margin)))
    + mean_{c} log(1 + sum_{x: y_x != c} exp(-alpha (d(x, c) - neg_margin)))``, where ``P+`` are
    the proxies with a positive in the batch. On squared distances of unit vectors
    (``d = 2 - 2 cos``) this is the cosine form of Kim et al. with scale ``2 alpha`` and margins
    ``1 - pos_margin / 2`` and ``neg_margin / 2 - 1`` (1.8 and 2.2 -> delta = 0.1).

    Reference: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, eq. 4;
    distance form and values (alpha 16, margins 1.8 / 2.2) from the AVSL paper, section 4.2.

    Args:
        dist: ``(B, C)`` distances of each sample to each class proxy.
        pids: ``(B,)`` identities in ``[0, C)``.
        alpha: the scale.
        pos_margin: distances of positives are pushed below it.
        neg_margin: distances of negatives are pushed above it.

    Returns:
        Scalar loss.
    """
    classes = torch.arange(dist.shape[1], device=dist.device)
    positive = pids.to(dist.device).view(-1, 1) == classes.view(1, -1)
    zero = dist.new_zeros(1, dist.shape[1])
    pos_logits = (alpha * (dist - pos_margin)).masked_fill(~positive, float("-inf"))
    neg_logits = (-alpha * (dist - neg_margin)).masked_fill(positive, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zero, pos_logits]), dim=0)
    neg_term = torch.logsumexp(torch.cat([zero, neg_logits]), dim=0)
    with_positive = positive.any(dim=0)
    pos_loss = pos_term[with_positive].mean() if bool(with_positive.any()) else dist.sum() * 0.0
    return pos_loss + neg_term.mean()


class AVSLEngine(ReidEngine):
    """Trains AVSL with ``sum_l level_weights[l] * L_m(d^l) + overall_weight * L_f(d_hat)``.

    Logged terms (returned by :meth:`forward_backward`): ``metric_<level>`` per level,
    ``overall``, their weighted sum ``loss``, and ``reliability`` (mean ``p`` over the batch's
    pairs and the rectified levels, a diagnostic). The edge buffers are updated by the model's
    train-mode forward at every step. ``EvalOptions.dist_metric`` and ``normalize_feature`` are
    ignored: test distances are ``d_hat``.

    Reference: AVSL paper, section 3.4, eq. 10 and "Evaluation".

    Args:
        loss: ``triplet`` (batch hard, on squared distances) or ``proxy_anchor``.
        margin: triplet margin (squared-distance units).
        level_weights: weight of each level's metric loss (default all 1).
        overall_weight: weight of ``L_f``.
        proxy_alpha: ProxyAnchor scale.
        proxy_pos_margin: ProxyAnchor positive margin (distance).
        proxy_neg_margin: ProxyAnchor negative margin (distance).
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
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        if loss == "proxy_anchor" and getattr(self.model, "proxies", None) is None:
            raise ValueError("loss 'proxy_anchor' needs a model built with proxies=True")
        levels = list(self.model.levels)
        level_weights = [1.0] * len(levels) if level_weights is None else list(level_weights)
        if len(level_weights) != len(levels):
            raise ValueError(f"expected {len(levels)} level weights (levels {levels}), got {level_weights}")
        self.loss = loss
        self.margin = margin
        self.proxy_options = {
            "alpha": proxy_alpha, "pos_margin": proxy_pos_margin, "neg_margin": proxy_neg_margin
        }
        self.chunk_size = chunk_size
        self.term_names = [f"metric_{name}" for name in levels]
        self.weights = {name: float(w) for name, w in zip(self.term_names, level_weights)}
        self.weights["overall"] = float(overall_weight)
        if self.eval_options.dist_metric != "euclidean" or self.eval_options.normalize_feature:
            logger.info("AVSL ignores TEST.DIST_METRIC and TEST.NORMALIZE_FEATURE: test distances are d_hat")

    # -- training ------------------------------------------------------------------------------

    def metric_terms(
        self, output: AVSLOutput, pids: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms of a train-mode output and diagnostics.

        Args:
            output: the model's train-mode output for a batch of B images.
            pids: ``(B,)`` identities.

        Returns:
            ``(terms, stats)``: ``metric_<level>`` and ``overall`` scalar tensors; ``reliability``.
        """
        model = self.model
        stds = output.cam_stds
        detached = [e.detach() for e in output.embeddings]
        terms: dict[str, torch.Tensor] = {}
        if self.loss == "triplet":
            for name, emb in zip(self.term_names, output.embeddings):
                terms[name], _ = triplet_loss_from_distances(
                    euclidean_squared_distance(emb, clamp_min=0.0), pids, self.margin
                )
            d_hat = model.rectified_distance(
                [e.unsqueeze(1) for e in detached], [s.unsqueeze(1) for s in stds],
                [e.unsqueeze(0) for e in detached], [s.unsqueeze(0) for s in stds],
            )
            terms["overall"], _ = triplet_loss_from_distances(d_hat, pids, self.margin)
        else:
            proxies = [F.normalize(p, dim=1) for p in model.proxies]
            for name, emb, proxy in zip(self.term_names, output.embeddings, proxies):
                terms[name] = proxy_anchor_loss(
                    euclidean_squared_distance(emb, proxy, clamp_min=0.0), pids, **self.proxy_options
                )
            # A proxy has no CAM: its statistic is the batch mean (as the authors' code).
            proxy_stds = [s.mean(0, keepdim=True).unsqueeze(0) for s in stds]
            d_hat = model.rectified_distance(
                [e.unsqueeze(1) for e in detached], [s.unsqueeze(1) for s in stds],
                [p.detach().unsqueeze(0) for p in proxies], proxy_stds,
            )
            terms["overall"] = proxy_anchor_loss(d_hat, pids, **self.proxy_options)
        with torch.no_grad():
            p = model.reliabilities([s.unsqueeze(1) for s in stds], [s.unsqueeze(0) for s in stds])
            stats = {"reliability": float(torch.stack([x.mean() for x in p]).mean())} if p else {}
        return terms, stats

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

    # -- evaluation ----------------------------------------------------------------------------

    def distance_matrix(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """``(N, M)`` ``d_hat`` on the CPU from flat eval features, computed on the engine's device."""
        return self.model.pairwise_distance(
            query.to(self.device), gallery.to(self.device), chunk_size=self.chunk_size
        ).cpu()

    def score(self, query: Any, gallery: Any) -> dict[str, float]:
        """Ranking metrics of the ``d_hat`` matrix (re-ranked when ``EvalOptions.rerank``)."""
        opts = self.eval_options
        distmat = self.distance_matrix(query.features, gallery.features).numpy()
        if opts.rerank:
            from reid.metrics import re_ranking

            q_q = self.distance_matrix(query.features, query.features).numpy()
            g_g = self.distance_matrix(gallery.features, gallery.features).numpy()
            distmat = re_ranking(distmat, q_q, g_g)
        return ranking_metrics(distmat, query, gallery, opts.ranks, opts.use_metric_cuhk03)
