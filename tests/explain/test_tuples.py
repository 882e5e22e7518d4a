import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reid.explain import (
    attention_maps,
    attention_maps_from_features,
    explain_pair,
    explain_pair_features,
    explain_quadruplet,
    explain_quadruplet_features,
    explain_triplet,
    explain_triplet_features,
    pair_weights,
    quadruplet_weights,
    triplet_weights,
)


class TinyStripeNet(nn.Module):
    """PCB-like: resnet18 trunk, ``forward_features`` -> layer4 map, stripe-pooled head."""

    def __init__(self, stripes: int = 2):
        super().__init__()
        trunk = torchvision.models.resnet18(weights=None)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.stripes = stripes

    def forward_features(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def embed_features(self, feature_map):
        pooled = F.adaptive_avg_pool2d(feature_map, (self.stripes, 1)).flatten(2).transpose(1, 2)
        return F.normalize(pooled, dim=2).flatten(1)

    def forward(self, x):
        return self.embed_features(self.forward_features(x))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyStripeNet().eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(5, 3, 64, 32)  # layer4 map 2 x 1


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6 * max(a.abs().max().item(), 1e-3))


def test_head_path_equals_full_path(net, images):
    torch.manual_seed(2)
    w = torch.randn(5, 1024)
    full_maps, full_emb = attention_maps(net, "layer4", images, w)
    with torch.no_grad():
        feats = net.forward_features(images)
    head_maps, head_emb = attention_maps_from_features(net.embed_features, feats, w)
    assert head_maps.shape == full_maps.shape == (5, 2, 1)
    assert full_maps.max() > 0
    assert close(head_maps, full_maps)
    assert torch.allclose(head_emb, full_emb, atol=1e-5)
    assert not feats.requires_grad


def test_explain_pair_equals_attention_maps_with_pair_weights(net, images):
    x1, x2 = images[[0, 0, 1]], images[[2, 3, 4]]
    same = torch.tensor([True, False, True])
    m1, m2 = explain_pair(net, "layer4", x1, x2, same)
    with torch.no_grad():
        f1, f2 = F.normalize(net(torch.cat([x1, x2])), dim=1).split(3)
    w = pair_weights(f1, f2, same)
    want1, want2 = attention_maps(net, "layer4", torch.cat([x1, x2]), w.repeat(2, 1))[0].split(3)
    assert close(m1, want1) and close(m2, want2)
    assert m1.shape == m2.shape == (3, 2, 1)


def test_explain_triplet_and_quadruplet_equal_attention_maps_with_weights(net, images):
    xa, xp, xn, xn2 = images[[0]], images[[1]], images[[2]], images[[3]]
    with torch.no_grad():
        fa, fp, fn, fn2 = F.normalize(net(images[:4]), dim=1).split(1)
    # oracle: the stacked images with the hand-built weights repeated for every role
    w3 = triplet_weights(fa, fp, fn).repeat(3, 1)
    want3 = attention_maps(net, "layer4", images[:3], w3)[0]
    assert close(torch.cat(explain_triplet(net, "layer4", xa, xp, xn)), want3)
    w4 = quadruplet_weights(fa, fp, fn, fn2).repeat(4, 1)
    want4 = attention_maps(net, "layer4", images[:4], w4)[0]
    assert close(torch.cat(explain_quadruplet(net, "layer4", xa, xp, xn, xn2)), want4)


def test_feature_helpers_equal_full_helpers_without_running_the_trunk(net, images):
    with torch.no_grad():
        feats = net.forward_features(images)
    calls = []
    handle = net.layer1.register_forward_hook(lambda *args: calls.append(1))
    try:
        q, g = [0, 0, 0], [1, 2, 3]  # one query against its top-3 gallery images
        same = torch.tensor([True, False, False])
        pair_f = explain_pair_features(net.embed_features, feats[q], feats[g], same)
        trip_f = explain_triplet_features(net.embed_features, feats[[0]], feats[[1]], feats[[2]])
        quad_f = explain_quadruplet_features(net.embed_features, feats[[0]], feats[[1]], feats[[2]], feats[[3]])
        assert not calls
    finally:
        handle.remove()
    pair = explain_pair(net, "layer4", images[q], images[g], same)
    trip = explain_triplet(net, "layer4", images[[0]], images[[1]], images[[2]])
    quad = explain_quadruplet(net, "layer4", images[[0]], images[[1]], images[[2]], images[[3]])
    for got, want in zip(pair_f + trip_f + quad_f, pair + trip + quad):
        assert close(got, want)


def test_head_path_keeps_trunk_graph_in_training_use(net, images):
    net.zero_grad(set_to_none=True)
    feats = net.forward_features(images[:2])  # with graph, as in training
    m1, m2 = explain_pair_features(net.embed_features, feats[[0]], feats[[1]], True, create_graph=True)
    (m1.sum() + m2.sum()).backward()
    assert net.layer1[0].conv1.weight.grad is not None
    net.zero_grad(set_to_none=True)


def test_mismatched_roles_rejected(net, images):
    with pytest.raises(ValueError):
        explain_pair(net, "layer4", images[:2], images[:3], True)


def test_tuple_score_rejects_uneven_batch_and_weighted_score_rejects_shape():
    from reid.explain import WeightedScore, triplet_score

    with pytest.raises(ValueError):
        triplet_score()(torch.rand(4, 3))
    with pytest.raises(ValueError):
        WeightedScore(torch.rand(2, 3))(torch.rand(2, 4))


def test_tuple_score_by_hand():
    from reid.explain import pair_score

    # pair (f1, f2) = ((0.6, 0.8), (0.8, 0.6)), same: w = 1 - |f1 - f2| = (0.8, 0.8)
    f = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    assert torch.allclose(pair_score(True)(f), torch.tensor([1.12, 1.12]))
    # different: w = (0.2, 0.2) -> s = 0.28 for both
    assert torch.allclose(pair_score(False)(f), torch.tensor([0.28, 0.28]))
