"""A run's config against a checkpoint's (the config stored in it): ``--resume`` refuses a change of
the model or the optimisation and logs the safe changes; the commands that load weights refuse a
config whose model differs from the checkpoint's, naming the keys, before any state-dict error."""

import json
import os
import shutil

import pytest
import torch

from reid.cli import export as export_tool
from reid.cli import test as test_tool
from reid.cli import train as train_tool
from reid.config import ConfigError, config_differences, config_to_dict, load_config
from tests.conftest import tiny_overrides

CONFIG = "configs/synthetic_pcb.yaml"  # reflect padding, 4 stripes (2 with tiny_overrides)


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """A finished one-epoch run of the tiny set (its OUTPUT_DIR)."""
    out = tmp_path_factory.mktemp("ckpt-run")
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    return out


def copy_run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def saved_config(*opts):
    return config_to_dict(load_config(CONFIG, list(opts)))


# -- the classification (reid/config/__init__.py) ---------------------------------------------------------


def test_differences_split_into_refused_and_allowed():
    saved = saved_config("OPTIM.LR", "0.001")
    cfg = load_config(CONFIG, ["OPTIM.LR", "0.5", "MODEL.PADDING_MODE", "reflect", "OPTIM.MAX_EPOCH", "20",
                               "TEST.RANKS", "[1, 3]", "TRAIN.PRINT_FREQ", "3", "DATA.WORKERS", "2",
                               "DEVICE", "cpu", "NUM_THREADS", "1", "TRAIN.CHECKPOINT_FREQ", "2"])
    refused, allowed = config_differences(saved, cfg)
    assert [str(d) for d in refused] == ["MODEL.PADDING_MODE 'zeros' -> 'reflect'", "OPTIM.LR 0.001 -> 0.5"]
    assert sorted(d.key for d in allowed) == [
        "DATA.WORKERS", "DEVICE", "NUM_THREADS", "OPTIM.MAX_EPOCH", "TEST.RANKS", "TRAIN.CHECKPOINT_FREQ",
        "TRAIN.PRINT_FREQ",
    ]
    assert config_differences(saved, load_config(CONFIG, ["OPTIM.LR", "0.001"])) == ([], [])


def test_every_key_that_shapes_the_model_or_the_optimisation_is_refused():
    saved = saved_config()
    for opts in (["MODEL.BACKBONE", "resnet34"], ["MODEL.NUM_STRIPES", "2"], ["SAMPLER.BATCH_SIZE_TRAIN", "16"],
                 ["DATA.TRANSFORMS", "[]"], ["OPTIM.STEPSIZE", "[3]"], ["LOSS.TRIPLET_MARGIN", "0.5"],
                 ["SAM.ENABLED", "True"], ["SEED", "1"], ["DATA.HEIGHT", "128"], ["TRAIN.AMP", "bf16"]):
        refused, _ = config_differences(saved, load_config(CONFIG, opts))
        assert [d.key for d in refused] == [opts[0]], opts


def test_max_epoch_is_refused_with_the_cosine_schedule():
    saved = saved_config("OPTIM.SCHEDULER", "cosine")
    refused, allowed = config_differences(saved, load_config(CONFIG, ["OPTIM.SCHEDULER", "cosine", "OPTIM.MAX_EPOCH", "9"]))
    assert [d.key for d in refused] == ["OPTIM.MAX_EPOCH"] and "cosine" in str(refused[0]) and not allowed


def test_keys_missing_from_either_config_are_allowed_and_named():
    saved = saved_config()
    del saved["TRAIN"]["CHANNELS_LAST"]
    saved["TRAIN"]["OLD_KEY"] = 3
    refused, allowed = config_differences(saved, load_config(CONFIG, []))
    assert not refused
    assert sorted(str(d) for d in allowed) == [
        "TRAIN.CHANNELS_LAST (not in the checkpoint's config) -> False",
        "TRAIN.OLD_KEY 3 -> (no longer a config key)",
    ]


# -- reid train --resume ---------------------------------------------------------------------------


def test_resume_refuses_model_and_optimisation_changes(trained, tiny_data_root, tmp_path):
    out = copy_run(trained, tmp_path)
    before = (out / "checkpoints" / "checkpoint_last.pth").read_bytes()
    argv = ["--config", CONFIG, "--resume", "--no-progress", *tiny_overrides(tiny_data_root, out, 2),
            "OPTIM.LR", "0.5", "MODEL.PADDING_MODE", "reflect"]
    with pytest.raises(ConfigError) as info:
        train_tool.main(argv)
    message = str(info.value)
    assert "--resume" in message and str(out / "checkpoints" / "checkpoint_last.pth") in message
    assert "MODEL.PADDING_MODE 'zeros' -> 'reflect', OPTIM.LR 0.001 -> 0.5" in message
    assert "OPTIM.MAX_EPOCH" not in message  # allowed: continuing longer is the point of resume
    assert (out / "checkpoints" / "checkpoint_last.pth").read_bytes() == before  # nothing ran


def test_resume_logs_the_allowed_changes_and_continues(trained, tiny_data_root, tmp_path):
    out = copy_run(trained, tmp_path)
    argv = ["--config", CONFIG, "--resume", "--no-progress", *tiny_overrides(tiny_data_root, out, 2),
            "TRAIN.PRINT_FREQ", "5", "TEST.RANKS", "[1, 2]"]
    metrics = train_tool.main(argv)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert "rank2" in metrics and metrics["config"]["OPTIM"]["MAX_EPOCH"] == 2
    # the log of the run (setup_logging replaces the root handlers, so read the file)
    lines = [line for line in (out / "train.log").read_text().splitlines() if "differs from the checkpoint" in line]
    assert len(lines) == 1
    for change in ("OPTIM.MAX_EPOCH 1 -> 2", "TRAIN.PRINT_FREQ 1 -> 5", "TEST.RANKS [1, 5, 10, 20] -> [1, 2]"):
        assert change in lines[0]


def test_resume_reads_the_checkpoint_once(trained, tiny_data_root, tmp_path, monkeypatch):
    """The config check and the restore share one read of the checkpoint (reid/cli/common.py
    check_resume_config passes it to ReidEngine.run), and the run continues from it."""
    out = copy_run(trained, tmp_path)
    path = out / "checkpoints" / "checkpoint_last.pth"
    reads = []
    load = torch.load

    def counting_load(source, *args, **kwargs):
        if isinstance(source, (str, os.PathLike)) and os.fspath(source) == os.fspath(path):
            reads.append(source)
        return load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    metrics = train_tool.main(["--config", CONFIG, "--resume", "--no-progress", *tiny_overrides(tiny_data_root, out, 2)])
    assert len(reads) == 1
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


# -- reid test / export with --weights --------------------------------------------------------------


def test_weights_refuse_a_different_model_naming_the_keys(trained, tiny_data_root, tmp_path):
    ckpt = trained / "checkpoints" / "checkpoint_last.pth"
    base = ["--config", CONFIG, "--weights", str(ckpt), "--no-progress", *tiny_overrides(tiny_data_root, tmp_path)]
    with pytest.raises(ConfigError, match=r"MODEL.PADDING_MODE 'zeros' -> 'reflect'"):
        test_tool.main([*base, "MODEL.PADDING_MODE", "reflect"])
    # another stripe count and backbone: named, instead of torch's "Missing key(s) in state_dict"
    with pytest.raises(ConfigError, match=r"MODEL.BACKBONE 'resnet18' -> 'resnet34', MODEL.NUM_STRIPES 2 -> 1"):
        test_tool.main([*base, "MODEL.NUM_STRIPES", "1", "MODEL.BACKBONE", "resnet34"])
    with pytest.raises(ConfigError, match=r"DATA.HEIGHT 64 -> 128"):
        test_tool.main([*base, "DATA.HEIGHT", "128"])
    assert not (tmp_path / "test_metrics.json").exists()
    cfg = load_config(CONFIG, [*tiny_overrides(tiny_data_root, tmp_path), "MODEL.PADDING_MODE", "reflect"])
    with pytest.raises(ConfigError, match=r"MODEL.PADDING_MODE 'zeros' -> 'reflect'"):
        export_tool.load_model(cfg, str(ckpt))


def test_weights_accept_evaluation_changes_and_plain_state_dicts(trained, tiny_data_root, tmp_path):
    ckpt = trained / "checkpoints" / "checkpoint_last.pth"
    first, second = tmp_path / "first", tmp_path / "second"
    tested = test_tool.main(["--config", CONFIG, "--weights", str(ckpt), "--no-progress",
                             *tiny_overrides(tiny_data_root, first), "MODEL.TEST_FEATURE", "reduced",
                             "TEST.RANKS", "[1, 3]"])
    assert "rank3" in tested
    assert "MODEL.TEST_FEATURE 'pooled' -> 'reduced'" in (first / "test.log").read_text()
    plain = tmp_path / "plain.pth"
    torch.save(torch.load(ckpt, weights_only=True)["model"], plain)
    again = test_tool.main(["--config", CONFIG, "--weights", str(plain), "--no-progress",
                            *tiny_overrides(tiny_data_root, second)])
    assert "holds no config" in (second / "test.log").read_text()
    reference = json.loads((trained / "metrics.json").read_text())
    assert again["mAP"] == pytest.approx(reference["mAP"], abs=1e-9)


def test_a_plain_state_dict_that_does_not_fit_is_one_line(trained, tiny_data_root, tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(torch.load(trained / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"], plain)
    with pytest.raises(SystemExit, match=r"plain.pth \(MODEL.NAME pcb, MODEL.BACKBONE resnet18\): the weights do "
                                         r"not fit PCB: Error\(s\) in loading state_dict for PCB: \| Unexpected key"):
        test_tool.main(["--config", CONFIG, "--weights", str(plain), "--no-progress",
                        *tiny_overrides(tiny_data_root, tmp_path), "MODEL.NUM_STRIPES", "1"])


# -- keys added since the checkpoint was written -----------------------------------------------------


def test_resume_of_a_pcb_sam_checkpoint_from_before_sam_objective_keeps_the_printed_form(tmp_path):
    """Before SAM.OBJECTIVE existed, PCB+SAM trained with eq. 2 as printed: resuming such a checkpoint
    under the new default (erase) would switch the objective in mid-run, so it is refused, and
    resuming with SAM.OBJECTIVE printed is allowed."""
    import logging

    from reid.cli.common import check_resume_config, with_values_before_added_keys

    opts = ["OUTPUT_DIR", str(tmp_path), "SAM.ENABLED", "True"]
    saved = config_to_dict(load_config(CONFIG, opts))
    del saved["SAM"]["OBJECTIVE"], saved["SAM"]["START_EPOCH"]
    (tmp_path / "checkpoints").mkdir()
    torch.save({"config": saved}, tmp_path / "checkpoints" / "checkpoint_last.pth")
    log = logging.getLogger("test")
    with pytest.raises(ConfigError, match=r"SAM.OBJECTIVE 'printed' -> 'erase'"):
        check_resume_config(load_config(CONFIG, opts), log)
    check_resume_config(load_config(CONFIG, [*opts, "SAM.OBJECTIVE", "printed"]), log)
    assert "OBJECTIVE" not in saved["SAM"]  # the checkpoint's dict is not modified
    # PCB checkpoints (SAM off) and checkpoints that record the key are compared as they are
    pcb = config_to_dict(load_config(CONFIG, []))
    del pcb["SAM"]["OBJECTIVE"]
    assert with_values_before_added_keys(pcb) is pcb
    recorded = config_to_dict(load_config(CONFIG, ["SAM.ENABLED", "True"]))
    assert with_values_before_added_keys(recorded) is recorded
