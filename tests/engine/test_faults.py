"""Faults during a (tiny) run: a failed or interrupted evaluation, a NaN loss, non-finite weights,
orphan temporary files. Nothing is lost and nothing wrong is written."""

import logging
import math
import os

import pytest
import torch

from reid.engine import hooks as hooks_module
from reid.engine.checkpoint import load_checkpoint
from reid.engine.hooks import Hook
from tests.engine.toy_engine import NUM_BATCHES, make_toy_engine, without_timing


class UnreadableGallery:
    """A gallery loader whose images cannot be read; ``times`` failures, then ``loader``'s batches."""

    def __init__(self, loader, error=OSError, times=1_000_000):
        self.loader, self.error, self.times = loader, error, times

    def __iter__(self):
        if self.times > 0:
            self.times -= 1
            raise self.error("cannot read image gallery/0001_c1s1_000001.png")
        return iter(self.loader)


def break_gallery(engine, **kwargs):
    gallery = engine.test_loader["toy"]["gallery"]
    engine.test_loader["toy"]["gallery"] = UnreadableGallery(gallery, **kwargs)


def all_finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class Draws(Hook):
    """Draws from torch's RNG before each epoch, as a shuffling sampler would."""

    def __init__(self):
        self.draws = []

    def before_epoch(self):
        self.draws.append(float(torch.rand(1)))


def drawing_evaluation(engine):
    """The engine's evaluation, drawing from torch's RNG first, as a DataLoader does."""
    evaluate = engine.evaluate

    def evaluate_and_draw():
        torch.rand(1)
        return evaluate()

    engine.evaluate = evaluate_and_draw
    return engine


# -- 1. checkpoint first, then evaluation --------------------------------------------------------


def test_checkpoint_is_written_before_the_evaluation_and_again_with_its_results(tmp_path, monkeypatch):
    events = []
    engine = make_toy_engine(tmp_path)
    save = hooks_module.save_training_state

    def recording_save(engine, epoch, **kwargs):
        save(engine, epoch, **kwargs)
        history = load_checkpoint(engine.checkpoint_path)["history"]
        events.append(("checkpoint", epoch, "test" in history[-1]))

    monkeypatch.setattr(hooks_module, "save_training_state", recording_save)
    evaluate = engine.evaluate
    engine.evaluate = lambda: events.append(("evaluate", engine.epoch + 1)) or evaluate()
    engine.run(max_epoch=3, eval_freq=2, checkpoint_freq=2, print_freq=1)
    assert events == [
        ("checkpoint", 2, False), ("evaluate", 2), ("checkpoint", 2, True),
        ("checkpoint", 3, False), ("evaluate", 3), ("checkpoint", 3, True),
    ]


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_failed_final_evaluation_keeps_the_last_epochs_and_resume_evaluates(tmp_path, caplog, error):
    """MAX_EPOCH 3, CHECKPOINT_FREQ 5: the evaluation after the last epoch fails (an unreadable
    gallery image, or a kill); the checkpoint of epoch 3 is there, and --resume evaluates it."""
    reference = make_toy_engine(tmp_path / "reference").run(max_epoch=3, checkpoint_freq=5, print_freq=1)
    out = tmp_path / "run"
    engine = make_toy_engine(out)
    break_gallery(engine, error=error)
    with caplog.at_level(logging.INFO), pytest.raises(error, match="cannot read image"):
        engine.run(max_epoch=3, checkpoint_freq=5, print_freq=1)
    state = load_checkpoint(engine.checkpoint_path)
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert "test" not in state["history"][-1]
    assert not (out / "metrics.json").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if error is OSError:  # one line: the epoch, the target, the error, what to do
        (line,) = errors
        assert "epoch 3" in line and "'toy'" in line and "cannot read image" in line and "--resume" in line
    else:
        assert errors == []

    caplog.clear()
    with caplog.at_level(logging.INFO):
        resumed = make_toy_engine(out).run(max_epoch=3, checkpoint_freq=5, print_freq=1, resume=True)
    assert without_timing(resumed) == without_timing(reference)
    assert load_checkpoint(engine.checkpoint_path)["history"] == reference["history"]
    assert any("evaluation after epoch 3 did not complete" in r.getMessage() for r in caplog.records)


def test_resume_redoes_an_interrupted_evaluation_before_training_on(tmp_path):
    """An evaluation in the middle of the run fails: --resume evaluates that epoch first, so the
    resumed run matches an uninterrupted one, random draws included."""
    reference_engine = drawing_evaluation(make_toy_engine(tmp_path / "reference"))
    reference_draws = Draws()
    reference_engine.register_hooks([reference_draws])
    reference = reference_engine.run(max_epoch=3, eval_freq=1, print_freq=1)

    out = tmp_path / "run"
    engine = drawing_evaluation(make_toy_engine(out))
    draws = Draws()
    engine.register_hooks([draws])
    original = engine.evaluate

    def fail_at_epoch_2():
        if engine.epoch == 1:
            raise OSError("cannot read image gallery/0001_c1s1_000001.png")
        return original()

    engine.evaluate = fail_at_epoch_2
    with pytest.raises(OSError):
        engine.run(max_epoch=3, eval_freq=1, print_freq=1)
    assert load_checkpoint(engine.checkpoint_path)["epoch"] == 2

    engine = drawing_evaluation(make_toy_engine(out))
    resumed_draws = Draws()
    engine.register_hooks([resumed_draws])
    resumed = engine.run(max_epoch=3, eval_freq=1, print_freq=1, resume=True)
    assert draws.draws + resumed_draws.draws == reference_draws.draws
    assert without_timing(resumed) == without_timing(reference)
    assert [("test" in h) for h in resumed["history"]] == [True, True, True]


# -- 3. NaN and inf ------------------------------------------------------------------------------


class Snapshot(Hook):
    """The model's state before each step."""

    def before_step(self):
        self.state = {k: v.detach().clone() for k, v in self.engine.model.state_dict().items()}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_run_in_its_step_before_the_weights_change(tmp_path, value, caplog):
    engine = make_toy_engine(tmp_path)
    forward = engine.model.forward

    def poisoned(images):
        out = forward(images)
        return out * value if (engine.epoch, engine.batch_idx) == (1, 1) else out

    engine.model.forward = poisoned
    snapshot = Snapshot()
    engine.register_hooks([snapshot])
    with caplog.at_level(logging.ERROR), pytest.raises(FloatingPointError) as info:
        engine.run(max_epoch=3, print_freq=1)
    message = str(info.value)
    shown = "nan" if math.isnan(value) else "inf"
    assert f"epoch 2/3, step 2/{NUM_BATCHES}" in message
    assert f"mse {shown}" in message and f"loss {shown}" in message
    assert any(message in r.getMessage() for r in caplog.records)
    state = engine.model.state_dict()
    assert all(torch.equal(state[k], snapshot.state[k]) for k in state)  # the step was not taken
    saved = load_checkpoint(engine.checkpoint_path)
    assert saved["epoch"] == 1 and all_finite(saved["model"])
    assert os.listdir(tmp_path / "checkpoints") == ["checkpoint_last.pth"]


def test_no_checkpoint_with_non_finite_weights_is_written(tmp_path):
    engine = make_toy_engine(tmp_path)

    class PoisonLastStep(Hook):
        def after_step(self, terms):
            if engine.epoch == 1 and engine.batch_idx == NUM_BATCHES - 1:
                with torch.no_grad():
                    engine.model.net[1].bias[0] = float("inf")

    engine.register_hooks([PoisonLastStep()])
    with pytest.raises(FloatingPointError, match=r"net\.1\.bias") as info:
        engine.run(max_epoch=3, print_freq=1)
    assert "epoch 2" in str(info.value) and engine.checkpoint_path in str(info.value)
    saved = load_checkpoint(engine.checkpoint_path)
    assert saved["epoch"] == 1 and all_finite(saved["model"])
    assert os.listdir(tmp_path / "checkpoints") == ["checkpoint_last.pth"]


# -- 5. orphan temporary files -------------------------------------------------------------------


def test_orphan_temporary_files_are_removed_at_the_next_start(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    orphans = [checkpoints / ".tmp-k2j3x9ab.pth", tmp_path / "metrics.json.tmp",
               tmp_path / ".tmp-metrics.json.1a2b3c"]
    kept = [tmp_path / "notes.tmp", tmp_path / "my.tmp-file.txt", checkpoints / "best.pth"]
    for path in orphans + kept:
        path.write_bytes(b"half a file")
    with caplog.at_level(logging.INFO):
        make_toy_engine(tmp_path).run(max_epoch=1, print_freq=1)
    assert not any(path.exists() for path in orphans)
    assert all(path.read_bytes() == b"half a file" for path in kept)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert "orphan" in line and all(str(path) in line for path in orphans)
