"""SAMEngine: one PCB+SAM step on a tiny batch (resnet18, 64x32, random weights, CPU)."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from reid.engine.hooks import Hook
from reid.engine.sam import SAMEngine
from reid.explain import attention_maps_from_features, triplet_weights
from reid.losses import batchnorm_modules, eval_mode, mining_tuples, soft_mask
from reid.models.pcb import PCB
from tests.conftest import tiny_overrides
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb_sam.yaml")
NUM_IDS, PER_ID = 4, 2  # a P x K = 4 x 2 batch of 8


def tiny_model(seed=0, test_feature="pooled"):
    torch.manual_seed(seed)
    return PCB(num_classes=NUM_IDS, backbone="resnet18", num_stripes=2, reduced_dim=16,
               test_feature=test_feature, pretrained=False)


def tiny_batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(NUM_IDS * PER_ID, 3, 64, 32, generator=generator)
    return images, torch.arange(NUM_IDS).repeat_interleave(PER_ID)


def make_engine(model=None, lr=0.0, **kwargs):
    model = tiny_model() if model is None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    datamanager = SimpleNamespace(train_loader=[], test_loader={})
    return SAMEngine(datamanager, model, optimizer, scheduler, torch.device("cpu"), "unused",
                     progress=False, **kwargs)


def count_forward_features(model):
    """Counts calls of ``model.forward_features`` (instance attribute shadows the method)."""
    calls = []
    original = model.forward_features

    def counted(x):
        calls.append(x)
        return original(x)

    model.forward_features = counted
    return calls


def mining_step(engine, seed=2):
    """Forward in train mode + similarity mining, as in ``forward_backward`` (no backward)."""
    images, pids = tiny_batch()
    engine.model.train()
    torch.manual_seed(seed)  # dropout of the reduced features decides the mined tuples
    output = engine.model(images)
    _, mined = engine.metric_terms(output, pids)
    return images, output, mined, engine.similarity_mining(images, output, mined)


@pytest.mark.parametrize("form", ["siamese", "triplet", "quadruplet"])
def test_step_gives_finite_terms_with_two_encoder_passes(form):
    engine = make_engine(form=form, lr=0.01)
    calls = count_forward_features(engine.model)
    before = [p.detach().clone() for p in engine.model.parameters()]
    images, pids = tiny_batch()
    terms = engine.forward_backward({"img": images, "pid": pids})
    assert set(terms) == {"id", "triplet", "sm", "loss", "acc"}
    assert all(math.isfinite(v) for v in terms.values())
    # L = L_id + L_triplet + gamma L_sm with gamma = 0.2
    assert terms["loss"] == pytest.approx(terms["id"] + terms["triplet"] + 0.2 * terms["sm"], rel=1e-5)
    assert len(calls) == 2  # the batch, then the masked images: no trunk pass for the maps
    assert calls[0] is images
    roles = {"siamese": 2, "triplet": 3, "quadruplet": 4}[form]
    if form != "siamese":  # one batch-hard tuple per anchor, none repeated: R x B masked images
        assert calls[1].shape == (roles * 8, 3, 64, 32)
    assert any(not torch.equal(a, p) for a, p in zip(before, engine.model.parameters()))


def test_siamese_reverse_pairs_are_masked_once():
    # K = 2: every image's only positive is its partner, whose positive is the image itself,
    # so the 8 ordered pairs are 4 unordered ones: 4 pairs x 2 roles = 8 masked images, not 16.
    engine = make_engine(form="siamese")
    images, _, mined, step = mining_step(engine)
    assert mined.num_tuples == 8 and step.num_masked == 8
    # the shared rows give the loss of the 8 ordered pairs: each pair counted twice
    model = engine.model.eval()
    with torch.no_grad():  # BN eval in the masked pass: per-sample, equal to the eval model
        fa = F.normalize(model(step.masked["anchor"].detach()), dim=1)
        fp = F.normalize(model(step.masked["positive"].detach()), dim=1)
    expected = -(fa - fp).norm(dim=1).mean()
    assert torch.isclose(step.loss.detach(), expected, atol=1e-5)
    assert sorted(step.tuples["anchor"].tolist()) == [0, 0, 2, 2, 4, 4, 6, 6]


def test_masked_images_are_soft_masks_of_the_tuple_maps():
    engine = make_engine(form="triplet", omega=7.0, sigma=0.4)
    images, output, mined, step = mining_step(engine)
    tuples = mining_tuples(mined, "triplet")
    for role in tuples:
        assert torch.equal(step.tuples[role], tuples[role])
    # Independent path: per role, detached map, no deduplication.
    fmap = output.feature_map.detach()
    with torch.no_grad():
        emb = F.normalize(engine.model.eval().embed_features(fmap), dim=1)
    w = triplet_weights(emb[tuples["anchor"]], emb[tuples["positive"]], emb[tuples["negative"]])
    for role, rows in tuples.items():
        maps, _ = attention_maps_from_features(engine.model.embed_features, fmap[rows], w)
        assert torch.allclose(step.maps[role].detach(), maps, atol=1e-6)
        expected = soft_mask(images[rows], maps, omega=7.0, sigma=0.4)
        assert torch.allclose(step.masked[role].detach(), expected, atol=1e-6)
    assert not torch.equal(step.masked["anchor"], images[tuples["anchor"]])  # something masked


@pytest.mark.parametrize("second_order", [False, True])
def test_sm_gradient_reaches_the_backbone_through_the_maps(second_order):
    engine = make_engine(second_order=second_order)
    _, output, _, step = mining_step(engine)
    output.feature_map.retain_grad()
    step.loss.backward()
    # L_sm depends on the first pass only through A in the maps M
    assert output.feature_map.grad is not None and output.feature_map.grad.abs().sum() > 0
    for param in (engine.model.stem[0].weight, engine.model.layer1[0].conv1.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


def sm_gradients(second_order):
    engine = make_engine(second_order=second_order)
    _, _, _, step = mining_step(engine)
    params = [engine.model.stem[0].weight, engine.model.layer4[-1].conv2.weight]
    return torch.autograd.grad(step.loss, params), step.loss.detach()


def test_second_order_gradient_differs_from_first_order():
    first, loss1 = sm_gradients(False)
    second, loss2 = sm_gradients(True)
    assert torch.allclose(loss1, loss2, atol=1e-7)  # same value: only the gradient through alpha is added
    for g1, g2 in zip(first, second):
        assert torch.isfinite(g2).all()
        assert not torch.allclose(g1, g2, rtol=1e-4, atol=1e-9)


def running_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for m in batchnorm_modules(model)]


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_masked_pass_running_statistics(bn_mode):
    engine = make_engine(bn_mode=bn_mode)
    calls = count_forward_features(engine.model)
    images, pids = tiny_batch()
    engine.model.train()
    output = engine.model(images)  # the batch pass updates the running stats (as in PCB)
    _, mined = engine.metric_terms(output, pids)
    before = running_stats(engine.model)
    step = engine.similarity_mining(images, output, mined)  # maps + masked pass only
    after = running_stats(engine.model)
    assert len(calls) == 2
    assert all(m.training for m in engine.model.modules())  # every mode restored
    unchanged = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
                    for a, b in zip(before, after))
    assert unchanged == (bn_mode == "eval")
    if bn_mode == "eval":  # running statistics used, not the masked batch's statistics
        engine.model.eval()
        with torch.no_grad():
            expected = engine.model(step.masked["anchor"].detach())
        assert torch.allclose(step.embeddings["anchor"].detach(), expected, atol=1e-5)


def test_modes_restored_when_the_masked_pass_fails():
    engine = make_engine()
    calls = count_forward_features(engine.model)
    original = engine.model.forward_features

    def fail_on_masked_pass(x):
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(x)

    engine.model.forward_features = fail_on_masked_pass
    images, pids = tiny_batch()
    with pytest.raises(RuntimeError, match="boom"):
        engine.forward_backward({"img": images, "pid": pids})
    assert all(m.training for m in engine.model.modules())


def test_eval_mode_switches_only_the_given_modules_and_restores_them():
    model = tiny_model()
    model.train()
    model.layer1.training = False
    bns = batchnorm_modules(model)
    with eval_mode(bns):
        assert not any(m.training for m in bns)
        assert model.layer2.training and model.dropout.training
    assert not model.layer1.training  # previous modes, not "all train"
    assert model.layer1[0].bn1.training and model.layer2[0].bn1.training


def test_reduced_head_maps_are_per_sample_eval_maps():
    # The reduced head has dropout and BN: with them in train mode a map would depend on the
    # other rows; in eval mode each anchor's map equals the map of that one tuple alone.
    engine = make_engine(model=tiny_model(test_feature="reduced"))
    _, output, _, step = mining_step(engine)
    assert torch.isfinite(step.loss) and step.loss.requires_grad
    fmap = output.feature_map.detach()
    model = engine.model.eval()
    with torch.no_grad():
        emb = F.normalize(model.embed_features(fmap), dim=1)
    a, p, n = (step.tuples[role][:1] for role in ("anchor", "positive", "negative"))
    w = triplet_weights(emb[a], emb[p], emb[n])
    alone, _ = attention_maps_from_features(model.embed_features, fmap[a], w)
    assert torch.allclose(step.maps["anchor"][:1].detach(), alone, atol=1e-6)


def test_other_layer_takes_a_second_trunk_pass():
    engine = make_engine(layer="layer3")
    calls = count_forward_features(engine.model)
    images, pids = tiny_batch()
    terms = engine.forward_backward({"img": images, "pid": pids})
    assert all(math.isfinite(v) for v in terms.values())
    assert len(calls) == 3  # batch, member images for the layer3 maps, masked images


def test_max_tuples_bounds_the_masked_pass():
    engine = make_engine(form="triplet", max_tuples=2)
    calls = count_forward_features(engine.model)
    images, pids = tiny_batch()
    terms = engine.forward_backward({"img": images, "pid": pids})
    assert math.isfinite(terms["sm"])
    assert calls[1].shape[0] == 2 * 3  # 2 tuples x 3 roles instead of 8 x 3


def test_batch_without_positive_pairs_gives_zero_sm_and_no_masked_pass():
    engine = make_engine()
    calls = count_forward_features(engine.model)
    images, _ = tiny_batch()
    terms = engine.forward_backward({"img": images[:4], "pid": torch.arange(4)})  # 4 singletons
    assert terms["sm"] == 0.0 and math.isfinite(terms["loss"])
    assert len(calls) == 1


@pytest.mark.parametrize("kwargs, error", [
    ({"form": "pairs"}, ValueError), ({"bn_mode": "frozen"}, ValueError),
    ({"gamma": -1.0}, ValueError), ({"layer": "layer9"}, ValueError),
    ({"max_tuples": -1}, ValueError), ({"objective": "flipped"}, ValueError),
    ({"mining_start_epoch": -1}, ValueError), ({"mining_start_epoch": 1.5}, ValueError),
])
def test_bad_arguments_are_reported(kwargs, error):
    with pytest.raises(error):
        make_engine(**kwargs)


def test_train_tool_builds_sam_engine_and_logs_sm(tiny_data_root, tmp_path):
    out = tmp_path / "sam"
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    (epoch,) = json.loads((out / "metrics.json").read_text())["history"]
    assert {"id", "triplet", "sm", "loss", "lr"} <= set(epoch)
    assert math.isfinite(epoch["sm"])


def test_detached_maps_stop_l_sm_at_the_masked_pass():
    engine = make_engine(map_gradient=False)
    _, output, _, step = mining_step(engine)
    output.feature_map.retain_grad()
    step.loss.backward()
    # the first pass gets nothing from L_sm: its map entered only through the (detached) masks
    assert output.feature_map.grad is None or output.feature_map.grad.abs().sum() == 0
    assert not any(m.requires_grad for m in step.maps.values())
    # the network still learns from L_sm through the masked images' pass
    grad = engine.model.layer1[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="second_order needs map_gradient"):
        make_engine(map_gradient=False, second_order=True)


def test_same_seed_same_step_with_two_threads_under_deterministic_algorithms():
    """With 2 threads some CPU kernels of the similarity-mining step accumulate in a thread-dependent
    order (gradients differed by ~3e-6 between calls); TRAIN.DETERMINISTIC removes that."""
    from reid.engine.determinism import deterministic_algorithms

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            engine = make_engine(lr=0.0)
            images, pids = tiny_batch()
            torch.manual_seed(5)
            with deterministic_algorithms(True):
                engine.forward_backward({"img": images, "pid": pids})
            grads.append([p.grad.clone() for p in engine.model.parameters() if p.grad is not None])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_run_uses_deterministic_algorithms_on_the_cpu_and_restores_the_setting(tmp_path):
    seen = []
    engine = make_engine(lr=0.0)
    engine.output_dir = str(tmp_path)
    engine.datamanager.train_loader = []
    engine.train_epoch = lambda print_freq=10: seen.append(torch.are_deterministic_algorithms_enabled()) or {}
    engine.evaluate = lambda: {}
    before = torch.are_deterministic_algorithms_enabled()
    engine.run(max_epoch=1, eval_freq=0, checkpoint_freq=1)
    assert seen == [True] and torch.are_deterministic_algorithms_enabled() == before
    engine.deterministic, seen[:] = False, []
    engine.run(max_epoch=2, eval_freq=0, checkpoint_freq=1, resume=True)
    assert seen == [False]


# -- SAM.OBJECTIVE and SAM.START_EPOCH ----------------------------------------------------------


@pytest.mark.parametrize("form", ["siamese", "triplet", "quadruplet"])
def test_objective_reaches_the_loss_of_the_step(form):
    # Same weights, batch and seed: the maps, masks and masked embeddings do not depend on the
    # objective, so L_sm under "printed" is exactly minus L_sm under "erase" for triplets and
    # quadruplets (each term flips), and the same for Siamese pairs.
    erase = mining_step(make_engine(form=form, objective="erase"))[3]
    printed = mining_step(make_engine(form=form, objective="printed"))[3]
    for role in erase.embeddings:
        assert torch.allclose(erase.embeddings[role], printed.embeddings[role])
    assert abs(erase.loss.item()) > 1e-4
    flip = 1.0 if form == "siamese" else -1.0
    assert printed.loss.item() == pytest.approx(flip * erase.loss.item(), rel=1e-6, abs=1e-7)
    # the erase value recomputed from the masked embeddings (normalised), per the formula
    f = {role: F.normalize(e.detach(), dim=1) for role, e in erase.embeddings.items()}
    d = {role: (f["anchor"] - f[role]).norm(dim=1) for role in f if role != "anchor"}
    negatives = [role for role in d if role.startswith("negative")]  # none for Siamese pairs
    terms = [d[role] - d["positive"] for role in negatives] if negatives else [-d["positive"]]
    expected = sum(terms).mean()
    assert erase.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_builder_threads_objective_and_start_epoch_from_the_config():
    from reid.builders import _pcb_engine
    from reid.config import load_config

    for opts, objective, start in (([], "erase", 0),
                                   (["SAM.OBJECTIVE", "printed", "SAM.START_EPOCH", "3"], "printed", 3)):
        cfg = load_config(None, ["SAM.ENABLED", "True", "MODEL.BACKBONE", "resnet18", *opts])
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        engine = _pcb_engine(cfg, SimpleNamespace(train_loader=[], test_loader={}), model, optimizer,
                             scheduler, torch.device("cpu"), dict(progress=False))
        assert isinstance(engine, SAMEngine)
        assert engine.sm_loss.objective == objective and engine.mining_start_epoch == start


def run_two_epochs(tmp_path, resume_after_one=False, start_epoch=1):
    """A PCB+SAM run of 2 epochs of one tiny batch each (SGD, lr 0.01) with similarity mining
    from epoch index ``start_epoch``; optionally stopped after epoch 1 and resumed by a new engine
    from the checkpoint. Returns the history and the number of encoder passes of each step."""
    images, pids = tiny_batch()
    passes = []

    def engine():
        e = make_engine(lr=0.01, mining_start_epoch=start_epoch)
        e.output_dir = str(tmp_path)
        e.datamanager.train_loader = e.train_loader = [{"img": images, "pid": pids}]
        e.evaluate = lambda: {}
        calls = count_forward_features(e.model)

        class CountPasses(Hook):
            def after_step(self, terms):
                passes.append(len(calls))
                calls.clear()

        e.register_hooks([CountPasses()])
        return e

    if resume_after_one:
        engine().run(max_epoch=1)
        metrics = engine().run(max_epoch=2, resume=True)
    else:
        metrics = engine().run(max_epoch=2)
    return metrics["history"], passes


def test_start_epoch_trains_plain_pcb_steps_before_it(tmp_path, caplog):
    caplog.set_level("INFO", logger="reid.engine.sam")
    history, passes = run_two_epochs(tmp_path)
    assert [h["epoch"] for h in history] == [1, 2]
    assert "sm" not in history[0] and {"id", "triplet", "loss", "acc"} <= set(history[0])
    assert "sm" in history[1] and math.isfinite(history[1]["sm"])
    # epoch 1: the batch's pass only (a PCB step); epoch 2: the batch, then the masked images
    assert passes == [1, 2]
    messages = [r.getMessage() for r in caplog.records if r.name == "reid.engine.sam"]
    assert sum("similarity mining starts at epoch 2 (SAM.START_EPOCH 1)" in m for m in messages) == 1
    assert sum("similarity mining on from epoch 2" in m for m in messages) == 1


def test_start_epoch_holds_across_resume(tmp_path, caplog):
    caplog.set_level("INFO", logger="reid.engine.sam")
    uninterrupted, _ = run_two_epochs(tmp_path / "whole")
    caplog.clear()
    resumed, passes = run_two_epochs(tmp_path / "resumed", resume_after_one=True)
    assert passes == [1, 2]  # epoch 1 in the first run, epoch 2 in the resumed run
    assert "sm" not in resumed[0] and "sm" in resumed[1]
    for key in ("id", "triplet", "sm", "loss"):
        assert resumed[1][key] == pytest.approx(uninterrupted[1][key], rel=1e-4)
    messages = [r.getMessage() for r in caplog.records if r.name == "reid.engine.sam"]
    assert sum("similarity mining on from epoch 2" in m for m in messages) == 1


def test_start_epoch_zero_mines_from_the_first_step(tmp_path):
    history, passes = run_two_epochs(tmp_path, start_epoch=0)
    assert all("sm" in h for h in history) and passes == [2, 2]
