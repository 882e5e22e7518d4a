"""AVSLLoss equals the direct composition of the public distance and loss functions."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

import reid.models.avsl  # noqa: F401  (registers "avsl")
from reid.losses import (
    AVSL_LOSSES,
    AVSLLoss,
    ProxyAnchorLoss,
    proxy_anchor_loss,
    triplet_loss_from_distances,
)
from reid.metrics import euclidean_squared_distance
from reid.models import create_model

PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


@functools.lru_cache(maxsize=None)
def _build(proxies):
    torch.manual_seed(0)
    return create_model("avsl", num_classes=4, backbone="resnet18", embed_dim=8, topk=4,
                        pretrained=False, proxies=proxies)


def train_output(proxies):
    """A fresh seeded model and its train-mode output on an 8-image P x K batch."""
    model = copy.deepcopy(_build(proxies)).train()
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    return model, model(images)


def test_triplet_terms_are_triplet_losses_of_the_level_distances_and_d_hat():
    model, output = train_output(proxies=False)
    loss = AVSLLoss(model.levels, loss="triplet", margin=0.25)
    terms, stats = loss(model, output, PIDS)
    assert list(terms) == [f"metric_{name}" for name in model.levels] + ["overall"]
    for name, emb in zip(model.levels, output.embeddings):
        expected, _ = triplet_loss_from_distances(
            euclidean_squared_distance(emb, clamp_min=0.0), PIDS, margin=0.25
        )
        assert torch.equal(terms[f"metric_{name}"], expected), name
    e = [x.detach() for x in output.embeddings]
    s = output.cam_stds
    d_hat = model.rectified_distance(
        [x.unsqueeze(1) for x in e], [x.unsqueeze(1) for x in s],
        [x.unsqueeze(0) for x in e], [x.unsqueeze(0) for x in s],
    )
    expected, _ = triplet_loss_from_distances(d_hat, PIDS, margin=0.25)
    assert torch.equal(terms["overall"], expected)
    with torch.no_grad():
        p = model.reliabilities([x.unsqueeze(1) for x in s], [x.unsqueeze(0) for x in s])
    assert stats["reliability"] == pytest.approx(float(torch.stack([x.mean() for x in p]).mean()))


def test_proxy_terms_are_proxy_anchor_losses_of_the_proxy_distances():
    model, output = train_output(proxies=True)
    loss = AVSLLoss(model.levels, loss="proxy_anchor", proxy_alpha=8.0, proxy_pos_margin=1.5,
                    proxy_neg_margin=2.5)
    terms, _ = loss(model, output, PIDS)
    proxies = [F.normalize(p, dim=1) for p in model.proxies]
    for name, emb, proxy in zip(model.levels, output.embeddings, proxies):
        dist = euclidean_squared_distance(emb, proxy, clamp_min=0.0)
        expected = proxy_anchor_loss(dist, PIDS, alpha=8.0, pos_margin=1.5, neg_margin=2.5)
        assert torch.equal(terms[f"metric_{name}"], expected), name
    e = [x.detach() for x in output.embeddings]
    s = output.cam_stds
    d_hat = model.rectified_distance(
        [x.unsqueeze(1) for x in e], [x.unsqueeze(1) for x in s],
        [p.detach().unsqueeze(0) for p in proxies], [x.mean(0, keepdim=True).unsqueeze(0) for x in s],
    )
    expected = ProxyAnchorLoss(8.0, 1.5, 2.5)(d_hat, PIDS)
    assert torch.equal(terms["overall"], expected)


def test_options_and_model_are_checked():
    assert AVSL_LOSSES == ("triplet", "proxy_anchor", "margin")
    with pytest.raises(ValueError, match="loss must be"):
        AVSLLoss(["layer3", "layer4"], loss="arcface")
    with pytest.raises(ValueError, match="proxies=True"):
        AVSLLoss(["layer3", "layer4"], loss="proxy_anchor").check_model(_build(False))
    AVSLLoss(["layer3", "layer4"], loss="triplet").check_model(_build(False))
    model, output = train_output(proxies=False)
    with pytest.raises(ValueError, match="level embeddings"):
        AVSLLoss(["layer4"])(model, output, PIDS)
    assert "loss='triplet'" in repr(AVSLLoss(model.levels))
