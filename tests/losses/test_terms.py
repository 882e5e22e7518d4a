"""Tests for reid.losses.terms."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import as_floats, combine


def test_combine_weights_terms() -> None:
    ml = torch.tensor(1.5, requires_grad=True)
    sm = torch.tensor(-0.5, requires_grad=True)
    total = combine({"ml": ml, "sm": sm}, {"sm": 0.2, "unused": 9.0})
    assert torch.isclose(total, torch.tensor(1.5 + 0.2 * -0.5))
    total.backward()
    assert ml.grad.item() == 1.0 and math.isclose(sm.grad.item(), 0.2, rel_tol=1e-6)
    assert as_floats({"ml": ml, "sm": sm}) == {"ml": 1.5, "sm": -0.5}


def test_combine_rejects_empty_and_non_scalar() -> None:
    with pytest.raises(ValueError):
        combine({}, {})
    with pytest.raises(ValueError):
        combine({"ml": torch.ones(2)})
