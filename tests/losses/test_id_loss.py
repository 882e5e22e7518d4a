"""Tests for reid.losses.id_loss."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import part_cross_entropy


def _oracle(stripes: list[list[list[float]]], targets: list[int], eps: float) -> float:
    """Plain-Python mean over stripes of the label-smoothed cross-entropy."""
    per_stripe = []
    for logits in stripes:
        per_sample = []
        for row, y in zip(logits, targets):
            num_classes = len(row)
            log_z = math.log(sum(math.exp(v) for v in row))
            loss = 0.0
            for c, v in enumerate(row):
                q = (1.0 - eps) * (1.0 if c == y else 0.0) + eps / num_classes
                loss -= q * (v - log_z)
            per_sample.append(loss)
        per_stripe.append(sum(per_sample) / len(per_sample))
    return sum(per_stripe) / len(per_stripe)


@pytest.fixture
def logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 2, 4, dtype=torch.float64)  # (B, P, C)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_matches_oracle(logits: torch.Tensor, eps: float) -> None:
    targets = torch.tensor([0, 3, 1])
    stripes = [logits[:, p].tolist() for p in range(logits.shape[1])]
    expected = _oracle(stripes, targets.tolist(), eps)
    got = part_cross_entropy(logits, targets, label_smoothing=eps)
    assert torch.isclose(got, torch.tensor(expected, dtype=torch.float64))


def test_sequence_equals_stacked(logits: torch.Tensor) -> None:
    targets = torch.tensor([2, 2, 0])
    as_list = part_cross_entropy(list(logits.unbind(1)), targets, label_smoothing=0.1)
    stacked = part_cross_entropy(logits, targets, label_smoothing=0.1)
    assert torch.isclose(as_list, stacked)


def test_stripes_may_have_different_class_counts() -> None:
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, -1.0]])
    targets = torch.tensor([1])
    expected = _oracle([a.tolist(), b.tolist()], [1], 0.0)
    got = part_cross_entropy([a, b], targets)
    assert torch.isclose(got, torch.tensor(expected))


def test_matches_torchreid_cross_entropy(logits: torch.Tensor) -> None:
    losses = pytest.importorskip("torchreid.reid.losses")
    targets = torch.tensor([0, 3, 1])
    reference = losses.CrossEntropyLoss(num_classes=4, use_gpu=False, label_smooth=True)
    logits32 = logits.float()
    expected = torch.stack([reference(logits32[:, p], targets) for p in range(2)]).mean()
    got = part_cross_entropy(logits32, targets, label_smoothing=reference.eps)
    assert torch.isclose(got, expected, atol=1e-6)


def test_gradient_reaches_every_stripe(logits: torch.Tensor) -> None:
    stripes = [s.clone().requires_grad_(True) for s in logits.unbind(1)]
    part_cross_entropy(stripes, torch.tensor([0, 1, 2])).backward()
    for s in stripes:
        assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "bad_logits, targets, eps",
    [
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, dtype=torch.long), 0.0),
        ([], torch.zeros(2, dtype=torch.long), 0.0),
        (torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), 0.0),
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), 1.5),
    ],
)
def test_rejects_bad_input(bad_logits, targets: torch.Tensor, eps: float) -> None:
    with pytest.raises(ValueError):
        part_cross_entropy(bad_logits, targets, label_smoothing=eps)
