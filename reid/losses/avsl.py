"""AVSL objective: per-level metric losses + the overall loss on ``d_hat``, as a loss object.

The objective is ``sum_l w_l L_m(d^l) + w_f L_f(d_hat)`` (AVSL paper, section 3.4, eq. 10;
docs/method.md section 5). ``d^l = sum_i delta^l_i`` is the squared Euclidean distance of the
normalised level embeddings (:func:`reid.metrics.euclidean_squared_distance`, clamped at zero)
and trains the trunk and the projections; ``L_f`` sees the nodes detached (and the proxies
detached), so it trains only the reliability parameters. ``L`` is a batch-hard triplet
loss on the distances (:func:`reid.losses.triplet_loss_from_distances`, default, for P x K
batches), the ProxyAnchor loss of the paper (:class:`reid.losses.ProxyAnchorLoss`; needs a
model built with ``proxies=True``, which owns the proxies) or the paper's other base loss, Wu et
al.'s margin loss with distance-weighted sampling (:mod:`reid.losses.margin`) on the distances
``sqrt(d^l)`` and ``sqrt(d_hat)``, with one learnable boundary per level and one for ``d_hat``
(needs a model built with ``margin_beta``, which owns them). :class:`AVSLLoss` returns the terms;
their weights ``w_l``, ``w_f`` are the caller's (:class:`reid.engine.avsl.AVSLEngine`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reid.losses.margin import MARGIN_ALPHA, distance_from_squared, margin_loss_from_distances
from reid.losses.proxy_anchor import ProxyAnchorLoss
from reid.losses.triplet import triplet_loss_from_distances
from reid.metrics.distance import euclidean_squared_distance

logger = logging.getLogger(__name__)

__all__ = ["AVSL_LOSSES", "AVSLLoss"]

AVSL_LOSSES: tuple[str, ...] = ("triplet", "proxy_anchor", "margin")
"""The metric loss ``L`` of every level and of ``d_hat``: batch-hard triplet, ProxyAnchor or Wu et
al.'s margin loss."""


class AVSLLoss:
    """Loss terms of an AVSL train-mode output: ``metric_<level>`` per level and ``overall``.

    Called as ``terms, stats = loss(model, output, pids)`` with an :class:`~reid.models.AVSL`
    model (its ``rectified_distance``, ``reliabilities`` and, for ProxyAnchor, ``proxies``, for the
    margin loss ``margin_beta``) and
    its train-mode :class:`~reid.models.avsl.AVSLOutput` (``embeddings``, ``cam_stds``) in
    float32. ``stats`` holds ``reliability``, the mean ``p`` over the batch's pairs and the
    rectified levels (a diagnostic, without gradient), and with the margin loss ``beta_<level>``
    and ``beta_overall``, the boundaries' current values.

    Reference: AVSL paper, section 3.4, eq. 10; docs/method.md section 5.

    Args:
        levels: the model's level names (``model.levels``), bottom-up; they name the terms.
        loss: ``triplet`` (batch hard, on squared distances), ``proxy_anchor`` or ``margin``
            (:data:`AVSL_LOSSES`).
        margin: triplet margin (squared-distance units).
        proxy_alpha: ProxyAnchor scale.
        proxy_pos_margin: ProxyAnchor positive margin (distance).
        proxy_neg_margin: ProxyAnchor negative margin (distance).
        margin_alpha: the margin loss's margin ``alpha`` (Wu et al.'s notation; distance units).

    Raises:
        ValueError: an unknown ``loss``.
    """

    def __init__(
        self,
        levels: Sequence[str],
        loss: str = "triplet",
        margin: float = 0.3,
        proxy_alpha: float = 16.0,
        proxy_pos_margin: float = 1.8,
        proxy_neg_margin: float = 2.2,
        margin_alpha: float = MARGIN_ALPHA,
    ) -> None:
        if loss not in AVSL_LOSSES:
            raise ValueError(f"loss must be one of {list(AVSL_LOSSES)}, got {loss!r}")
        self.loss = loss
        self.margin = margin
        self.proxy_anchor = ProxyAnchorLoss(proxy_alpha, proxy_pos_margin, proxy_neg_margin)
        self.margin_alpha = margin_alpha
        self.levels = tuple(levels)
        self.term_names = [f"metric_{name}" for name in self.levels]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(levels={list(self.levels)}, "
            f"loss={self.loss!r}, margin={self.margin}, proxy_anchor={self.proxy_anchor!r}, "
            f"margin_alpha={self.margin_alpha})"
        )

    def check_model(self, model: nn.Module) -> None:
        """Fails now on a model without the parameters the loss needs.

        Raises:
            ValueError: ``proxy_anchor`` and ``model.proxies`` is None, or ``margin`` and
                ``model.margin_beta`` is not one boundary per level plus one.
        """
        if self.loss == "proxy_anchor" and getattr(model, "proxies", None) is None:
            raise ValueError("loss 'proxy_anchor' needs a model built with proxies=True")
        beta = getattr(model, "margin_beta", None)
        if self.loss == "margin" and (beta is None or tuple(beta.shape) != (len(self.levels) + 1,)):
            raise ValueError(
                f"loss 'margin' needs a model built with margin_beta (one boundary per level and one for "
                f"d_hat, {len(self.levels) + 1}), got {None if beta is None else tuple(beta.shape)}"
            )

    def __call__(
        self, model: nn.Module, output: Any, pids: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms of a train-mode output and diagnostics.

        Args:
            model: the AVSL model that produced ``output``.
            output: its train-mode output for a batch of B images.
            pids: ``(B,)`` identities.

        Returns:
            ``(terms, stats)``: ``metric_<level>`` and ``overall`` scalar tensors; ``reliability``.
        """
        if len(output.embeddings) != len(self.term_names):
            raise ValueError(
                f"expected {len(self.term_names)} level embeddings, got {len(output.embeddings)}"
            )
        stds = output.cam_stds
        detached = [e.detach() for e in output.embeddings]
        terms: dict[str, torch.Tensor] = {}
        if self.loss == "triplet":
            for name, emb in zip(self.term_names, output.embeddings):
                level = euclidean_squared_distance(emb, clamp_min=0.0)
                terms[name], _ = triplet_loss_from_distances(level, pids, self.margin)
            d_hat = model.rectified_distance(
                [e.unsqueeze(1) for e in detached], [s.unsqueeze(1) for s in stds],
                [e.unsqueeze(0) for e in detached], [s.unsqueeze(0) for s in stds],
            )
            terms["overall"], _ = triplet_loss_from_distances(d_hat, pids, self.margin)
        elif self.loss == "margin":
            # Wu et al.'s loss on distances, not squared distances: sqrt(d^l) is the Euclidean
            # distance of the unit level embeddings; sqrt(d_hat) its counterpart for d_hat
            # (docs/method.md section 13). One boundary per level, the last for d_hat.
            betas = model.margin_beta
            for index, (name, emb) in enumerate(zip(self.term_names, output.embeddings)):
                level = distance_from_squared(euclidean_squared_distance(emb, clamp_min=0.0))
                terms[name], _ = margin_loss_from_distances(
                    level, pids, betas[index], emb.shape[1], self.margin_alpha
                )
            d_hat = model.rectified_distance(
                [e.unsqueeze(1) for e in detached], [s.unsqueeze(1) for s in stds],
                [e.unsqueeze(0) for e in detached], [s.unsqueeze(0) for s in stds],
            )
            terms["overall"], _ = margin_loss_from_distances(
                distance_from_squared(d_hat), pids, betas[-1], detached[-1].shape[1], self.margin_alpha
            )
        else:
            proxies = [F.normalize(p, dim=1) for p in model.proxies]
            for name, emb, proxy in zip(self.term_names, output.embeddings, proxies):
                level = euclidean_squared_distance(emb, proxy, clamp_min=0.0)
                terms[name] = self.proxy_anchor(level, pids)
            # A proxy has no CAM: its statistic is the batch mean (as the authors' code).
            proxy_stds = [s.mean(0, keepdim=True).unsqueeze(0) for s in stds]
            d_hat = model.rectified_distance(
                [e.unsqueeze(1) for e in detached], [s.unsqueeze(1) for s in stds],
                [p.detach().unsqueeze(0) for p in proxies], proxy_stds,
            )
            terms["overall"] = self.proxy_anchor(d_hat, pids)
        with torch.no_grad():
            p = model.reliabilities([s.unsqueeze(1) for s in stds], [s.unsqueeze(0) for s in stds])
            stats = {"reliability": float(torch.stack([x.mean() for x in p]).mean())} if p else {}
            if self.loss == "margin":
                for name, beta in zip([*self.levels, "overall"], model.margin_beta):
                    stats[f"beta_{name}"] = float(beta)
        return terms, stats
