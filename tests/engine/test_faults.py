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
from tests.engine.toy_engine import NUM_BATCHES, make_toy_engine


def all_finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


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
