"""ProxyAnchor loss on sample-to-proxy distances (AVSL's proxy objective).

The loss sees only a ``(B, C)`` distance matrix between the batch and ``C`` class proxies; the
proxies themselves are parameters of the model that owns them (``AVSL.proxies``, so that they
are saved in its checkpoints), and the caller computes the distances, e.g. with
:func:`reid.metrics.euclidean_squared_distance` of L2-normalised embeddings and proxies.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ProxyAnchorLoss", "proxy_anchor_loss"]


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
    distance form and values (alpha 16, margins 1.8 / 2.2) from the AVSL paper, section 4.2;
    docs/method.md section 5.

    Args:
        dist: ``(B, C)`` distances of each sample to each class proxy.
        pids: ``(B,)`` identities in ``[0, C)``.
        alpha: the scale.
        pos_margin: distances of positives are pushed below it.
        neg_margin: distances of negatives are pushed above it.

    Returns:
        Scalar loss; with no positive in the batch only the negative term.

    Raises:
        ValueError: ``dist`` not 2-D, ``pids`` not ``(B,)`` or outside ``[0, C)``.
    """
    if dist.dim() != 2:
        raise ValueError(f"expected (B, C) sample-to-proxy distances, got {tuple(dist.shape)}")
    if pids.shape != (dist.shape[0],):
        raise ValueError(f"expected pids of shape ({dist.shape[0]},), got {tuple(pids.shape)}")
    if bool(((pids < 0) | (pids >= dist.shape[1])).any()):
        raise ValueError(
            f"pids must be in [0, {dist.shape[1]}) (one proxy per class), got "
            f"[{int(pids.min())}, {int(pids.max())}]"
        )
    classes = torch.arange(dist.shape[1], device=dist.device)
    positive = pids.to(dist.device).view(-1, 1) == classes.view(1, -1)
    zero = dist.new_zeros(1, dist.shape[1])
    pos_logits = (alpha * (dist - pos_margin)).masked_fill(~positive, float("-inf"))
    neg_logits = (-alpha * (dist - neg_margin)).masked_fill(positive, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zero, pos_logits]), dim=0)
    neg_term = torch.logsumexp(torch.cat([zero, neg_logits]), dim=0)
    with_positive = positive.any(dim=0)
    if not bool(with_positive.any()):
        logger.debug("no proxy has a positive in the batch; only the negative term")
        pos_loss = dist.sum() * 0.0
    else:
        pos_loss = pos_term[with_positive].mean()
    return pos_loss + neg_term.mean()


class ProxyAnchorLoss(nn.Module):
    """Module form of :func:`proxy_anchor_loss`: ``loss(dist (B, C), pids (B,))``.

    Holds the hyper-parameters only; the proxies are the model's (see the module docstring).

    Args:
        alpha: the scale.
        pos_margin: distances of positives are pushed below it.
        neg_margin: distances of negatives are pushed above it.
    """

    def __init__(self, alpha: float = 16.0, pos_margin: float = 1.8, neg_margin: float = 2.2):
        super().__init__()
        self.alpha = alpha
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def forward(self, dist: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """See :func:`proxy_anchor_loss`."""
        return proxy_anchor_loss(
            dist, pids, alpha=self.alpha, pos_margin=self.pos_margin, neg_margin=self.neg_margin
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, pos_margin={self.pos_margin}, neg_margin={self.neg_margin}"
