"""``reid train`` under faults: a failed evaluation, an existing run in OUTPUT_DIR, a NaN loss
(tiny synthetic set, CPU)."""

import json
import os
import re

import pytest
import torch

from reid.cli import train as train_tool
from reid.engine import evaluation as evaluation_module
from reid.engine.checkpoint import RUN_OUTPUTS, prepare_output_dir, save_checkpoint
from reid.io import LOCK_NAME
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


def previous_run(out):
    """The files of a finished 4-epoch run."""
    save_checkpoint({"model": {}, "epoch": 4}, str(out / "checkpoints" / "checkpoint_last.pth"))
    (out / "metrics.json").write_text('{"epoch": 4}')
    (out / "cmc.png").write_bytes(b"\x89PNG old")
    (out / "train.log").write_text("old log\n")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")


def tree(folder):
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(folder) for f in files
    }


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    previous_run(out)
    before = tree(out)
    with pytest.raises(SystemExit) as info:  # refused before the data is read (there is none)
        train_tool.main(train_args(tmp_path / "no-data", out))
    message = str(info.value.code)
    assert str(out) in message and "--resume" in message and "--overwrite" in message
    assert "\n" not in message
    after = tree(out)
    assert after.pop(LOCK_NAME) == b""  # the folder's lock file, released (it names no holder)
    assert after == before  # untouched, the log included


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--resume.*--overwrite|--overwrite.*--resume"):
        train_tool.main(train_args(tmp_path / "no-data", tmp_path / "run", 1, "--resume", "--overwrite"))


def test_overwrite_moves_the_previous_run_aside(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    previous_run(out)
    before = tree(out)
    metrics = train_tool.main(train_args(tiny_data_root, out, 1, "--overwrite"))
    (aside,) = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert tree(aside) == before  # the previous run, whole
    assert json.loads((out / "metrics.json").read_text()) == metrics and metrics["epoch"] == 1
    assert load(out / "checkpoints" / "checkpoint_last.pth")["epoch"] == 1
    assert not (out / "tensorboard" / "events.out.tfevents.old").exists()
    log = (out / "train.log").read_text()
    assert "old log" not in log and aside.name in log
    assert (out / "cmc.png").read_bytes() != b"\x89PNG old"


COMMAND_LOGS = re.compile(
    r'(?:setup_logging\(cfg\.OUTPUT_DIR|engine_with_weights\(cfg, args\.weights), "(\w+)"'
)


def test_run_outputs_name_every_output_of_the_commands():
    """Each command's log (the names given to setup_logging / engine_with_weights in reid/cli) and
    each fixed output name is one of RUN_OUTPUTS, so --overwrite moves it aside."""
    from reid.cli import segment
    from reid.engine.hooks import CMC_PLOT_NAME, METRICS_NAME
    from reid.explain.dump import EXPLANATIONS_DIR
    from reid.explain.quality import RESULT_FILE

    cli = os.path.dirname(train_tool.__file__)
    logs = {
        name for module in os.listdir(cli) if module.endswith(".py")
        for name in COMMAND_LOGS.findall(open(os.path.join(cli, module), encoding="utf-8").read())
    }
    assert logs == {"train", "test", "explain", "eval_explanations", "segment", "export"}
    assert {f"{name}.log" for name in logs} <= set(RUN_OUTPUTS)
    assert '"segmentation")' in open(segment.__file__, encoding="utf-8").read()
    fixed = {"checkpoints", "tensorboard", METRICS_NAME, CMC_PLOT_NAME, EXPLANATIONS_DIR, RESULT_FILE,
             "test_metrics.json", "test_cmc.png", "segmentation", "model.onnx"}
    assert fixed <= set(RUN_OUTPUTS)


def test_overwrite_moves_every_command_output_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    previous_run(out)
    for name in RUN_OUTPUTS:
        if not (out / name).exists():
            if "." in name:
                (out / name).write_text(f"old {name}")
            else:
                (out / name).mkdir()
                (out / name / "old.txt").write_text(f"old {name}")
    (out / "notes.txt").write_text("mine")
    (out / "replaced-20200101-000000").mkdir()
    moved = tree(out)
    del moved["notes.txt"]

    line = prepare_output_dir(str(out), resume=False, overwrite=True)
    (aside,) = [p for p in out.iterdir() if p.name.startswith("replaced-") and p.name != "replaced-20200101-000000"]
    assert tree(aside) == moved  # every output of every command, whole
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", "replaced-20200101-000000", aside.name])
    assert all(name in line for name in RUN_OUTPUTS) and str(aside) in line


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data_root, tmp_path):
    """OPTIM.LR 1e6 with SGD: the loss explodes and becomes NaN."""
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"epoch \d/3, step \d+/\d+: id [^,]+, triplet") as info:
        # a rate so large that the loss itself turns NaN (not only the BatchNorm statistics)
        train_tool.main(train_args(tiny_data_root, out, 3, "OPTIM.NAME", "sgd", "OPTIM.LR", "1e6"))
    epoch = int(re.search(r"epoch (\d)/3", str(info.value)).group(1))
    if epoch > 1:  # a checkpoint of the last good epoch exists
        checkpoint = load(out / "checkpoints" / "checkpoint_last.pth")
        assert checkpoint["epoch"] == epoch - 1
        assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists()
    assert "not finite" in (out / "train.log").read_text()
