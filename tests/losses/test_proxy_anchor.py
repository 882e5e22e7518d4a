"""Tests for reid.losses.proxy_anchor: hand oracles, the cosine form, the module form."""

import math

import pytest
import torch

from reid.losses import ProxyAnchorLoss, proxy_anchor_loss
from reid.metrics import euclidean_squared_distance


def _hand_proxy_anchor(dist, pids, alpha, pos_margin, neg_margin):
    """The formula of the docstring, in plain Python loops over proxies and samples."""
    num_classes = len(dist[0])
    pos_terms, neg_terms = [], []
    for c in range(num_classes):
        pos = [math.exp(alpha * (row[c] - pos_margin)) for row, y in zip(dist, pids) if y == c]
        neg = [math.exp(-alpha * (row[c] - neg_margin)) for row, y in zip(dist, pids) if y != c]
        if pos:
            pos_terms.append(math.log(1 + sum(pos)))
        neg_terms.append(math.log(1 + sum(neg)))
    pos_loss = sum(pos_terms) / len(pos_terms) if pos_terms else 0.0
    return pos_loss + sum(neg_terms) / len(neg_terms)


# Moved from tests/engine/test_avsl_engine.py.


def test_proxy_anchor_loss_hand_oracle():
    dist = torch.tensor([[0.5, 3.0, 1.0], [1.5, 2.5, 2.0]])
    loss = proxy_anchor_loss(dist, torch.tensor([0, 0]), alpha=1.0, pos_margin=1.0, neg_margin=2.0)
    # only proxy 0 has positives; it has no negative (log 1 = 0)
    pos = math.log(1 + math.exp(-0.5) + math.exp(0.5))
    neg1 = math.log(1 + math.exp(-1.0) + math.exp(-0.5))
    neg2 = math.log(1 + math.exp(1.0) + math.exp(0.0))
    assert loss.item() == pytest.approx(pos + (0.0 + neg1 + neg2) / 3, rel=1e-6)


def test_proxy_anchor_equals_cosine_form_on_unit_vectors():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    proxies = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    pids = torch.tensor([0, 0, 1, 1, 2, 0])
    cos = x @ proxies.t()
    # Kim et al. with alpha = 32, delta = 0.1 on cosine similarities (d = 2 - 2 cos)
    pos = pids[:, None] == torch.arange(3)[None]
    pos_term = torch.log1p((torch.exp(-32 * (cos - 0.1)) * pos).sum(0)).mean()
    neg_term = torch.log1p((torch.exp(32 * (cos + 0.1)) * ~pos).sum(0)).mean()
    dist = euclidean_squared_distance(x, proxies, clamp_min=0.0)
    loss = proxy_anchor_loss(dist, pids, alpha=16.0, pos_margin=1.8, neg_margin=2.2)
    assert loss.item() == pytest.approx((pos_term + neg_term).item(), rel=1e-5)


@pytest.mark.parametrize("dist, pids", [
    ([[0.5, 3.0], [2.5, 1.0]], [0, 1]),  # one sample per proxy
    ([[0.5, 3.0], [1.5, 2.5]], [0, 0]),  # proxy 1 without positive
    ([[4.0, 0.0], [0.0, 4.0]], [0, 1]),  # each sample sits on the other's proxy
])
def test_module_equals_hand_formula_on_2x2(dist, pids):
    loss = ProxyAnchorLoss(alpha=2.0, pos_margin=1.0, neg_margin=2.0)
    got = loss(torch.tensor(dist, dtype=torch.float64), torch.tensor(pids))
    expected = _hand_proxy_anchor(dist, pids, alpha=2.0, pos_margin=1.0, neg_margin=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    function = proxy_anchor_loss(torch.tensor(dist), torch.tensor(pids), 2.0, 1.0, 2.0)
    assert torch.equal(loss(torch.tensor(dist), torch.tensor(pids)), function)


def test_module_defaults_are_the_avsl_values():
    loss = ProxyAnchorLoss()
    assert (loss.alpha, loss.pos_margin, loss.neg_margin) == (16.0, 1.8, 2.2)
    assert "alpha=16.0" in repr(loss)


def test_gradient_reaches_the_distances_and_is_finite():
    dist = torch.tensor([[0.5, 3.0, 1.0], [1.5, 2.5, 2.0]], requires_grad=True)
    ProxyAnchorLoss()(dist, torch.tensor([0, 2])).backward()
    assert torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0


def test_bad_inputs_are_reported():
    loss = ProxyAnchorLoss()
    with pytest.raises(ValueError, match="sample-to-proxy"):
        loss(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="pids of shape"):
        loss(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(torch.zeros(2, 3), torch.tensor([0, 3]))
