"""``reid train`` under faults (tiny synthetic set, CPU)."""

import os
import re

import pytest
import torch

from reid.cli import train as train_tool
from reid.engine import evaluation as evaluation_module
from tests.conftest import tiny_overrides

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


def train_args(root, out, epochs=1, *extra):
    return ["--config", CONFIG, "--no-progress", *tiny_overrides(root, out, epochs), *extra]


def load(path):
    return torch.load(path, weights_only=True)


def test_failed_evaluation_keeps_the_checkpoint_and_resume_matches_an_uninterrupted_run(
    tiny_data_root, tmp_path, monkeypatch
):
    """The evaluation after epoch 1 of 2 fails (an unreadable gallery image): the checkpoint of
    epoch 1 is there; --resume evaluates epoch 1, trains epoch 2 and ends as an uninterrupted run."""
    schedule = ["TEST.EVAL_FREQ", "1"]
    reference = train_tool.main(train_args(tiny_data_root, tmp_path / "reference", 2, *schedule))

    out = tmp_path / "run"
    extract = evaluation_module.extract_dataset_features

    def unreadable_gallery(model, loader, device, desc="features", *args, **kwargs):
        if desc.endswith("gallery"):
            raise OSError("cannot read image bounding_box_test/0001_c1s1_000001.jpg")
        return extract(model, loader, device, desc, *args, **kwargs)

    monkeypatch.setattr(evaluation_module, "extract_dataset_features", unreadable_gallery)
    with pytest.raises(OSError, match="cannot read image"):
        train_tool.main(train_args(tiny_data_root, out, 2, *schedule))
    checkpoint = load(out / "checkpoints" / "checkpoint_last.pth")
    assert checkpoint["epoch"] == 1 and "test" not in checkpoint["history"][-1]
    log = (out / "train.log").read_text()
    (line,) = [line for line in log.splitlines() if " ERROR " in line]
    assert "evaluation after epoch 1" in line and "synthetic" in line and "cannot read image" in line
    assert "--resume" in line

    monkeypatch.setattr(evaluation_module, "extract_dataset_features", extract)
    resumed = train_tool.main(train_args(tiny_data_root, out, 2, *schedule, "--resume"))
    assert resumed["history"] == reference["history"]  # losses and both evaluations
    for key in ("rank1", "mAP", "mINP"):
        assert resumed[key] == reference[key], key
    a = load(tmp_path / "reference" / "checkpoints" / "checkpoint_last.pth")
    b = load(out / "checkpoints" / "checkpoint_last.pth")
    assert a["history"] == b["history"] == reference["history"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data_root, tmp_path):
    """OPTIM.LR 100 with SGD: the loss explodes in epoch 2 and becomes NaN."""
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"epoch \d/3, step \d+/\d+: id [^,]+, triplet") as info:
        train_tool.main(train_args(tiny_data_root, out, 3, "OPTIM.NAME", "sgd", "OPTIM.LR", "100"))
    epoch = int(re.search(r"epoch (\d)/3", str(info.value)).group(1))
    if epoch > 1:  # (epoch 2 on this project's machine)
        checkpoint = load(out / "checkpoints" / "checkpoint_last.pth")
        assert checkpoint["epoch"] == epoch - 1
        assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists()
    assert "not finite" in (out / "train.log").read_text()
