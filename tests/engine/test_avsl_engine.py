import copy
import functools
import json
import math
import types

import numpy as np
import pytest
import torch

import reid.models.avsl  # noqa: F401  (registers "avsl")
from reid.engine.avsl import AVSLEngine
from reid.engine.checkpoint import load_checkpoint
from reid.engine.evaluation import ExtractedFeatures, extract_dataset_features, ranking_metrics
from reid.models import create_model

NUM_IDS = 4


def make_batch(pids, camid, seed):
    g = torch.Generator().manual_seed(seed)
    pids = torch.as_tensor(pids)
    return {
        "img": torch.randn(len(pids), 3, 64, 32, generator=g),
        "pid": pids,
        "camid": torch.full((len(pids),), camid),
        "impath": [f"{seed}_{i}.jpg" for i in range(len(pids))],
    }


@functools.lru_cache(maxsize=None)
def _build(proxies):
    torch.manual_seed(0)
    return create_model("avsl", num_classes=NUM_IDS, backbone="resnet18", embed_dim=8, topk=4,
                        pretrained=False, proxies=proxies)


def make_engine(tmp_path, loss="triplet", **kwargs):
    """An engine over a fake datamanager: one 8-image P x K training batch, one test target."""
    model = copy.deepcopy(_build(loss == "proxy_anchor"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    train = [make_batch([0, 0, 1, 1, 2, 2, 3, 3], 0, seed=1)]
    test = {"fake": {"query": [make_batch([0, 1, 2, 3], 0, seed=2)],
                     "gallery": [make_batch([0, 0, 1, 1, 2, 2, 3, 3], 1, seed=3)]}}
    datamanager = types.SimpleNamespace(train_loader=train, test_loader=test)
    return AVSLEngine(datamanager, model, optimizer, scheduler, torch.device("cpu"), str(tmp_path),
                      progress=False, loss=loss, **kwargs)


# -- the engine --------------------------------------------------------------------------------------


def test_engine_checks_its_options(tmp_path):
    with pytest.raises(ValueError, match="level weights"):
        make_engine(tmp_path, level_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="loss must be"):
        make_engine(tmp_path, loss="arcface")
    model = copy.deepcopy(_build(False))
    datamanager = types.SimpleNamespace(train_loader=[], test_loader={})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="proxies=True"):
        AVSLEngine(datamanager, model, optimizer, None, torch.device("cpu"), str(tmp_path),
                   loss="proxy_anchor")


@pytest.mark.parametrize("loss", ["triplet", "proxy_anchor"])
def test_gradients_level_losses_train_embeddings_overall_trains_reliability(tmp_path, loss):
    engine = make_engine(tmp_path, loss=loss)
    model = engine.model.train()
    data = engine.train_loader[0]
    output = model(data["img"])
    terms, stats = engine.metric_terms(output, data["pid"])
    assert set(terms) == {"metric_layer2", "metric_layer3", "metric_layer4", "overall"}
    assert 0.0 < stats["reliability"] < 1.0
    reliability = {id(p) for p in [*model.reliability_scale, *model.reliability_bias]}

    sum(terms[name] for name in engine.term_names).backward(retain_graph=True)
    for name, p in model.named_parameters():
        if id(p) in reliability:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.layer4.parameters())

    model.zero_grad(set_to_none=True)
    terms["overall"].backward()
    for name, p in model.named_parameters():
        if id(p) in reliability:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_forward_backward_step(tmp_path):
    engine = make_engine(tmp_path, level_weights=[1.0, 0.5, 2.0], overall_weight=3.0)
    engine.model.train()
    before = {name: p.detach().clone() for name, p in engine.model.named_parameters()}
    assert not engine.model.edges_initialised.any()
    logged = engine.forward_backward(engine.train_loader[0])
    assert set(logged) == {
        "metric_layer2", "metric_layer3", "metric_layer4", "overall", "loss", "reliability"
    }
    assert all(math.isfinite(v) for v in logged.values())
    expected = (logged["metric_layer2"] + 0.5 * logged["metric_layer3"] + 2.0 * logged["metric_layer4"]
                + 3.0 * logged["overall"])
    assert logged["loss"] == pytest.approx(expected, rel=1e-5)
    assert engine.model.edges_initialised.all()
    assert engine.model.edges[0].abs().sum() > 0
    changed = {name for name, p in engine.model.named_parameters() if not torch.equal(p, before[name])}
    expected_changed = {
        "reliability_scale.0", "reliability_bias.1", "projections.2.weight", "layer4.1.conv2.weight"
    }
    assert expected_changed <= changed


def test_score_uses_pairwise_distance(tmp_path):
    engine = make_engine(tmp_path)
    model = engine.model
    with torch.no_grad():
        model.train()(engine.train_loader[0]["img"])  # initialise the edges
    model.eval()
    loaders = engine.test_loader["fake"]
    query = extract_dataset_features(model, loaders["query"], torch.device("cpu"), progress=False)
    gallery = extract_dataset_features(model, loaders["gallery"], torch.device("cpu"), progress=False)
    assert query.features.shape == (4, model.embedding_dim)
    scored = engine.score(query, gallery)
    distmat = model.pairwise_distance(query.features, gallery.features).numpy()
    assert scored == ranking_metrics(distmat, query, gallery, (1, 5, 10, 20))
    # a hand-made case: the distance must decide the ranking (swapping gallery rows changes it)
    fake_q = ExtractedFeatures(query.features[:1], np.array([0]), np.array([0]))
    fake_g = ExtractedFeatures(gallery.features[:2], np.array([0, 1]), np.array([1, 1]))
    d = model.pairwise_distance(fake_q.features, fake_g.features)[0]
    expected_rank1 = 1.0 if d[0] < d[1] else 0.0
    assert engine.score(fake_q, fake_g)["rank1"] == expected_rank1
    assert engine.evaluate()["fake"] == scored


def test_run_writes_metrics_and_checkpoint_with_edges(tmp_path):
    engine = make_engine(tmp_path)
    metrics = engine.run(max_epoch=1, print_freq=1)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["mAP"] == metrics["mAP"] and 0.0 <= metrics["mAP"] <= 1.0
    (epoch,) = on_disk["history"]
    assert {"metric_layer2", "metric_layer4", "overall", "loss", "reliability", "lr"} <= set(epoch)
    state = load_checkpoint(engine.checkpoint_path)["model"]
    assert state["edges_initialised"].all()
    fresh = copy.deepcopy(_build(False))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.edge_layer3_layer4, engine.model.edge_layer3_layer4)
