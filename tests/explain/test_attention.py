import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reid.explain import attention_maps, capture_output, grad_cam


class GapLinear(nn.Module):
    """``f = W mean_{h,w}(features(x)) + b``: ``d s / d A`` is known in closed form."""

    def __init__(self, features: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.features = features
        self.weight = weight
        self.bias = bias

    def forward(self, x):
        out = self.features(x).mean(dim=(2, 3)) @ self.weight.T
        return out if self.bias is None else out + self.bias


def closed_form_maps(a, weight, bias, w):
    """Eq. 1 by hand for GapLinear: alpha = W^T (w - (w.f) f) / (|e| h w)."""
    e = a.mean(dim=(2, 3)) @ weight.T + bias
    norm = e.norm(dim=1, keepdim=True)
    f = e / norm
    ds_de = (w - (w * f).sum(1, keepdim=True) * f) / norm
    alpha = ds_de @ weight / (a.shape[2] * a.shape[3])
    return torch.relu((alpha[:, :, None, None] * a).sum(1)), f


def resnet18_embedder():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model.eval()


@pytest.fixture(scope="module")
def embedder():
    """One eval-mode resnet18 shared by the tests that do not change it."""
    return resnet18_embedder()


def test_eq1_hand_computed_values():
    # A_0 = [2, 4], A_1 = [8, 0]: mean (3, 4), f = (0.6, 0.8), |e| = 5; w = (1, 0), s = 0.6.
    # ds/de = (w - s f) / 5 = (0.128, -0.096); alpha = ds/de / (h w = 2) = (0.064, -0.048).
    # M = ReLU(0.064 [2, 4] - 0.048 [8, 0]) = ReLU([-0.256, 0.256]) = [0, 0.256].
    model = GapLinear(nn.Identity(), torch.eye(2))
    x = torch.tensor([[[[2.0, 4.0]], [[8.0, 0.0]]]])
    maps, emb = attention_maps(model, "features", x, torch.tensor([[1.0, 0.0]]))
    assert maps.shape == (1, 1, 2)
    assert torch.allclose(maps, torch.tensor([[[0.0, 0.256]]]), atol=1e-6)
    assert torch.allclose(emb, torch.tensor([[0.6, 0.8]]))


def test_eq1_closed_form_with_conv_layer_and_batch():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    weight, bias = torch.randn(5, 4), torch.randn(5)
    model = GapLinear(conv, weight, bias).eval()
    x = torch.randn(3, 3, 6, 4)
    w = torch.rand(3, 5)
    maps, emb = attention_maps(model, conv, x, w)
    with torch.no_grad():
        expected, f = closed_form_maps(conv(x), weight, bias, w)
    assert maps.shape == (3, 6, 4)
    assert expected.max() > 0
    assert torch.allclose(maps, expected, atol=1e-6)
    assert torch.allclose(emb, f, atol=1e-6)


def test_grad_cam_is_relu_of_alpha_weighted_sum():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, -4.0]]]])
    g = torch.tensor([[[[1.0, 3.0]], [[-1.0, -1.0]]]])  # alpha = (2, -1)
    assert torch.equal(grad_cam(a, g), torch.tensor([[[0.0, 8.0]]]))


@pytest.mark.parametrize("layer, size", [("layer3", (4, 2)), ("layer4", (2, 1))])
def test_batch_equals_one_sample_at_a_time(layer, size, embedder):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 32)
    w = torch.randn(2, 512)  # signed, so that some of the raw maps are positive at random init
    maps, emb = attention_maps(embedder, layer, x, w)
    singles = [attention_maps(embedder, layer, x[i : i + 1], w[i : i + 1]) for i in range(2)]
    single_maps = torch.cat([m for m, _ in singles])
    assert maps.shape == single_maps.shape == (2, *size)
    assert maps.max() > 0
    assert torch.allclose(maps, single_maps, rtol=1e-4, atol=1e-6 * maps.abs().max().item())
    assert torch.allclose(emb, torch.cat([e for _, e in singles]), atol=1e-5)


def test_train_mode_breaks_batch_exactness_so_the_test_above_can_fail():
    model = resnet18_embedder().train()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 32)
    w = torch.randn(3, 512)
    with_1, _ = attention_maps(model, "layer3", x[[0, 1]], w[[0, 1]])
    with_2, _ = attention_maps(model, "layer3", x[[0, 2]], w[[0, 2]])
    assert not torch.allclose(with_1[0], with_2[0], rtol=1e-4)


def test_layer_module_or_name_and_inputs_untouched(embedder):
    model = embedder
    x = torch.randn(2, 3, 64, 32)
    w = torch.rand(2, 512)
    x_before, w_before = x.clone(), w.clone()
    by_name, _ = attention_maps(model, "layer4.1", x, w)
    by_module, _ = attention_maps(model, model.layer4[1], x, w)
    assert torch.allclose(by_name, by_module)
    assert torch.equal(x, x_before) and torch.equal(w, w_before)
    assert not x.requires_grad


def _all_modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("train", [False, True])
def test_mode_is_never_changed(train, caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(), nn.Conv2d(4, 4, 1))
    model = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4)).train(train)
    model[0][3].train(not train)  # a mixed state must survive too
    before = _all_modes(model)
    with caplog.at_level(logging.WARNING, logger="reid.explain"):
        attention_maps(model, "0.4", torch.randn(2, 3, 6, 5), torch.rand(2, 4))
    assert _all_modes(model) == before
    assert any("train mode" in r.getMessage() for r in caplog.records) == train


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        self.features(x)
        raise RuntimeError("boom inside forward")


def test_hooks_removed_after_success_and_after_error(embedder):
    model = embedder
    attention_maps(model, "layer4", torch.randn(1, 3, 64, 32), torch.rand(1, 512))
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())

    boom = Boom()
    with pytest.raises(RuntimeError, match="boom inside forward"):
        attention_maps(boom, "features", torch.randn(1, 3, 4, 4), torch.rand(1, 2))
    assert not boom.features._forward_hooks


def test_layer_called_twice_or_never_is_an_error_and_hooks_removed():
    conv = nn.Conv2d(3, 3, 1)
    twice = GapLinear(nn.Sequential(conv, conv), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="2 times"):
        attention_maps(twice, conv, torch.randn(1, 3, 4, 4), torch.rand(1, 2))
    assert not conv._forward_hooks
    unused = GapLinear(nn.Identity(), torch.randn(2, 3))
    unused.spare = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError, match="0 times"):
        attention_maps(unused, "spare", torch.randn(1, 3, 4, 4), torch.rand(1, 2))
    with pytest.raises(ValueError):
        attention_maps(unused, "nope", torch.randn(1, 3, 4, 4), torch.rand(1, 2))


def test_capture_output_propagates_exceptions_and_removes_hook():
    conv = nn.Conv2d(3, 2, 1)
    with pytest.raises(KeyError):
        with capture_output(conv) as captured:
            conv(torch.randn(1, 3, 2, 2))
            raise KeyError("inside block")
    assert len(captured.outputs) == 1 and not conv._forward_hooks


def test_no_grad_gives_detached_equal_maps(embedder):
    model = embedder
    x, w = torch.randn(2, 3, 64, 32), torch.rand(2, 512)
    maps, _ = attention_maps(model, "layer4", x, w)
    with torch.no_grad():
        maps_ng, emb_ng = attention_maps(model, "layer4", x, w)
    assert maps.requires_grad and not maps_ng.requires_grad and not emb_ng.requires_grad
    assert torch.allclose(maps, maps_ng)


def test_score_fn_equals_weights(embedder):
    model = embedder
    x, w = torch.randn(2, 3, 64, 32), torch.rand(2, 512)
    by_weights, _ = attention_maps(model, "layer4", x, w)
    by_score, _ = attention_maps(model, "layer4", x, score_fn=lambda f: (f * w).sum(1))
    assert torch.allclose(by_weights, by_score)
    with pytest.raises(ValueError):
        attention_maps(model, "layer4", x)
    with pytest.raises(ValueError):
        attention_maps(model, "layer4", x, w, score_fn=lambda f: f.sum(1))


def _conv_gap_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fc = nn.Linear(4, 5)
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", fc)
    return model.eval()


def test_first_order_maps_carry_gradient_through_a_only():
    model = _conv_gap_model()
    x, w = torch.randn(2, 3, 5, 4), torch.rand(2, 5)
    maps, emb = attention_maps(model, "conv", x, w)
    assert not emb.requires_grad
    maps.sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    # fc acts only through alpha, which is a constant without create_graph
    assert model.fc.weight.grad is None


def test_create_graph_gives_second_order_gradients():
    model = _conv_gap_model()
    x, w = torch.randn(2, 3, 5, 4), torch.rand(2, 5)
    maps, _ = attention_maps(model, "conv", x, w)
    maps.sum().backward()
    first_order = model.conv.weight.grad.clone()
    model.zero_grad(set_to_none=True)

    maps2, emb2 = attention_maps(model, "conv", x, w, create_graph=True)
    assert torch.allclose(maps, maps2.detach())
    assert emb2.requires_grad
    maps2.sum().backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    assert not torch.allclose(model.conv.weight.grad, first_order)


def test_create_graph_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64) + 0.5
    w = torch.rand(2, 4, dtype=torch.float64)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def maps_of(weight):
        return attention_maps(GapLinear(nn.Identity(), weight), "features", x, w, create_graph=True)[0]

    assert torch.autograd.gradcheck(maps_of, (weight,))


def test_create_graph_under_no_grad_is_an_error():
    model = _conv_gap_model()
    with torch.no_grad(), pytest.raises(ValueError):
        attention_maps(model, "conv", torch.randn(1, 3, 4, 4), torch.rand(1, 5), create_graph=True)


def test_frozen_model_still_explained():
    model = _conv_gap_model().requires_grad_(False)
    x, w = torch.randn(2, 3, 5, 4), torch.rand(2, 5)
    maps, _ = attention_maps(model, "conv", x, w)
    with torch.no_grad():
        a = model.conv(x)
        expected, _ = closed_form_maps(a, model.fc.weight, model.fc.bias, w)
    assert torch.allclose(maps, expected, atol=1e-6)


def test_inplace_ops_after_layer_do_not_corrupt_maps():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    weight, bias = torch.randn(5, 4), torch.randn(5)
    plain = GapLinear(conv, weight, bias).eval()
    inplace = GapLinear(nn.Sequential(conv, nn.ReLU(inplace=True)), weight, bias).eval()
    x, w = torch.randn(2, 3, 5, 4), torch.rand(2, 5)
    maps, _ = attention_maps(inplace, conv, x, w)
    # d s / d A through the ReLU: alpha = mean(dS/dR * [A > 0]) -- compare with autograd on a copy
    with torch.enable_grad():
        a = conv(x).detach().requires_grad_(True)
        e = F.normalize(F.relu(a).mean((2, 3)) @ weight.T + bias, dim=1)
        (g,) = torch.autograd.grad((e * w).sum(), a)
    assert torch.allclose(maps, grad_cam(a.detach(), g), atol=1e-6)
    assert not torch.allclose(maps, attention_maps(plain, conv, x, w)[0])
