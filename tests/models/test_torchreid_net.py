"""torchreid's networks behind the model interface: every family's explained embedding is the one
torchreid ranks with, the head is the arch's own, checkpoints of torchreid load as they are."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from reid.explain.decomposition import decompose_pair
from reid.models import ReidModel, create_model
from reid.models.torchreid_net import (
    FAMILIES, REFUSED, TORCHREID_ARCHS, TorchreidError, archs_of_state, check_arch, classifier_classes,
    family_of, load_matching_weights, resize_classifier, torchreid_model,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid import models as torchreid_models


def _torchreid_net(arch, num_classes=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchreid_models.build_model(arch, num_classes=num_classes, loss="triplet", pretrained=False)


def _class_name(arch):
    with torch.device("meta"):
        return type(_torchreid_net(arch, 1)).__name__


REFUSED_ARCHS = [a for a in TORCHREID_ARCHS if _class_name(a) in REFUSED]
SUPPORTED_ARCHS = [a for a in TORCHREID_ARCHS if a not in REFUSED_ARCHS]


def test_every_registry_name_is_supported_or_refused_with_a_reason():
    assert set(REFUSED_ARCHS) == {"hacnn", "mlfn", "nasnsetmobile", "resnet50mid"}
    assert {_class_name(a) for a in SUPPORTED_ARCHS} == set(FAMILIES)
    for arch in REFUSED_ARCHS:
        with pytest.raises(TorchreidError, match=f"torchreid arch {arch} cannot be explained: its "):
            torchreid_model(3, arch)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_explained_embedding_is_torchreids_and_the_head_layer_outputs_the_map(arch):
    torch.manual_seed(0)
    model = torchreid_model(5, arch, test_normalized=True).eval()
    reference = _torchreid_net(arch).eval()
    reference.load_state_dict(model.state_dict())  # the same keys: torchreid's own
    height, width = model.family.min_input
    images = torch.randn(2, 3, height, width)
    captured = []
    layer = model.get_submodule(model.explainability.head_layer)
    hook = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        expected = reference(images)
        feature_map = model.forward_features(images)
        hook.remove()
        embedded = model.embed_features(feature_map)
        full = model(images)
    assert embedded.shape == (2, model.embedding_dim)
    assert (embedded - expected).abs().max().item() < 1e-5
    assert torch.equal(full, expected)
    assert torch.equal(captured[-1], feature_map)  # the named layer is the one explained at the head
    assert isinstance(model, ReidModel) and isinstance(model, type(reference))


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_what_each_family_can_explain_holds(arch):
    torch.manual_seed(0)
    model = torchreid_model(5, arch, test_normalized=True).eval()
    height, width = model.family.min_input
    images = torch.randn(2, 3, height, width)
    with torch.no_grad():
        feature_map = model.forward_features(images)
        embedding = model(images)
    stripes = model.explainability.decomposable_stripes
    if stripes:  # the exact split of the normalised embeddings' squared distance sums to it
        split = decompose_pair(feature_map[:1], feature_map[1:], stripes, "euclidean")
        unit = F.normalize(embedding.view(2, -1, stripes) if arch.startswith("pcb") else embedding.view(2, 1, -1),
                           dim=1 if arch.startswith("pcb") else 2).flatten(1)
        assert split.score.item() == pytest.approx(((unit[0] - unit[1]) ** 2).sum().item(), rel=1e-4, abs=1e-6)
    if model.explainability.classifier:
        with torch.no_grad():
            assert torch.allclose(model.identity_logits(feature_map), model.classifier(embedding), atol=1e-5)
    else:
        with pytest.raises(NotImplementedError):
            model.identity_logits(feature_map)
    model.train()
    output = model(images)
    assert output.feature_map.shape == feature_map.shape
    assert output.features.shape == (2, 1, model.embedding_dim)
    assert all(logits.shape == (2, 5) for logits in output.logits)


def test_decomposition_only_where_the_head_is_a_plain_average_of_normalised_embeddings():
    assert torchreid_model(3, "resnet18", test_normalized=True).explainability.decomposable_stripes == 1
    assert torchreid_model(3, "resnet18").explainability.decomposable_stripes == 0  # raw features ranked
    assert torchreid_model(3, "osnet_x0_25", test_normalized=True).explainability.decomposable_stripes == 0  # fc
    assert torchreid_model(3, "densenet121", test_normalized=True).explainability.decomposable_stripes == 0  # ReLU
    assert torchreid_model(3, "pcb_p4").explainability.decomposable_stripes == 4  # normalises its stripes itself


def test_embed_features_on_a_hand_computed_map():
    # resnet18's head is a global average and nothing else: a map of twos with one cell of 8 (of 4)
    model = torchreid_model(3, "resnet18").eval()
    feature_map = torch.full((1, 512, 2, 2), 2.0)
    feature_map[0, 0, 0, 0] = 8.0
    embedded = model.embed_features(feature_map)
    assert embedded[0, 0].item() == pytest.approx(3.5)  # (8 + 2 + 2 + 2) / 4
    assert embedded[0, 1].item() == pytest.approx(2.0)
    # osnet's head adds its FC block (Linear, BatchNorm1d, ReLU): the oracle is that formula
    osnet = torchreid_model(3, "osnet_x0_25").eval()
    torch.manual_seed(1)
    feature_map = torch.randn(2, 128, 3, 2)
    linear, norm = osnet.fc[0], osnet.fc[1]
    pooled = feature_map.mean(dim=(2, 3))
    expected = torch.relu((linear(pooled) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight
                          + norm.bias)
    assert torch.allclose(osnet.embed_features(feature_map), expected, atol=1e-6)


def test_head_leaves_the_map_as_it_was_and_passes_gradients():
    # DenseNet's head applies an in-place ReLU to the map: the caller's map must not change
    model = torchreid_model(3, "densenet121").eval()
    feature_map = torch.randn(1, 1024, 2, 1, requires_grad=True)
    before = feature_map.detach().clone()
    model.embed_features(feature_map).sum().backward()
    assert torch.equal(feature_map.detach(), before)
    assert torch.equal(feature_map.grad, (before > 0).float() / 2)  # ReLU then a 2-cell average
    assert model.training is False and not any(m.training for m in model.modules())
    # the trunk is itself again afterwards
    assert "featuremaps" not in vars(torchreid_model(3, "resnet18"))
    assert type(model._modules["features"]).__name__ == "Sequential"


def test_embed_features_keeps_the_modes_of_the_children():
    # the network's own flag is off for the call (torchreid returns the embedding, not logits), its
    # children keep their modes: in train mode the FC block's BatchNorm uses the batch's statistics
    model = torchreid_model(3, "osnet_x0_25").train()
    feature_map = torch.randn(4, 128, 3, 2)
    in_train_mode = model.embed_features(feature_map)
    assert in_train_mode.shape == (4, 512) and model.training and model.fc[1].training
    model.eval()
    assert not torch.allclose(in_train_mode, model.embed_features(feature_map))


def test_check_arch():
    assert check_arch("osnet_x1_0", 256, 128).head_layer == "conv5"
    with pytest.raises(TorchreidError, match="unknown torchreid arch 'osnet_x9'"):
        check_arch("osnet_x9", 256, 128)
    with pytest.raises(TorchreidError, match="mudeep takes 256 x 128 images only"):
        check_arch("mudeep", 128, 64)
    with pytest.raises(TorchreidError, match="hacnn cannot be explained"):
        check_arch("hacnn", 160, 64)
    with pytest.raises(TorchreidError, match="unknown torchreid arch"):
        create_model("torchreid", num_classes=3, arch="nope")


def test_family_of_a_class_it_does_not_know():
    with pytest.raises(TorchreidError, match="not a family the toolkit knows"):
        family_of(torch.nn.Linear(2, 2), "mine")


def test_state_dict_keys_are_torchreids_and_checkpoints_of_other_identities_load():
    model = torchreid_model(7, "resnet18")
    assert list(model.state_dict()) == list(_torchreid_net("resnet18", 7).state_dict())
    assert classifier_classes(model.state_dict()) == 7 and model.classifier_classes() == 7
    resize_classifier(model, 11)
    assert model.classifier.weight.shape == (11, 512) and classifier_classes(model.state_dict()) == 11
    pcb = torchreid_model(7, "pcb_p4")
    resize_classifier(pcb, 2)
    assert pcb.classifier_classes() == 2 and classifier_classes(pcb.state_dict()) == 2
    with pytest.raises(ValueError, match="no 'classifier.weight'"):
        classifier_classes({"fc.weight": torch.zeros(1)})


def test_load_matching_weights_as_torchreids_load_pretrained_weights():
    model = torchreid_model(3, "resnet18")
    source = torchreid_model(10, "resnet18")
    state = {f"module.{k}": v + 1 for k, v in source.state_dict().items() if v.is_floating_point()}
    loaded = load_matching_weights(model, {"state_dict": state}, "file")
    assert loaded == len(state) - 2  # the classifier (10 identities, not 3) is left as it was
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight + 1)
    with pytest.raises(TorchreidError, match="no weight matches"):
        load_matching_weights(model, {"other.weight": torch.zeros(2)}, "file")


def test_archs_of_state_names_the_arch_a_checkpoint_is_of():
    state = torchreid_model(9, "osnet_x0_25").state_dict()
    assert archs_of_state(state) == ["osnet_x0_25"]
    assert archs_of_state({"x": torch.zeros(1)}) == []
