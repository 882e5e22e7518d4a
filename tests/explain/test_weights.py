import pytest
import torch

from reid.explain import pair_weights, quadruplet_weights, triplet_weights

# Tiny hand-made vectors (not normalised: the formulas are elementwise and do not care).
FA = torch.tensor([[0.80, 0.00, 0.60]])
FP = torch.tensor([[0.78, 0.10, 0.50]])
FN = torch.tensor([[0.00, 0.60, 0.80]])
FN2 = torch.tensor([[0.30, -0.20, 0.10]])


def test_pair_weights_same_and_different_by_hand():
    # |fa - fp| = (0.02, 0.10, 0.10)
    assert torch.allclose(pair_weights(FA, FP, True), torch.tensor([[0.98, 0.90, 0.90]]))
    assert torch.allclose(pair_weights(FA, FP, False), torch.tensor([[0.02, 0.10, 0.10]]))


def test_pair_weights_per_pair_flags():
    f1 = torch.cat([FA, FA])
    f2 = torch.cat([FP, FN])
    w = pair_weights(f1, f2, torch.tensor([True, False]))
    assert torch.allclose(w[0], torch.tensor([0.98, 0.90, 0.90]))
    assert torch.allclose(w[1], torch.tensor([0.80, 0.60, 0.20]))


def test_triplet_weights_by_hand():
    # (1 - (0.02, 0.10, 0.10)) * (0.80, 0.60, 0.20)
    expected = torch.tensor([[0.98 * 0.80, 0.90 * 0.60, 0.90 * 0.20]])
    assert torch.allclose(triplet_weights(FA, FP, FN), expected)


def test_quadruplet_weights_by_hand():
    # |fa - fn2| = (0.50, 0.20, 0.50)
    expected = torch.tensor([[0.98 * 0.80 * 0.50, 0.90 * 0.60 * 0.20, 0.90 * 0.20 * 0.50]])
    assert torch.allclose(quadruplet_weights(FA, FP, FN, FN2), expected)


def test_weights_are_detached_and_inputs_untouched():
    fa = FA.clone().requires_grad_(True)
    before = fa.detach().clone()
    for w in (pair_weights(fa, FP, True), triplet_weights(fa, FP, FN), quadruplet_weights(fa, FP, FN, FN2)):
        assert not w.requires_grad
    assert torch.equal(fa.detach(), before)


def test_shape_checks():
    with pytest.raises(ValueError):
        triplet_weights(FA, FP, torch.zeros(2, 3))
    with pytest.raises(ValueError):
        pair_weights(FA, FP, torch.tensor([True, False]))
