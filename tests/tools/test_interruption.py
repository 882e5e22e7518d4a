"""SIGINT / SIGTERM in the middle of an epoch: the run stops at the end of the step with a checkpoint
of that step, and ``--resume`` finishes it bit-identical (losses, metrics, weights) to an
uninterrupted run, for PCB, PCB+SAM and AVSL; a second signal during the checkpoint's write loses
nothing."""

import json
import os
import signal

import pytest
import torch

from reid.cli import train as train_tool
from reid.cli.main import main as reid_main
from reid.engine import checkpoint as checkpoint_module
from reid.engine.base import TrainingInterrupted
from tests.conftest import tiny_overrides
from tests.tools.test_reproducible_runs import ARMS, CONFIGS

EPOCH, STEP = 1, 2  # the second epoch (0-based 1), after its second step (of six)


def arm_args(arm, root, out):
    config, extra = ARMS[arm]
    return ["--config", os.path.join(CONFIGS, config), "--no-progress", *tiny_overrides(root, out, epochs=3), *extra,
            "NUM_THREADS", "2", "SEED", "3"]


def signal_at(engine_class, signum, epoch=EPOCH, step=STEP):
    """Patches ``forward_backward`` to send ``signum`` to this process during the given step (the
    step completes: the handler only records the signal)."""
    original = engine_class.forward_backward

    def sending(self, data):
        if self.epoch == epoch and self.batch_idx == step - 1:
            os.kill(os.getpid(), signum)
        return original(self, data)

    return sending


def outcome(out):
    metrics = json.loads((out / "metrics.json").read_text())
    weights = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    return metrics, weights


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_signal_mid_epoch_then_resume_equals_an_uninterrupted_run(arm, tiny_data_root, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    try:
        train_tool.main(arm_args(arm, tiny_data_root, tmp_path / "full"))
        reference, reference_weights = outcome(tmp_path / "full")

        out = tmp_path / "stopped"
        signum = signal.SIGTERM if arm != "pcb" else signal.SIGINT
        with monkeypatch.context() as patch:
            klass = _engine_class(arm)
            patch.setattr(klass, "forward_backward", signal_at(klass, signum))
            with pytest.raises(TrainingInterrupted) as stopped:
                train_tool.main(arm_args(arm, tiny_data_root, out))
        assert stopped.value.signum == signum
        assert f"at epoch {EPOCH + 1}/3, step {STEP}/" in str(stopped.value)
        saved = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)
        assert saved["epoch"] == EPOCH and saved["step"] == STEP and len(saved["history"]) == EPOCH
        assert not (out / "metrics.json").exists()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

        train_tool.main([*arm_args(arm, tiny_data_root, out), "--resume"])
        resumed, resumed_weights = outcome(out)
    finally:
        torch.set_num_threads(threads)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    for key in ("rank1", "mAP", "mINP"):
        assert resumed[key] == reference[key], key
    for name in reference_weights:
        assert torch.equal(resumed_weights[name], reference_weights[name]), name


def _engine_class(arm):
    from reid.engine.avsl import AVSLEngine
    from reid.engine.pcb import PCBEngine
    from reid.engine.sam import SAMEngine

    return {"pcb": PCBEngine, "pcb_sam": SAMEngine, "avsl": AVSLEngine}[arm]


def test_a_second_signal_during_the_checkpoint_write_loses_nothing(tiny_data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = checkpoint_module.save_checkpoint
    writes = []

    def interrupted_write(state, path):  # Ctrl-C again while the step's checkpoint is written
        if state.get("step"):
            os.kill(os.getpid(), signal.SIGINT)
        writes.append(state.get("step"))
        save(state, path)

    from reid.engine.pcb import PCBEngine

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", interrupted_write)
    monkeypatch.setattr(PCBEngine, "forward_backward", signal_at(PCBEngine, signal.SIGTERM))
    status = reid_main(["train", *arm_args("pcb", tiny_data_root, out)])
    assert status == 128 + signal.SIGTERM  # the first signal decides; the second was absorbed
    assert writes[-1] == STEP
    saved = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)
    assert saved["step"] == STEP and saved["epoch"] == EPOCH
    assert not [name for name in os.listdir(out / "checkpoints") if name.startswith(".tmp-")]


def test_a_signal_between_epochs_stops_with_the_epochs_checkpoint(tiny_data_root, tmp_path, monkeypatch):
    from reid.engine.hooks import CheckpointHook

    out = tmp_path / "run"
    after_epoch = CheckpointHook.after_epoch

    def signal_after_first_epoch(self, record):
        after_epoch(self, record)
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(CheckpointHook, "after_epoch", signal_after_first_epoch)
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM after epoch 1: the checkpoint"):
        train_tool.main([*arm_args("pcb", tiny_data_root, out), "TRAIN.CHECKPOINT_FREQ", "2"])
    saved = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)
    assert saved["epoch"] == 1 and "step" not in saved  # written although the period skipped it


def test_epoch_means_divide_by_the_steps_that_ran(tiny_data_root, tmp_path, monkeypatch):
    # torchreid's identity sampler may yield fewer batches than its len() says: an epoch's mean of
    # a term that is 3.0 at every step must be 3.0, not 3.0 times (steps run / len)
    from reid.engine.pcb import PCBEngine

    steps, lengths = [], []

    def constant(self, data):
        steps.append(self.batch_idx)
        lengths.append(self.num_batches)
        return {"loss": 3.0}

    monkeypatch.setattr(PCBEngine, "forward_backward", constant)
    metrics = train_tool.main([*arm_args("pcb", tiny_data_root, tmp_path / "run"), "OPTIM.MAX_EPOCH", "1"])
    (epoch,) = metrics["history"]
    assert len(steps) < lengths[0]  # the case: on the tiny set the sampler yields fewer than its len()
    assert epoch["loss"] == 3.0
