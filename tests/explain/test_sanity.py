"""Cascading randomisation (sanity checks of explanations)."""

import pytest
import torch

from reid.explain.quality import explainer_names, sanity_check
from reid.explain.sanity import cascade_blocks, randomized_copy
from reid.models import AVSL, PCB

STAGES = ["head", "layer4", "layer3", "layer2", "layer1", "stem"]


def pcb():
    torch.manual_seed(0)
    return PCB(num_classes=4, backbone="resnet18", num_stripes=2, reduced_dim=8, pretrained=False).eval()


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_blocks_from_the_top():
    model = pcb()
    blocks = cascade_blocks(model)
    assert [name for name, _ in blocks] == STAGES
    assert blocks[0][1] == [model.dropout, model.reductions, model.classifiers]
    avsl = AVSL(num_classes=4, backbone="resnet18", pretrained=False, levels=["layer3", "layer4"], embed_dim=8, topk=2)
    assert [name for name, _ in cascade_blocks(avsl)] == STAGES
    with pytest.raises(ValueError, match="trunk_modules"):
        cascade_blocks(torch.nn.Linear(2, 2))


def test_randomized_copy_resets_exactly_the_cascade():
    model = pcb()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_only = randomized_copy(model, 1, seed=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert same(head_only.layer4, model.layer4) and same(head_only.stem, model.stem)
    assert not same(head_only.reductions, model.reductions) and not same(head_only.classifiers, model.classifiers)
    top_two = randomized_copy(model, 2, seed=3)
    assert not same(top_two.layer4, model.layer4) and same(top_two.layer3, model.layer3)
    everything = randomized_copy(model, 6, seed=3)
    assert not any(same(getattr(everything, n), getattr(model, n)) for n in ("stem", "layer1", "layer2", "layer3"))
    assert same(randomized_copy(model, 2, seed=3), top_two)  # seeded
    for depth in (0, 7):
        with pytest.raises(ValueError, match="depth"):
            randomized_copy(model, depth)


def test_parameter_lists_of_the_head_are_redrawn():
    avsl = AVSL(num_classes=4, backbone="resnet18", pretrained=False, levels=["layer3", "layer4"], embed_dim=8, topk=2)
    copied = randomized_copy(avsl, 1, seed=0)
    for name, parameter in avsl.named_parameters():
        if name.startswith(("reliability_scale", "reliability_bias")):
            assert not torch.equal(parameter, dict(copied.named_parameters())[name]), name


def test_sanity_check_by_construction():
    model = pcb()
    images = [torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    names = explainer_names(model.explainability)
    result = sanity_check(model, names, *images, top_nodes=4, layer=None, seed=0)
    assert result["blocks"] == STAGES
    # the centre prior ignores the model: correlation 1 at every depth
    assert result["correlation"]["centre"] == pytest.approx([1.0] * 6)
    # the pooled embedding does not use PCB's reductions or classifiers: randomising the head
    # leaves every embedding-based map as it was
    for name in ("sam_siamese", "sam_triplet", "dot_gradcam", "decomposition"):
        assert result["correlation"][name][0] == pytest.approx(1.0), name
    # two independent random maps are uncorrelated
    assert abs(result["correlation"]["random"][0]) < 0.2


def test_pointing_game_by_part_groups_triplets_by_the_changed_part():
    """Hand oracle: the per-triplet hit is the mean of the anchor's and the negative's, grouped by
    the part the negative's attribute draws."""
    from types import SimpleNamespace

    import pytest

    from reid.explain.quality import pointing_game_by_part

    triplets = [SimpleNamespace(attribute=a) for a in ("hair_colour", "top_colour", "hair_style", "bag_side")]
    values = {"pointing_game_anchor": [1.0, 0.0, 1.0, 1.0], "pointing_game_negative": [0.0, 0.0, 1.0, 1.0]}
    assert pointing_game_by_part(values, triplets) == {"bag": [1.0], "head": [0.5, 1.0], "torso": [0.0]}
    with pytest.raises(ValueError, match="3 anchor and 4 negative hits for 4 triplets"):
        pointing_game_by_part({**values, "pointing_game_anchor": [1.0, 0.0, 1.0]}, triplets)
