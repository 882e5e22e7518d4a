"""SimilarityMiningLoss against a direct composition of the public functions (tiny PCB, CPU)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from reid.explain import (
    attention_maps_from_features,
    pair_weights,
    quadruplet_weights,
    triplet_weights,
)
from reid.losses import (
    BN_MODES,
    FORMS,
    ROLES,
    MinedTuples,
    SimilarityMiningLoss,
    batch_hard_triplet_loss,
    mining_tuples,
    similarity_mining_loss,
    soft_mask,
)
from reid.models.pcb import PCB

PIDS = torch.arange(4).repeat_interleave(2)  # a P x K = 4 x 2 batch of 8
IMAGES = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))


def tiny_model():
    torch.manual_seed(0)
    return PCB(num_classes=4, backbone="resnet18", num_stripes=2, reduced_dim=16,
               test_feature="pooled", pretrained=False)


def forward(model, sm_loss):
    """Train-mode pass of the batch and the tuples of ``sm_loss``'s form (as the engine does)."""
    model.train()
    torch.manual_seed(2)  # dropout of the reduced features decides the mined tuples
    output = model(IMAGES)
    features = output.features.flatten(1)
    _, mined = batch_hard_triplet_loss(features, PIDS, margin=0.3)
    return output, sm_loss.mine(features, PIDS, mined)


def composed_loss(model, output, mined, form, omega, sigma):
    """``L_sm`` from the public functions, role by role, without deduplication."""
    tuples = mining_tuples(mined, form)
    fmap = output.feature_map.detach()
    model.eval()  # maps on the eval-mode head; BatchNorm on running statistics in the masked pass
    with torch.no_grad():
        emb = F.normalize(model.embed_features(fmap), dim=1)
    f = [emb[tuples[role]] for role in ROLES[form]]
    weights = {
        "siamese": lambda: pair_weights(f[0], f[1], same=True),
        "triplet": lambda: triplet_weights(*f),
        "quadruplet": lambda: quadruplet_weights(*f),
    }[form]()
    embeddings = {}
    for role in ROLES[form]:
        rows = tuples[role]
        maps, _ = attention_maps_from_features(model.embed_features, fmap[rows], weights)
        masked = soft_mask(IMAGES[rows], maps, omega=omega, sigma=sigma)
        with torch.no_grad():
            embeddings[role] = model.embed_features(model.forward_features(masked))
    model.train()
    return similarity_mining_loss(form, embeddings)


@pytest.mark.parametrize("form", FORMS)
def test_loss_equals_the_composition_of_public_functions(form):
    model = tiny_model()
    sm_loss = SimilarityMiningLoss(form=form, omega=7.0, sigma=0.4)
    output, mined = forward(model, sm_loss)
    step = sm_loss(model, IMAGES, output, mined)
    expected = composed_loss(model, output, mined, form, omega=7.0, sigma=0.4)
    assert torch.allclose(step.loss.detach(), expected, atol=1e-6)
    assert step.loss.requires_grad
    assert set(step.maps) == set(step.masked) == set(step.embeddings) == set(ROLES[form])
    assert all(m.training for m in model.modules())  # every mode restored


def test_quadruplets_are_re_mined_with_two_negatives_on_the_same_anchors():
    model = tiny_model()
    output, mined = forward(model, SimilarityMiningLoss(form="triplet"))
    quad = SimilarityMiningLoss(form="quadruplet").mine(output.features.flatten(1), PIDS, mined)
    assert quad.negatives.shape == (mined.num_tuples, 2)
    assert torch.equal(quad.anchor, mined.anchor) and torch.equal(quad.positive, mined.positive)
    assert torch.equal(quad.negative, mined.negative)
    assert SimilarityMiningLoss(form="triplet").mine(output.features, PIDS, mined) is mined


def test_max_tuples_draws_one_randperm_from_the_global_generator_first():
    model = tiny_model()
    sm_loss = SimilarityMiningLoss(form="triplet", max_tuples=3)
    output, mined = forward(model, sm_loss)
    torch.manual_seed(11)
    step = sm_loss(model, IMAGES, output, mined)
    state_after = torch.get_rng_state()
    torch.manual_seed(11)
    keep = torch.randperm(mined.num_tuples)[:3].sort().values
    assert torch.equal(torch.get_rng_state(), state_after)  # that draw and nothing else
    for role, rows in mining_tuples(mined, "triplet").items():
        assert torch.equal(step.tuples[role], rows[keep])
    assert step.num_masked == 3 * 3


def test_caller_hooks_wrap_the_masked_pass():
    model = tiny_model()
    sm_loss = SimilarityMiningLoss(form="triplet")
    output, mined = forward(model, sm_loss)
    entered, prepared = [], []

    @contextlib.contextmanager
    def autocast():
        entered.append(True)
        yield

    def prepare_images(images):
        prepared.append(tuple(images.shape))
        return images

    step = sm_loss(model, IMAGES, output, mined, autocast=autocast, prepare_images=prepare_images)
    assert len(entered) == 1  # the masked pass only: the layer4 maps need no trunk pass
    assert prepared == [(step.num_masked, 3, 64, 32)]


def test_no_tuple_gives_a_connected_zero_and_no_masked_pass():
    model = tiny_model()
    sm_loss = SimilarityMiningLoss()
    output, _ = forward(model, sm_loss)
    empty = torch.zeros(0, dtype=torch.long)
    step = sm_loss(model, IMAGES, output, MinedTuples(empty, empty, empty.view(0, 1)))
    assert step.loss.item() == 0.0 and step.loss.requires_grad and step.num_masked == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"form": "pairs"}, "form"), ({"bn_mode": "frozen"}, "bn_mode"), ({"gamma": -1.0}, "gamma"),
    ({"max_tuples": -1}, "max_tuples"),
    ({"map_gradient": False, "second_order": True}, "second_order needs map_gradient"),
])
def test_bad_options_are_reported(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimilarityMiningLoss(**kwargs)


def test_check_model_names_what_is_missing():
    assert BN_MODES == ("eval", "train")
    with pytest.raises(TypeError, match="forward_features"):
        SimilarityMiningLoss().check_model(torch.nn.Conv2d(3, 3, 1))
    no_head = torch.nn.Conv2d(3, 3, 1)
    no_head.forward_features = no_head.forward
    with pytest.raises(TypeError, match="embed_features"):
        SimilarityMiningLoss().check_model(no_head)
    with pytest.raises(ValueError):
        SimilarityMiningLoss(layer="layer9").check_model(tiny_model())
    SimilarityMiningLoss().check_model(tiny_model())
    assert "form='triplet'" in repr(SimilarityMiningLoss())
