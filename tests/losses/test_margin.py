"""Wu et al.'s margin loss with distance-weighted sampling against values computed by hand, its
learnable boundary in the models (optimised, checkpointed, resumed, loaded for ``reid test``), and
its use as PCB's metric loss and AVSL's base loss."""

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import reid.models.avsl  # noqa: F401  (registers "avsl")
import reid.models.pcb  # noqa: F401  (registers "pcb")
from reid.losses import AVSL_LOSSES, AVSLLoss
from reid.losses.margin import (
    MarginPairs,
    distance_from_squared,
    distance_weighted_sampling,
    inverse_density_weights,
    margin_loss_from_distances,
    margin_loss_from_pairs,
)
from reid.losses.metric import METRIC_LOSSES, metric_loss_from_features
from reid.metrics import euclidean_squared_distance
from reid.models import create_model
from tests.conftest import tiny_overrides

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def _symmetric(n, entries):
    """An ``(n, n)`` distance matrix with zero diagonal from ``{(i, j): d}`` (i < j)."""
    dist = torch.zeros(n, n, dtype=torch.float64)
    for (i, j), d in entries.items():
        dist[i, j] = dist[j, i] = d
    return dist


# -- the sampling weights ------------------------------------------------------------------------


def test_weights_in_three_dimensions_are_the_inverse_distance():
    # n = 3: 1 / q(d) = d^-(n-2) (1 - d^2/4)^-((n-3)/2) = 1 / d.
    # Anchor 0 (identity 0) has negatives at 0.3 (raised to the cut-off 0.5: weight 1/0.5 = 2), at
    # 1.0 (weight 1) and at 1.5 (beyond beta + alpha = 1.4: weight 0): probabilities 2/3, 1/3, 0.
    pids = torch.tensor([0, 1, 1, 1])
    dist = _symmetric(4, {(0, 1): 0.3, (0, 2): 1.0, (0, 3): 1.5, (1, 2): 0.7, (1, 3): 1.1, (2, 3): 0.9})
    w = inverse_density_weights(dist, pids, dim=3)
    assert w[0].tolist() == pytest.approx([0.0, 2 / 3, 1 / 3, 0.0], abs=1e-12)
    # anchors 1 and 2 have one negative (0) below the cut-off: probability 1
    assert w[1].tolist() == pytest.approx([1.0, 0, 0, 0]) and w[2].tolist() == pytest.approx([1.0, 0, 0, 0])
    # anchor 3's only negative is at 1.5 >= 1.4: drawn uniformly among its negatives, i.e. 0
    assert w[3].tolist() == pytest.approx([1.0, 0, 0, 0])


def test_weights_in_two_and_five_dimensions_follow_the_density():
    pids = torch.tensor([0, 1, 1])
    # n = 2: 1 / q(d) = (1 - d^2/4)^(1/2). d = 0.2 -> 0.5 (cut-off): sqrt(15/16) = 0.968246;
    # d = 1.0: sqrt(3/4) = 0.866025. Probabilities 0.968246 / 1.834271 = 0.527864 and 0.472136.
    dist = _symmetric(3, {(0, 1): 0.2, (0, 2): 1.0, (1, 2): 0.5})
    assert inverse_density_weights(dist, pids, dim=2)[0].tolist() == pytest.approx([0, 0.527864, 0.472136], abs=1e-6)
    # n = 5: 1 / q(d) = d^-3 (1 - d^2/4)^-1. d = 0.8: 1.953125 / 0.84 = 2.325149; d = 1.2:
    # 0.578704 / 0.64 = 0.904225; the ratio is 1.5^3 x 0.64 / 0.84 = 18/7: probabilities 18/25, 7/25.
    dist = _symmetric(3, {(0, 1): 0.8, (0, 2): 1.2, (1, 2): 0.5})
    assert inverse_density_weights(dist, pids, dim=5)[0].tolist() == pytest.approx([0, 0.72, 0.28], abs=1e-12)


def test_weights_in_high_dimensions_are_finite():
    # n = 512: 1 / q(0.5) / (1 / q(1.3)) = (1.3 / 0.5)^510 x ((1 - 1.69/4) / (1 - 1/16))^254.5, about
    # 1e170: computed in log space, the far negative's probability underflows to 0, not to NaN.
    pids = torch.tensor([0, 1, 1])
    dist = _symmetric(3, {(0, 1): 0.5, (0, 2): 1.3, (1, 2): 1.9})
    w = inverse_density_weights(dist, pids, dim=512)
    assert torch.isfinite(w).all() and w[0, 1] == 1.0 and w[0, 2] < 1e-100
    assert w.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_weights_are_refused_for_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        inverse_density_weights(torch.zeros(2, 3), torch.tensor([0, 1]), dim=3)
    with pytest.raises(ValueError, match=">= 2"):
        inverse_density_weights(torch.zeros(2, 2), torch.tensor([0, 1]), dim=1)


# -- the sampling ----------------------------------------------------------------------------------


def test_every_ordered_positive_pair_gets_one_negative_of_another_identity():
    pids = torch.tensor([0, 0, 0, 1, 1, 2])  # identity 2 has no positive: never an anchor
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(6, 4), dim=1)
    pairs = distance_weighted_sampling(torch.cdist(emb, emb), pids, dim=4)
    expected = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]
    assert list(zip(pairs.anchor.tolist(), pairs.positive.tolist())) == expected
    assert all(pids[a] != pids[n] for a, n in zip(pairs.anchor, pairs.negative))
    # a batch of one identity has no negative pair: no pairs, a zero loss still connected to beta
    beta = torch.tensor(1.2, requires_grad=True)
    loss, none = margin_loss_from_distances(torch.ones(2, 2), torch.tensor([0, 0]), beta, dim=4)
    assert none.num_pairs == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert beta.grad == 0.0


def test_sampling_is_deterministic_under_a_seed_and_follows_the_weights():
    pids = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(7, 3), dim=1)
    dist = torch.cdist(emb, emb)
    draws = [distance_weighted_sampling(dist, pids, 3, generator=torch.Generator().manual_seed(s)).negative
             for s in (5, 5, 6)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    torch.manual_seed(7)  # torch's global generator when none is given
    first = distance_weighted_sampling(dist, pids, 3).negative
    torch.manual_seed(7)
    assert torch.equal(first, distance_weighted_sampling(dist, pids, 3).negative)

    # frequencies: anchor 0 of the three-dimensional case above draws 1 with probability 2/3
    pids = torch.tensor([0, 0, 1, 1])
    dist = _symmetric(4, {(0, 1): 0.4, (0, 2): 0.3, (0, 3): 1.0, (1, 2): 1.9, (1, 3): 1.9, (2, 3): 0.5})
    generator = torch.Generator().manual_seed(0)
    hits = [int(distance_weighted_sampling(dist, pids, 3, generator=generator).negative[0]) for _ in range(3000)]
    assert hits.count(2) / 3000 == pytest.approx(2 / 3, abs=0.03) and set(hits) == {2, 3}


# -- the loss --------------------------------------------------------------------------------------


def test_loss_of_a_batch_by_hand():
    # identities 0 0 1 1; alpha 0.2, beta 1.2, so negatives at >= 1.4 are not drawn (zero loss).
    # positive pairs: (0,1), (1,0) at 1.5: 0.2 + 1.5 - 1.2 = 0.5 each; (2,3), (3,2) at 1.2: 0.2 each.
    # anchor 0: negatives 2 (1.1) and 3 (1.9): draws 2, loss 0.2 + 1.2 - 1.1 = 0.3;
    # anchor 2: negatives 0 (1.1) and 1 (1.5): draws 0, loss 0.3;
    # anchors 1 (1.5, 1.7) and 3 (1.9, 1.7): nothing below 1.4, a uniform draw, loss 0 either way.
    # Six non-zero terms summing to 2.0: loss 1/3. d loss / d beta = (2 negatives - 4 positives) / 6.
    pids = torch.tensor([0, 0, 1, 1])
    dist = _symmetric(4, {(0, 1): 1.5, (2, 3): 1.2, (0, 2): 1.1, (0, 3): 1.9, (1, 2): 1.5, (1, 3): 1.7})
    dist.requires_grad_(True)
    beta = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    for seed in range(5):
        loss, pairs = margin_loss_from_distances(dist, pids, beta, dim=3,
                                                 generator=torch.Generator().manual_seed(seed))
        assert float(loss.detach()) == pytest.approx(1 / 3, abs=1e-12)
        assert pairs.negative[0] == 2 and pairs.negative[2] == 0
    grad_dist, grad_beta = torch.autograd.grad(loss, [dist, beta])
    assert float(grad_beta) == pytest.approx(-1 / 3)  # < 0: gradient descent moves beta out, to 1.2+
    assert grad_dist[0, 1] == pytest.approx(1 / 6) and grad_dist[1, 0] == pytest.approx(1 / 6)
    assert grad_dist[2, 3] == pytest.approx(1 / 6) and grad_dist[0, 2] == pytest.approx(-1 / 6)
    assert grad_dist[1, 2] == 0 and grad_dist[1, 3] == 0


def test_sign_of_the_boundary_gradient_and_the_normalisation():
    beta = torch.tensor(1.2, requires_grad=True)
    dist = _symmetric(3, {(0, 1): 0.5, (0, 2): 0.9, (1, 2): 1.3}).float()
    # pairs (0,1) with negative 2 and (1,0) with negative 2. Positives at 0.5: 0.2 + 0.5 - 1.2 < 0,
    # no loss. Negatives: 0.2 + 1.2 - 0.9 = 0.5 and 0.2 + 1.2 - 1.3 = 0.1. Loss 0.6 / 2 = 0.3;
    # d loss / d beta = (+1 + 1) / 2 = +1 > 0: descent lowers beta (the negatives are too close).
    pairs = MarginPairs(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 2]))
    loss = margin_loss_from_pairs(dist, pairs, beta)
    assert float(loss.detach()) == pytest.approx(0.3)
    (grad,) = torch.autograd.grad(loss, beta)
    assert float(grad) == pytest.approx(1.0)
    # alpha 0 and every term satisfied: zero loss, zero gradient (the count of non-zero terms is 1)
    loss = margin_loss_from_pairs(dist, pairs, torch.tensor(0.7, requires_grad=True), alpha=0.0)
    assert float(loss.detach()) == 0.0


def test_pcb_metric_loss_on_unit_features_by_hand():
    # 2-D features (1,0), (0,1) of identity 0 and (-1,0), (0,-1) of identity 1. Every negative pair
    # is at sqrt(2) or 2 (>= 1.4: zero loss); the four ordered positive pairs at sqrt(2) each have
    # 0.2 + sqrt(2) - 1.2 = 0.414214: loss sqrt(2) - 1. d loss / d beta = -4/4 = -1.
    # d loss / d x0: the pairs (0,1) and (1,0), each (x0 - x1) / sqrt(2) / 4, sum (1,-1)/(2 sqrt 2);
    # through the normalisation at x0 = (1,0) (Jacobian I - x0 x0^T) only (0, -0.353553) is left.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], requires_grad=True)
    beta = torch.tensor([1.2], requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1])
    loss, mined = metric_loss_from_features("margin", features, pids, 0.3, margin_beta=beta, margin_alpha=0.2)
    assert float(loss.detach()) == pytest.approx(math.sqrt(2) - 1, abs=1e-6)
    assert mined.num_tuples == 4  # batch-hard triplets of the same distances, for similarity mining
    grad_x, grad_beta = torch.autograd.grad(loss, [features, beta])
    assert grad_beta.tolist() == pytest.approx([-1.0])
    assert grad_x[0].tolist() == pytest.approx([0.0, -1 / (2 * math.sqrt(2))], abs=1e-6)
    # features are normalised: scaling them changes nothing
    scaled, _ = metric_loss_from_features("margin", 3 * features.detach(), pids, 0.3, margin_beta=1.2)
    assert float(scaled) == pytest.approx(float(loss.detach()), abs=1e-6)


def test_registries_name_the_margin_loss():
    assert "margin" in METRIC_LOSSES and "margin" in AVSL_LOSSES


# -- AVSL's base loss ------------------------------------------------------------------------------

PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _avsl(**kwargs):
    torch.manual_seed(0)
    return create_model("avsl", num_classes=4, backbone="resnet18", embed_dim=8, topk=4, pretrained=False, **kwargs)


def test_avsl_margin_terms_are_margin_losses_of_the_level_distances_and_d_hat():
    model = _avsl(margin_beta=1.2).train()
    assert model.margin_beta.shape == (4,) and model.margin_beta.requires_grad
    assert "margin_beta" in model.state_dict()
    with torch.no_grad():
        model.margin_beta.copy_(torch.tensor([1.0, 1.1, 1.2, 1.3]))
    output = model(torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1)))
    loss = AVSLLoss(model.levels, loss="margin", margin_alpha=0.25)
    loss.check_model(model)
    torch.manual_seed(3)
    terms, stats = loss(model, output, PIDS)
    torch.manual_seed(3)  # the same draws, in the same order
    for index, (name, emb) in enumerate(zip(model.levels, output.embeddings)):
        dist = distance_from_squared(euclidean_squared_distance(emb, clamp_min=0.0))
        expected, _ = margin_loss_from_distances(dist, PIDS, model.margin_beta[index], 8, alpha=0.25)
        assert torch.equal(terms[f"metric_{name}"], expected), name
    e, s = [x.detach() for x in output.embeddings], output.cam_stds
    d_hat = model.rectified_distance([x.unsqueeze(1) for x in e], [x.unsqueeze(1) for x in s],
                                     [x.unsqueeze(0) for x in e], [x.unsqueeze(0) for x in s])
    expected, _ = margin_loss_from_distances(distance_from_squared(d_hat), PIDS, model.margin_beta[3], 8, alpha=0.25)
    assert torch.equal(terms["overall"], expected)
    assert stats["beta_layer4"] == pytest.approx(1.2) and stats["beta_overall"] == pytest.approx(1.3)
    # every term reaches its own boundary; the overall term trains the reliabilities, not the trunk
    sum(terms.values()).backward()
    assert (model.margin_beta.grad != 0).all()
    assert model.reliability_scale[0].grad is not None


def test_avsl_margin_needs_the_boundaries():
    with pytest.raises(ValueError, match="margin_beta"):
        AVSLLoss(["layer3", "layer4"], loss="margin").check_model(_avsl(levels=("layer3", "layer4")))
    AVSLLoss(["layer3", "layer4"], loss="margin").check_model(_avsl(levels=("layer3", "layer4"), margin_beta=1.2))
    assert _avsl().margin_beta is None and "margin_beta" not in _avsl().state_dict()


# -- through the config, the optimiser, checkpoints and the tools -----------------------------------


def _cfg(name, *opts):
    from reid.config import load_config

    return load_config(os.path.join(CONFIGS, name), list(opts))


def test_recipes_put_the_boundary_in_the_model_and_the_optimiser():
    from reid.builders import build_model, build_model_for_state, build_optimizer, model_recipe
    from reid.config import ConfigError

    small = ["MODEL.PRETRAINED", "False", "MODEL.BACKBONE", "resnet18"]
    cfg = _cfg("synthetic_pcb.yaml", *small, "LOSS.METRIC", "margin", "LOSS.MARGIN_BETA", "1.1")
    pcb = build_model(cfg, 10)
    assert pcb.margin_beta.tolist() == pytest.approx([1.1])
    optimised = {id(p) for group in build_optimizer(cfg, pcb).param_groups for p in group["params"]}
    assert id(pcb.margin_beta) in optimised
    assert build_model(_cfg("synthetic_pcb.yaml", *small), 10).margin_beta is None
    # the boundary only trains: PCB weights load whatever LOSS.METRIC the test config names
    state = {k: v + 0.5 if k == "margin_beta" else v for k, v in pcb.state_dict().items()}
    loaded = build_model_for_state(_cfg("synthetic_pcb.yaml", *small), state)
    assert loaded.margin_beta.tolist() == pytest.approx([1.6])
    without = {k: v for k, v in state.items() if k != "margin_beta"}
    assert build_model_for_state(cfg, without).margin_beta is None

    avsl_cfg = _cfg("synthetic_avsl.yaml", *small, "AVSL.LOSS", "margin", "AVSL.EMBED_DIM", "8", "AVSL.TOPK", "4")
    avsl = build_model(avsl_cfg, 10)
    assert avsl.margin_beta.tolist() == pytest.approx([1.2] * 4) and avsl.proxies is None
    optimised = {id(p) for group in build_optimizer(avsl_cfg, avsl).param_groups for p in group["params"]}
    assert id(avsl.margin_beta) in optimised
    assert "AVSL.LOSS" in model_recipe(avsl_cfg).model_keys  # so reid test builds the boundaries too

    with pytest.raises(ConfigError, match="LOSS.METRIC margin .* torchreid"):
        model_recipe(_cfg("torchreid_osnet.yaml", "LOSS.METRIC", "margin"))
    with pytest.raises(ConfigError, match=r"LOSS.MARGIN_BETA must be a number in \(0, 2\]"):
        _cfg("synthetic_pcb.yaml", "LOSS.MARGIN_BETA", "2.5")
    with pytest.raises(ConfigError, match="LOSS.MARGIN_ALPHA must be a finite number >= 0"):
        _cfg("synthetic_pcb.yaml", "LOSS.MARGIN_ALPHA", "-0.1")


def test_pcb_engine_refuses_a_model_without_the_boundary(tmp_path):
    from types import SimpleNamespace

    from reid.engine.pcb import PCBEngine

    model = create_model("pcb", num_classes=4, backbone="resnet18", num_stripes=2, reduced_dim=8, pretrained=False)
    data = SimpleNamespace(train_loader=[], test_loader={})
    with pytest.raises(ValueError, match="margin_beta"):
        PCBEngine(data, model, None, None, torch.device("cpu"), str(tmp_path), progress=False, metric="margin")


def _avsl_args(root, out, epochs):
    return ["--config", os.path.join(CONFIGS, "synthetic_avsl.yaml"), "--no-progress",
            *tiny_overrides(root, out, epochs=epochs), "AVSL.EMBED_DIM", "16", "AVSL.TOPK", "4",
            "AVSL.LOSS", "margin", "NUM_THREADS", "1", "SEED", "3"]


def test_avsl_margin_trains_resumes_and_tests(tiny_data_root, tmp_path, monkeypatch):
    from reid.cli import test as test_tool
    from reid.cli import train as train_tool
    from reid.engine.avsl import AVSLEngine

    threads = torch.get_num_threads()
    try:
        reference = train_tool.main(_avsl_args(tiny_data_root, tmp_path / "full", 2))
        args = _avsl_args(tiny_data_root, tmp_path / "stopped", 2)
        original = AVSLEngine.forward_backward

        def interrupt_in_second_epoch(self, data):
            if self.epoch == 1 and self.batch_idx == 1:
                raise KeyboardInterrupt
            return original(self, data)

        monkeypatch.setattr(AVSLEngine, "forward_backward", interrupt_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            train_tool.main(args)
        monkeypatch.setattr(AVSLEngine, "forward_backward", original)
        resumed = train_tool.main([*args, "--resume"])
    finally:
        torch.set_num_threads(threads)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    assert {"beta_layer2", "beta_overall", "metric_layer4", "overall"} <= set(reference["history"][0])
    full = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    again = torch.load(tmp_path / "stopped" / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    assert torch.equal(full["margin_beta"], again["margin_beta"])
    assert full["margin_beta"].shape == (4,) and not torch.equal(full["margin_beta"], torch.full((4,), 1.2))

    weights = tmp_path / "full" / "checkpoints" / "checkpoint_last.pth"
    test_args = [a if a != str(tmp_path / "full") else str(tmp_path / "test") for a in
                 _avsl_args(tiny_data_root, tmp_path / "full", 2)]
    tested = test_tool.main([*test_args, "--weights", str(weights)])
    for key in ("rank1", "mAP", "mINP"):
        assert tested[key] == pytest.approx(reference[key], abs=1e-9), key


def test_pcb_margin_trains_and_its_weights_test_under_another_metric(tiny_data_root, tmp_path):
    from reid.cli import test as test_tool
    from reid.cli import train as train_tool

    config = os.path.join(CONFIGS, "synthetic_pcb.yaml")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        metrics = train_tool.main(["--config", config, "--no-progress", *tiny_overrides(tiny_data_root, out),
                                   "LOSS.METRIC", "margin", "NUM_THREADS", "1"])
    finally:
        torch.set_num_threads(threads)
    (epoch,) = json.loads((out / "metrics.json").read_text())["history"]
    assert "margin" in epoch and "margin_beta" in epoch and "triplet" not in epoch
    weights = out / "checkpoints" / "checkpoint_last.pth"
    assert torch.load(weights, weights_only=True)["model"]["margin_beta"].shape == (1,)
    tested = test_tool.main(["--config", config, "--no-progress", "--weights", str(weights),
                             *tiny_overrides(tiny_data_root, tmp_path / "test")])  # LOSS.METRIC triplet
    assert tested["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)


def test_model_copies_keep_the_boundary():
    model = _avsl(margin_beta=1.2)
    clone = copy.deepcopy(model)
    assert torch.equal(clone.margin_beta, model.margin_beta) and clone.margin_beta is not model.margin_beta
