import copy
import functools
import io
import math

import pytest
import torch

import reid.models.avsl  # noqa: F401  (registers "avsl")
from reid.models import create_model
from reid.models.avsl import (
    AVSL,
    AVSLFeatures,
    AVSLOutput,
    attribution_weights,
    cam_spatial_std,
    edge_estimate,
    rectify,
    reliability,
    topk_edge_weights,
)

R = 8


@functools.lru_cache(maxsize=None)
def _build(backbone, embed_dim, topk, options):
    torch.manual_seed(0)
    return create_model("avsl", num_classes=5, backbone=backbone, embed_dim=embed_dim, topk=topk,
                        pretrained=False, **dict(options))


def small_avsl(backbone="resnet18", embed_dim=R, topk=4, **kw):
    """A fresh copy of a seeded model (built once per argument set: building is the slow part)."""
    return copy.deepcopy(_build(backbone, embed_dim, topk, tuple(sorted(kw.items()))))


@pytest.fixture(scope="module")
def trained_model():
    """A resnet18 AVSL in eval mode whose edges were updated by two train-mode batches."""
    model = small_avsl()
    torch.manual_seed(1)
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 32))
        model(torch.randn(4, 3, 64, 32))
    # Random reliability parameters so that p is not the same for every node.
    with torch.no_grad():
        for a, b in zip(model.reliability_scale, model.reliability_bias):
            a.normal_(0, 3.0)
            b.normal_(0, 1.0)
    return model.eval()


# -- hand-made oracles -----------------------------------------------------------------------------

# R = 3, k = 2: row 0 keeps 0.5 and 0.3, row 1 keeps 0.4 and 0.1 (-0.1 clamped), row 2 has no
# positive edge.
EDGES = torch.tensor([[0.5, 0.2, 0.3], [-0.1, 0.4, 0.1], [0.0, -0.2, 0.0]])
W_TILDE = torch.tensor([[0.625, 0.0, 0.375], [0.0, 0.8, 0.2], [0.0, 0.0, 0.0]])
NODES1 = torch.tensor([1.0, 2.0, 3.0])
NODES2 = torch.tensor([4.0, 5.0, 6.0])
P2 = torch.tensor([0.5, 0.25, 1.0])
# delta_hat^2 = p * delta^2 + (1 - p) * W~ delta^1 = [2 + 0.5 * 1.75, 1.25 + 0.75 * 2.2, 6]
RECTIFIED2 = torch.tensor([2.875, 2.9, 6.0])
# lambda^2 = p; lambda^1 = (1 - p)^T W~ = [0.5 * 0.625, 0.75 * 0.8, 0.5 * 0.375 + 0.75 * 0.2]
LAMBDA1 = torch.tensor([0.3125, 0.6, 0.3375])


def test_topk_edge_weights_hand_oracle():
    assert torch.allclose(topk_edge_weights(EDGES, 2), W_TILDE)
    # k = R keeps every positive edge
    full = topk_edge_weights(EDGES, 3)
    assert torch.allclose(full[0], torch.tensor([0.5, 0.2, 0.3]))
    assert torch.allclose(full[1], torch.tensor([0.0, 0.8, 0.2]))  # the negative edge is dropped
    assert torch.allclose(topk_edge_weights(EDGES, 1), torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="k must be"):
        topk_edge_weights(EDGES, 4)


def test_topk_keeps_exactly_k_largest_per_row():
    torch.manual_seed(0)
    edges = torch.rand(6, 10) + 0.1
    w = topk_edge_weights(edges, 3)
    assert ((w > 0).sum(1) == 3).all()
    assert torch.allclose(w.sum(1), torch.ones(6))
    for row, weights in zip(edges, w):
        assert set(weights.nonzero().flatten().tolist()) == set(row.argsort(descending=True)[:3].tolist())


def test_rectify_two_levels_hand_oracle():
    out = rectify([NODES1, NODES2], [P2], [W_TILDE])
    assert torch.allclose(out, RECTIFIED2)
    assert out.sum().item() == pytest.approx(11.775, abs=1e-5)
    # level 1 alone is not rectified
    assert torch.equal(rectify([NODES1], [], []), NODES1)


def loop_rectify(nodes, reliabilities, weights):
    """Element-by-element oracle of eq. 8 for 1-D nodes."""
    rectified = [float(v) for v in nodes[0]]
    for delta, p, w in zip(nodes[1:], reliabilities, weights):
        rectified = [
            float(p[i]) * float(delta[i])
            + (1 - float(p[i])) * sum(float(w[i, j]) * rectified[j] for j in range(len(rectified)))
            for i in range(len(delta))
        ]
    return rectified


def test_rectify_three_levels_against_loop_oracle():
    torch.manual_seed(0)
    nodes = [torch.rand(5) for _ in range(3)]
    rel = [torch.rand(5) for _ in range(2)]
    weights = [topk_edge_weights(torch.randn(5, 5), 2) for _ in range(2)]
    expected = torch.tensor(loop_rectify(nodes, rel, weights))
    assert torch.allclose(rectify(nodes, rel, weights), expected, atol=1e-6)
    # batched leading dimensions give the same numbers per row
    batch = rectify([n.expand(2, 3, 5) for n in nodes], [p.expand(2, 3, 5) for p in rel], weights)
    assert torch.allclose(batch, expected.expand(2, 3, 5), atol=1e-6)


def test_rectify_checks_lengths():
    with pytest.raises(ValueError, match="L - 1"):
        rectify([NODES1, NODES2], [], [W_TILDE])


def test_attribution_weights_hand_oracle():
    weights = attribution_weights([NODES1, NODES2], [P2], [W_TILDE])
    assert torch.allclose(weights[1], P2)
    assert torch.allclose(weights[0], LAMBDA1)
    total = sum((w * n).sum() for w, n in zip(weights, [NODES1, NODES2]))
    assert total.item() == pytest.approx(11.775, abs=1e-5)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_attribution_identity_on_random_inputs(levels):
    torch.manual_seed(levels)
    nodes = [torch.rand(7, 6) for _ in range(levels)]
    rel = [torch.rand(7, 6) for _ in range(levels - 1)]
    weights = [topk_edge_weights(torch.randn(6, 6), 3) for _ in range(levels - 1)]
    distance = rectify(nodes, rel, weights).sum(-1)
    lambdas = attribution_weights(nodes, rel, weights)
    attributed = sum((w * n).sum(-1) for w, n in zip(lambdas, nodes))
    assert torch.allclose(attributed, distance, atol=1e-5, rtol=1e-5)
    # the weights are the gradient of d_hat with respect to the nodes (d_hat is linear in them)
    leaves = [n.clone().requires_grad_(True) for n in nodes]
    rectify(leaves, rel, weights).sum().backward()
    for leaf, lam in zip(leaves, lambdas):
        assert torch.allclose(leaf.grad, lam, atol=1e-6)


def test_cam_spatial_std_hand_oracle():
    cam = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4)
    # normalised to mean one: [0, 2/3, 4/3, 2]; population std = 2/3 * sqrt(1.25)
    expected = 2.0 / 3.0 * math.sqrt(1.25)
    assert cam_spatial_std(cam).item() == pytest.approx(expected, rel=1e-6)
    # invariant to shift and positive scale; a constant map gives 0
    assert cam_spatial_std(3.0 * cam - 7.0).item() == pytest.approx(expected, rel=1e-5)
    assert cam_spatial_std(torch.full((2, 3, 2, 2), 5.0)).eq(0).all()


def test_reliability_hand_oracle():
    p = reliability(torch.tensor([0.5, 2.0]), torch.tensor([2.0, 1.0]), torch.tensor([2.0, -1.0]),
                    torch.tensor([0.0, 1.0]))
    # eta = [1, 2]: sigmoid(2 * 1 + 0), sigmoid(-1 * 2 + 1)
    assert torch.allclose(p, torch.tensor([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]))


def test_edge_estimate_hand_oracle():
    # low level: 2x2 maps, pooled to the high level's 1x2 (column means)
    low = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 3.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    high = torch.tensor([[[[3.0, 4.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    # pooled low: [1, 0] and [1, 2]; normalised: [1, 0], [1, 2]/sqrt5; high: [.6, .8], [0, 1]
    s5 = math.sqrt(5)
    expected = torch.tensor([[0.6, (0.6 + 1.6) / s5], [0.0, 2 / s5]])
    assert torch.allclose(edge_estimate(low, high), expected, atol=1e-6)
    # batch mean: a second sample with swapped high nodes
    batch_low = low.expand(2, -1, -1, -1)
    batch_high = torch.cat([high, high.flip(1)])
    expected_batch = (expected + expected.flip(0)) / 2
    assert torch.allclose(edge_estimate(batch_low, batch_high), expected_batch, atol=1e-6)


# -- the model -----------------------------------------------------------------------------------------


def test_shapes():
    model = small_avsl()
    assert [conv.in_channels for conv in model.projections] == [128, 256, 512]
    x = torch.randn(4, 3, 64, 32)
    out = model(x)
    assert isinstance(out, AVSLOutput)
    assert [tuple(e.shape) for e in out.embeddings] == [(4, R)] * 3
    for e in out.embeddings:
        assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    # layer2 stride 8, layer3 stride 16, stride-1 layer4 stride 16
    assert [tuple(c.shape) for c in out.cams] == [(4, R, 8, 4), (4, R, 4, 2), (4, R, 4, 2)]
    assert [tuple(s.shape) for s in out.cam_stds] == [(4, R)] * 3
    assert [tuple(w.shape) for w in out.edge_estimates] == [(R, R)] * 2
    assert not any(c.requires_grad for c in out.cams + out.cam_stds)
    model.eval()
    with torch.no_grad():
        flat = model(x)
    assert flat.shape == (4, 2 * 3 * R) == (4, model.embedding_dim)
    assert torch.isfinite(flat).all()
    parts = model.split_features(flat)
    assert isinstance(parts, AVSLFeatures)
    assert torch.equal(parts.flatten(), flat)


def test_resnet50_shapes_on_meta_device():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = AVSL(num_classes=5, backbone="resnet50", embed_dim=R, topk=4, pretrained=False).eval()
        x = torch.empty(2, 3, 64, 32)
        embeddings, cams = model.encode(x)
        flat = model(x)
    assert [conv.in_channels for conv in model.projections] == [512, 1024, 2048]
    assert [tuple(c.shape) for c in cams] == [(2, R, 8, 4), (2, R, 4, 2), (2, R, 4, 2)]
    assert flat.shape == (2, 6 * R)


def test_eval_features_layout():
    model = small_avsl().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        flat = model(x)
        embeddings, cams = model.encode(x)
    for level in range(3):
        assert torch.allclose(flat[:, level * R : (level + 1) * R], embeddings[level])
        start = (3 + level) * R
        assert torch.allclose(flat[:, start : start + R], cam_spatial_std(cams[level]))


def test_cams_are_the_projection_of_the_map():
    model = small_avsl()
    x = torch.randn(2, 3, 64, 32)
    maps = model.level_maps(x)
    _, cams = model.encode(x)
    weight = model.projections[1].weight.flatten(1)  # (R, C)
    assert torch.allclose(cams[1], torch.einsum("rc,bchw->brhw", weight, maps[1]), atol=1e-4)
    # CAMs of detached maps: a loss on them reaches the projection only
    cams[1].sum().backward()
    assert model.projections[1].weight.grad is not None
    assert all(p.grad is None for p in model.layer3.parameters())


def test_levels_and_topk_are_checked():
    with pytest.raises(ValueError, match="topk"):
        small_avsl(topk=R + 1)
    with pytest.raises(ValueError, match="bottom-up"):
        small_avsl(levels=("layer3", "layer2"))
    with pytest.raises(ValueError, match="subset"):
        small_avsl(levels=("layer5",))


def test_two_levels_and_trunk_cut():
    model = small_avsl(levels=("layer1", "layer3"))
    assert not hasattr(model, "layer4")
    out = model(torch.randn(2, 3, 64, 32))
    assert [tuple(c.shape[-2:]) for c in out.cams] == [(16, 8), (4, 2)]
    assert len(model.edges) == 1 and len(model.reliability_scale) == 1


# -- edges -----------------------------------------------------------------------------------------------


def test_edge_momentum_update_hand_oracle():
    model = small_avsl(embed_dim=2, topk=1, momentum=0.25)
    a = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    b = [torch.tensor([[5.0, 6.0], [7.0, 8.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]
    assert not model.edges_initialised.any()
    model.update_edges(a)  # first update: copy
    assert model.edges_initialised.all()
    for edge, expected in zip(model.edges, a):
        assert torch.equal(edge, expected)
    model.update_edges(b)  # omega <- 0.25 * omega + 0.75 * omega_hat
    assert torch.allclose(model.edges[0], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.allclose(model.edges[1], torch.tensor([[0.75, 1.0], [1.0, 0.75]]))
    # the caller's tensors are not modified
    assert torch.equal(a[0], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_train_forward_updates_edges_eval_does_not():
    model = small_avsl()  # momentum 0.5
    x1, x2 = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        first = model(x1)
        assert torch.allclose(model.edges[0], edge_estimate(first.cams[0], first.cams[1]))
        second = model(x2)
        expected = [0.5 * e1 + 0.5 * e2 for e1, e2 in zip(first.edge_estimates, second.edge_estimates)]
        for edge, exp in zip(model.edges, expected):
            assert torch.allclose(edge, exp, atol=1e-6)
        model.eval()
        before = [e.clone() for e in model.edges]
        model(x1)
        model.attribute(x1, x2)
    for edge, old in zip(model.edges, before):
        assert torch.equal(edge, old)


def test_edge_buffers_round_trip_through_state_dict():
    model = small_avsl()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 32))
    state = model.state_dict()
    assert {"edge_layer2_layer3", "edge_layer3_layer4", "edges_initialised"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = small_avsl()
    assert not fresh.edges_initialised.any()
    fresh.load_state_dict(loaded)
    assert fresh.edges_initialised.all()
    for a, b in zip(fresh.edges, model.edges):
        assert torch.equal(a, b)
    # loaded as initialised: the next update averages instead of copying
    estimate = [torch.ones(R, R), torch.ones(R, R)]
    fresh.update_edges(estimate)
    assert torch.allclose(fresh.edges[0], 0.5 * model.edges[0] + 0.5)


# -- distances and attribution --------------------------------------------------------------------------


def test_pairwise_distance_chunked_equals_unchunked_and_loop(trained_model):
    torch.manual_seed(2)
    with torch.no_grad():
        query = trained_model(torch.randn(5, 3, 64, 32))
        gallery = trained_model(torch.randn(7, 3, 64, 32))
        full = trained_model.pairwise_distance(query, gallery, chunk_size=100)
        for chunk in (1, 2, 3):
            chunked = trained_model.pairwise_distance(query, gallery, chunk_size=chunk)
            assert torch.allclose(chunked, full, atol=1e-7)
        assert torch.allclose(trained_model.pairwise_distance(query, gallery), full, atol=1e-7)
        buffer = torch.empty(5, 7)  # a streaming evaluation's reused buffer
        assert trained_model.pairwise_distance(query, gallery, chunk_size=100, out=buffer) is buffer
        assert torch.equal(buffer, full)
        with pytest.raises(ValueError, match="out must have shape"):
            trained_model.pairwise_distance(query, gallery, out=torch.empty(7, 5))
    assert full.shape == (5, 7) and (full >= 0).all()
    # oracle: one pair at a time through the plain loop of eq. 8
    q, g = trained_model.split_features(query), trained_model.split_features(gallery)
    weights = trained_model.edge_weights()
    for i, j in [(0, 0), (4, 6), (2, 3)]:
        nodes = [(qe[i] - ge[j]).pow(2) for qe, ge in zip(q.embeddings, g.embeddings)]
        rel = [
            torch.sigmoid(a * qs[i] * gs[j] + b)
            for qs, gs, a, b in zip(q.cam_stds[1:], g.cam_stds[1:], trained_model.reliability_scale,
                                    trained_model.reliability_bias)
        ]
        assert full[i, j].item() == pytest.approx(sum(loop_rectify(nodes, rel, weights)), rel=1e-5)


def test_pairwise_distance_is_symmetric_and_zero_on_self(trained_model):
    with torch.no_grad():
        feats = trained_model(torch.randn(4, 3, 64, 32))
        dist = trained_model.pairwise_distance(feats, feats)
    assert torch.allclose(dist, dist.t(), atol=1e-7)
    assert torch.allclose(dist.diagonal(), torch.zeros(4), atol=1e-6)


def test_pairwise_distance_checks_shapes(trained_model):
    with pytest.raises(ValueError, match="AVSL features"):
        trained_model.pairwise_distance(torch.zeros(2, 5), torch.zeros(2, 5))


def test_attribute_identity_and_agreement_with_pairwise_distance(trained_model):
    torch.manual_seed(3)
    x1, x2 = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        result = trained_model.attribute(x1, x2)
        pairwise = trained_model.pairwise_distance(trained_model(x1), trained_model(x2))
    assert result["distance"].shape == (4,)
    assert [tuple(n.shape) for n in result["nodes"]] == [(4, R)] * 3
    assert [tuple(w.shape) for w in result["weights"]] == [(4, R)] * 3
    assert [tuple(c.shape) for c in result["cams1"]] == [(4, R, 8, 4), (4, R, 4, 2), (4, R, 4, 2)]
    assert len(result["cams2"]) == 3 and len(result["reliabilities"]) == 2
    attributed = sum((w * n).sum(1) for w, n in zip(result["weights"], result["nodes"]))
    assert torch.allclose(attributed, result["distance"], atol=1e-5, rtol=1e-5)
    assert torch.allclose(result["distance"], pairwise.diagonal(), atol=1e-6, rtol=1e-5)
    # the top level keeps a share p of its nodes, so its weights are p^L
    assert torch.allclose(result["weights"][2], result["reliabilities"][1])


def test_proxies_are_optional_parameters():
    assert small_avsl().proxies is None
    model = small_avsl(proxies=True)
    assert [tuple(p.shape) for p in model.proxies] == [(5, R)] * 3
