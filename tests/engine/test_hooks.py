"""The training hooks: their schedules on a stand-in engine, and the order in which a real (tiny)
run calls them, on success, on failure and when a resumed run is already complete."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from reid.engine import hooks as hooks_module
from reid.engine.distributed import DistributedContext
from reid.engine.hooks import (
    CheckpointHook,
    CMCPlotHook,
    EvaluationHook,
    Hook,
    MetricsHook,
    TensorBoardHook,
)
from tests.engine.toy_engine import NUM_BATCHES, make_toy_engine, without_timing


class Recorder(Hook):
    """Records every event as ``(event, 1-based epoch)``."""

    def __init__(self):
        self.events = []

    def record(self, name):
        self.events.append((name, self.engine.epoch + 1))

    def before_train(self):
        self.record("before_train")

    def before_epoch(self):
        self.record("before_epoch")

    def before_step(self):
        self.record("before_step")

    def after_step(self, terms):
        assert set(terms) == {"mse", "loss"}
        self.record("after_step")

    def after_epoch(self, record):
        assert record is self.engine.history[-1]
        self.record("after_epoch")

    def after_evaluate(self, results):
        assert set(results) == {"toy"}
        self.record("after_evaluate")

    def after_train(self):
        self.record("after_train")

    def close(self):
        self.record("close")


def fake_engine(max_epoch, **kwargs):
    return SimpleNamespace(max_epoch=max_epoch, epoch=0, **kwargs)


def attached(hook, engine):
    hook.engine = engine
    return hook


def run_epochs(hook, engine):
    """Calls ``after_epoch`` for every epoch as ``ReidEngine.run`` does; returns the records."""
    records = []
    for engine.epoch in range(engine.max_epoch):
        records.append({"epoch": engine.epoch + 1})
        hook.after_epoch(records[-1])
    return records


@pytest.mark.parametrize("period, max_epoch, expected", [(0, 5, [5]), (2, 5, [2, 4, 5]), (1, 3, [1, 2, 3]),
                                                         (4, 4, [4])])
def test_evaluation_hook_evaluates_every_period_and_after_the_last_epoch(period, max_epoch, expected):
    calls = []
    engine = fake_engine(max_epoch, evaluate_on_main=lambda: calls.append(engine.epoch + 1) or {"t": {"mAP": 0.5}})
    hook = attached(EvaluationHook(period), engine)
    records = run_epochs(hook, engine)
    assert calls == expected
    assert [r["epoch"] for r in records if "test" in r] == expected
    assert all(r["test"] == {"t": {"mAP": 0.5}} for r in records if "test" in r)


def test_evaluation_hook_evaluates_once_when_the_resumed_run_is_already_complete():
    calls = []
    engine = fake_engine(3, start_epoch=3, results=None, evaluate_on_main=lambda: calls.append(engine.epoch))
    attached(EvaluationHook(1), engine).after_train()
    assert calls == [2]  # at the last epoch (0-based), as TensorBoard's step says
    calls.clear()
    engine.results = {"t": {}}  # evaluated during the run: nothing more
    attached(EvaluationHook(1), engine).after_train()
    assert calls == []


@pytest.mark.parametrize("period, max_epoch, expected", [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (0, 2, [1, 2]),
                                                         (10, 3, [3])])
def test_checkpoint_hook_writes_every_period_and_after_the_last_epoch(period, max_epoch, expected, monkeypatch):
    saved = []
    monkeypatch.setattr(hooks_module, "save_training_state", lambda engine, epoch: saved.append(epoch))
    hook = attached(CheckpointHook(period), fake_engine(max_epoch))
    run_epochs(hook, hook.engine)
    assert saved == expected


class FakeWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], 0
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed += 1


def test_tensorboard_hook_logs_train_terms_lr_and_test_metrics(tmp_path, monkeypatch):
    FakeWriter.instances.clear()
    monkeypatch.setattr(hooks_module, "SummaryWriter", FakeWriter)
    engine = make_toy_engine(tmp_path)
    engine.run(max_epoch=2, eval_freq=1, print_freq=1)
    (writer,) = FakeWriter.instances
    assert writer.log_dir == os.path.join(str(tmp_path), "tensorboard") and writer.closed == 1
    train = [(tag, step) for tag, _, step in writer.scalars if tag.startswith("Train/")]
    steps = range(2 * NUM_BATCHES)
    assert train == [(tag, s) for s in steps for tag in ("Train/mse", "Train/loss", "Train/lr")]
    lrs = [value for tag, value, _ in writer.scalars if tag == "Train/lr"]
    assert lrs == [0.1] * NUM_BATCHES + [0.05] * NUM_BATCHES  # the epoch's lr, as in the history
    losses = [value for tag, value, _ in writer.scalars if tag == "Train/loss"]
    assert sum(losses[:NUM_BATCHES]) / NUM_BATCHES == pytest.approx(engine.history[0]["loss"])
    test = {(tag, step): value for tag, value, step in writer.scalars if tag.startswith("Test/")}
    for epoch in (1, 2):
        for key, value in engine.history[epoch - 1]["test"]["toy"].items():
            assert test[(f"Test/toy/{key}", epoch)] == value


def test_run_calls_the_hooks_in_order(tmp_path):
    engine = make_toy_engine(tmp_path)
    recorder = Recorder()
    engine.register_hooks([recorder])
    engine.run(max_epoch=2, eval_freq=2, print_freq=1)
    expected = [("before_train", 1)]
    for e in (1, 2):
        expected += [("before_epoch", e), *[("before_step", e), ("after_step", e)] * NUM_BATCHES]
        expected += [("after_evaluate", e)] if e == 2 else []  # EvaluationHook runs before it
        expected += [("after_epoch", e)]
    expected += [("after_train", 2), ("close", 2)]
    assert recorder.events == expected


def test_a_run_engine_provides_what_the_hooks_and_the_checkpoints_use(tmp_path):
    """The hooks and the checkpoint code see the engine through the protocols of
    reid/engine/interfaces.py (they do not import the engine): a ReidEngine after run() has every
    attribute and method the protocols list."""
    from reid.engine.interfaces import CheckpointedRun, HookedRun

    members = set()
    for protocol in (CheckpointedRun, HookedRun):
        members |= set(protocol.__annotations__)
        members |= {name for name, value in vars(protocol).items()
                    if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    assert {"checkpoint_path", "checkpoint_status", "evaluate_on_main", "plot_cmc", "history"} <= members
    engine = make_toy_engine(tmp_path)
    engine.run(max_epoch=1, print_freq=1)
    assert sorted(name for name in members if not hasattr(engine, name)) == []


def test_default_hooks_and_their_order(tmp_path):
    engine = make_toy_engine(tmp_path)
    kinds = [type(h) for h in engine.default_hooks(eval_freq=3, checkpoint_freq=2)]
    assert kinds == [EvaluationHook, CheckpointHook, TensorBoardHook, MetricsHook, CMCPlotHook]
    evaluation, checkpoint = engine.default_hooks(eval_freq=3, checkpoint_freq=2)[:2]
    assert evaluation.period == 3 and checkpoint.period == 2
    engine.dist = DistributedContext(rank=1, world_size=2)  # another process of a torchrun job
    assert [type(h) for h in engine.default_hooks()] == [EvaluationHook, CheckpointHook]


def test_run_writes_metrics_checkpoint_tensorboard_and_cmc_plot(tmp_path):
    engine = make_toy_engine(tmp_path)
    returned = engine.run(max_epoch=3, eval_freq=2, checkpoint_freq=2, print_freq=1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == returned
    assert list(metrics) == ["rank1", "mAP", "mINP", "epoch", "train_seconds", "targets", "cmc", "history", "config"]
    assert metrics["train_seconds"] > 0
    assert metrics["epoch"] == 3 and metrics["targets"]["toy"]["mAP"] == metrics["mAP"]
    assert [("test" in h) for h in metrics["history"]] == [False, True, True]
    assert [list(h)[:4] for h in metrics["history"]] == [["epoch", "mse", "loss", "lr"]] * 3
    assert metrics["cmc"]["toy"][0] == metrics["rank1"]
    checkpoint = torch.load(engine.checkpoint_path, weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["history"] == metrics["history"]
    assert os.listdir(tmp_path / "tensorboard")
    assert (tmp_path / "cmc.png").read_bytes().startswith(b"\x89PNG")


def test_failed_run_closes_the_hooks_and_writes_no_metrics(tmp_path, monkeypatch):
    FakeWriter.instances.clear()
    monkeypatch.setattr(hooks_module, "SummaryWriter", FakeWriter)
    engine = make_toy_engine(tmp_path)
    recorder = Recorder()
    engine.register_hooks([recorder])

    def fail_in_second_epoch(data):
        if engine.epoch == 1:
            raise KeyboardInterrupt
        return type(engine).forward_backward(engine, data)

    engine.forward_backward = fail_in_second_epoch
    with pytest.raises(KeyboardInterrupt):
        engine.run(max_epoch=2, print_freq=1)
    names = [name for name, _ in recorder.events]
    assert names[-2:] == ["before_step", "close"] and "after_train" not in names
    assert FakeWriter.instances[0].closed == 1
    assert not (tmp_path / "metrics.json").exists()
    assert torch.load(engine.checkpoint_path, weights_only=True)["epoch"] == 1


def test_resumed_complete_run_only_evaluates_and_rewrites_metrics(tmp_path):
    first = make_toy_engine(tmp_path).run(max_epoch=2, print_freq=1)
    os.remove(tmp_path / "metrics.json")
    engine = make_toy_engine(tmp_path)
    recorder = Recorder()
    engine.register_hooks([recorder])
    again = engine.run(max_epoch=2, print_freq=1, resume=True)
    assert recorder.events == [("before_train", 1), ("after_evaluate", 2), ("after_train", 2), ("close", 2)]
    assert again["train_seconds"] == 0.0  # this call trained no epoch
    assert without_timing(again) == without_timing(first) == without_timing(
        json.loads((tmp_path / "metrics.json").read_text()))
