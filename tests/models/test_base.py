"""The model interface: what PCB and AVSL offer callers, checked against hand oracles."""

import pytest
import torch
import torch.nn.functional as F

from reid.models import AVSL, PCB, Explainability, ReidModel, create_model
from reid.models.trunks import BACKBONES, LAST_STAGE, STAGES, build_trunk, check_backbone, stage_channels


def small_pcb(**kw):
    torch.manual_seed(0)
    return create_model("pcb", num_classes=5, backbone="resnet18", num_stripes=2, reduced_dim=8,
                        pretrained=False, **kw).eval()


def small_avsl():
    torch.manual_seed(0)
    return create_model("avsl", num_classes=3, backbone="resnet18", embed_dim=8, topk=4, pretrained=False)


def test_both_models_implement_the_interface():
    assert isinstance(small_pcb(), ReidModel) and isinstance(small_avsl(), ReidModel)
    assert PCB.explainability == Explainability(head_layer="layer4", attribution=False, classifier=True)
    assert AVSL.explainability == Explainability(head_layer="layer4", attribution=True, classifier=False)


def test_default_pairwise_distance_is_squared_euclidean_or_cosine_by_hand():
    model = small_pcb()
    q = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    g = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert model.pairwise_distance(q, g).tolist() == [[25.0, 16.0], [1.0, 10.0]]
    # normalised first: q -> (0.6, 0.8), (0, 1); g[1] -> (1, 0); g[0] stays 0
    d = model.pairwise_distance(q, g[1:], normalize=True)
    assert torch.allclose(d, torch.tensor([[0.4**2 + 0.8**2], [2.0]]))
    cos = model.pairwise_distance(q, g[1:], metric="cosine")
    assert torch.allclose(cos, torch.tensor([[1 - 0.6], [1.0]]))


def test_default_pair_similarity_is_the_cosine_by_hand():
    model = small_pcb()
    first = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    second = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    assert torch.allclose(model.pair_similarity(first, second), torch.tensor([1.0, 0.0]))


def test_pcb_identity_logits_sum_the_stripe_classifiers():
    model = small_pcb()
    fmap = torch.randn(3, 512, 4, 2)
    pooled = fmap.reshape(3, 512, 2, 2, 2).mean(dim=(3, 4))  # two stripes of two rows each
    expected = 0
    for i in range(2):
        stripe = model.reductions[i](pooled[:, :, i, None, None]).flatten(1)
        expected = expected + model.classifiers[i](stripe)
    with torch.no_grad():
        assert torch.allclose(model.identity_logits(fmap), expected, atol=1e-5)


def test_avsl_head_is_its_top_level():
    two_levels = create_model("avsl", num_classes=3, backbone="resnet18", levels=("layer2", "layer3"), embed_dim=8,
                              topk=4, pretrained=False)
    assert two_levels.explainability.head_layer == "layer3"
    model = small_avsl().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        maps = model.level_maps(x)
        assert torch.equal(model.forward_features(x), maps[-1])
        embeddings, _ = model.encode(x)
        assert torch.allclose(model.embed_features(maps[-1]), embeddings[-1])


def test_avsl_pair_similarity_is_minus_d_hat_and_metric_does_not_apply():
    model = small_avsl()
    model(torch.randn(4, 3, 64, 32))  # one train-mode batch initialises the edges
    model.eval()
    x1, x2 = torch.randn(3, 3, 64, 32), torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
        pairwise = model.pairwise_distance(f1, f2)
        assert torch.allclose(model.pair_similarity(f1, f2), -pairwise.diagonal(), atol=1e-6)
        assert torch.equal(model.pairwise_distance(f1, f2, "cosine", True), pairwise)


def test_avsl_attribution_rectified_levels_end_in_the_distance():
    model = small_avsl()
    model(torch.randn(4, 3, 64, 32))
    model.eval()
    with torch.no_grad():
        out = model.attribute(torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32))
    assert out["levels"] == ["layer2", "layer3", "layer4"]
    assert len(out["rectified"]) == 3 and len(out["edge_weights"]) == 2
    assert torch.equal(out["rectified"][0], out["nodes"][0])  # delta_hat^1 = delta^1
    assert torch.allclose(out["rectified"][-1].sum(-1), out["distance"])
    # one step by hand: delta_hat^2 = p delta^2 + (1 - p) W~ delta_hat^1
    p, w = out["reliabilities"][0], out["edge_weights"][0]
    by_hand = p * out["nodes"][1] + (1 - p) * (out["rectified"][0] @ w.t())
    assert torch.allclose(out["rectified"][1], by_hand, atol=1e-7)


def test_optional_capabilities_name_the_model():
    class Bare(ReidModel):
        pass

    bare = Bare()
    for call in (lambda: bare.attribute(None, None), lambda: bare.identity_logits(None),
                 lambda: bare.forward_features(None), lambda: bare.embed_features(None),
                 lambda: bare.embedding_dim):
        with pytest.raises(NotImplementedError, match="Bare"):
            call()
    assert bare.trunk_modules == []
    with pytest.raises(NotImplementedError, match="AVSL has no identity classifier"):
        small_avsl().identity_logits(torch.zeros(1, 512, 2, 1))


def test_trunks_sizes_and_errors():
    assert BACKBONES == ("resnet18", "resnet34", "resnet50", "mobilenet_v2") and LAST_STAGE == STAGES[-1] == "layer4"
    assert [stage_channels("resnet50", s) for s in STAGES] == [256, 512, 1024, 2048]
    assert stage_channels("resnet18") == 512
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        check_backbone("vgg")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_channels("resnet18", "layer5")
    trunk = build_trunk("resnet18", last_stride=1, pretrained=False, path="")
    with torch.no_grad():
        x = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(trunk.maxpool(trunk.relu(trunk.bn1(
            trunk.conv1(torch.zeros(1, 3, 64, 32)))))))))
    assert x.shape[-2:] == (4, 2)  # stride-1 layer4
    assert F.adaptive_avg_pool2d(x, 1).shape == (1, 512, 1, 1)
