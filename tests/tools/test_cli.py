"""The packaged CLI: ``reid --help``, every subcommand's ``--help``, errors, and the tools/ shims."""

import os
import subprocess
import sys

import pytest

from reid.cli.main import COMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_reid_help_lists_every_command():
    done = run("-m", "reid", "--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
    assert "Cython" not in done.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert f"usage: reid {command}" in capsys.readouterr().out


def test_unknown_command_and_no_command_are_errors(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert main([]) == 2


def test_check_data_exit_status_passes_through(tmp_path):
    done = run("-m", "reid", "check-data", "--config", "configs/synthetic_pcb.yaml",
               "DATA.SOURCES", "[dukemtmc_reid]", "DATA.ROOT", str(tmp_path))
    assert done.returncode == 1
    assert "0 of 1 dataset(s) OK" in done.stdout


def test_config_errors_are_one_line():
    done = run("-m", "reid", "train", "--config", "configs/synthetic_avsl.yaml", "SAM.ENABLED", "True")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "config error: SAM.ENABLED needs MODEL.NAME pcb or torchreid, got 'avsl'"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("tool", ["train", "test", "explain", "eval_explanations", "check_data", "export"])
def test_tools_shims_run_the_same_command(tool):
    done = run(os.path.join("tools", f"{tool}.py"), "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: reid {tool.replace('_', '-')}" in done.stdout


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"weights"}))  # `reid weights` reads no config
def test_every_subcommand_needs_a_config(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command])
    assert stop.value.code == 2
    assert "--config" in capsys.readouterr().err


# -- user errors: one line on stderr and exit status 2; --debug shows the traceback ----------------


def test_user_errors_are_one_line_with_status_2_and_debug_shows_the_traceback(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    argv = ["train", "--config", "configs/synthetic_pcb_scratch.yaml", "DATA.ROOT", str(not_a_folder),
            "OUTPUT_DIR", str(tmp_path / "out")]
    done = run("-m", "reid", *argv)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: DATA.ROOT is not a folder: {not_a_folder}"
    assert "Traceback" not in done.stderr
    # the traceback is in the run's log
    assert "Traceback" in (tmp_path / "out" / "train.log").read_text()
    debug = run("-m", "reid", *argv, "--debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "NotADirectoryError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == f"error: DATA.ROOT is not a folder: {not_a_folder}"


@pytest.mark.parametrize(
    "argv, last_line",
    [
        (["SAMPLER.NUM_INSTANCES", "0"], "config error: SAMPLER.NUM_INSTANCES must be an integer >= 1, got 0"),
        (["DATA.SOURCES", "[dukemtmc_reid]"], "Expected layout:"),  # a dataset error, with its layout
    ],
)
def test_config_and_data_errors_in_process(argv, last_line, tmp_path, capsys):
    status = main(["train", "--config", "configs/synthetic_pcb_scratch.yaml", "DATA.ROOT", str(tmp_path / "data"),
                   "OUTPUT_DIR", str(tmp_path / "out"), *argv])
    assert status == 2
    err = capsys.readouterr().err
    assert last_line in err and "Traceback" not in err
    if "DATA.SOURCES" in argv:
        assert "\ndata error: DukeMTMC-reID: not found: " in err  # after the run's log lines


def test_missing_weights_are_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    status = main(["test", "--config", "configs/synthetic_pcb.yaml", "--weights", str(missing),
                   "OUTPUT_DIR", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: checkpoint not found: {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_accepts_debug(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--debug" in capsys.readouterr().out


def test_tools_shims_report_user_errors_and_pass_the_status_through(tmp_path):
    done = run(os.path.join("tools", "train.py"), "--config", "configs/synthetic_avsl.yaml", "SAM.ENABLED", "True")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "config error: SAM.ENABLED needs MODEL.NAME pcb or torchreid, got 'avsl'"
    done = run(os.path.join("tools", "check_data.py"), "--config", "configs/synthetic_pcb.yaml",
               "DATA.SOURCES", "[dukemtmc_reid]", "DATA.ROOT", str(tmp_path))
    assert done.returncode == 1  # a check result, not a usage error
    assert "0 of 1 dataset(s) OK" in done.stdout


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 4)
    done = run("-m", "reid", "test", "--config", "configs/synthetic_pcb.yaml", "--weights", str(junk),
               "OUTPUT_DIR", str(tmp_path / "out"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("weights error: ") and "junk.pth" in last and "is not a checkpoint" in last
    assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr


def test_a_device_this_machine_lacks_is_one_line(monkeypatch, capsys, tmp_path):
    import torch

    from reid.cli.main import run_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = run_command("train", ["--config", os.path.join(ROOT, "configs", "synthetic_pcb_scratch.yaml"), "DEVICE", "cuda",
                                   "OUTPUT_DIR", str(tmp_path / "out"), "DATA.ROOT", str(tmp_path / "data")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "config error: DEVICE is 'cuda' but CUDA is not available on this machine"
    assert "Traceback" not in "\n".join(err)


def test_a_sam_layer_the_model_lacks_is_one_line(tiny_data_root, tmp_path, capsys):
    from reid.cli.main import run_command
    from tests.conftest import tiny_overrides

    status = run_command("train", [
        "--config", os.path.join(ROOT, "configs", "synthetic_pcb_sam.yaml"), "--no-progress",
        *tiny_overrides(tiny_data_root, tmp_path / "out"), "MODEL.PADDING_MODE", "zeros", "SAM.LAYER", "layer9",
    ])
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("config error: SAM.LAYER 'layer9': ") and "layer9" in last[len("config error: SAM.LAYER"):]


def test_damaged_imagenet_weights_are_one_line(tiny_data_root, tmp_path, capsys):
    from reid.cli.main import run_command
    from tests.conftest import tiny_overrides

    junk = tmp_path / "resnet18-junk.pth"
    junk.write_bytes(bytes(range(256)) * 4)
    status = run_command("train", [
        "--config", os.path.join(ROOT, "configs", "synthetic_pcb.yaml"), "--no-progress",
        *tiny_overrides(tiny_data_root, tmp_path / "out"), "MODEL.PRETRAINED", "True",
        "MODEL.PRETRAINED_PATH", str(junk),
    ])
    assert status == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("weights error: ") and str(junk) in last and "cannot be read as a state file" in last
    assert "Traceback" not in err and "weights_only" not in err


def test_options_anywhere_and_list_options_stop_at_the_next_key():
    import argparse

    from reid.cli.common import parse_with_overrides

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("opts", nargs="*")
    args = parse_with_overrides(parser, ["--seeds", "0", "1", "OPTIM.MAX_EPOCH", "1", "--lr", "-0.5",
                                         "OPTIM.STEPSIZE", "[]", "--quiet", "SEED", "4"])
    assert args.seeds == [0, 1] and args.lr == -0.5 and args.quiet
    assert args.opts == ["OPTIM.MAX_EPOCH", "1", "OPTIM.STEPSIZE", "[]", "SEED", "4"]
    args = parse_with_overrides(parser, ["SEED", "1", "--seeds", "3", "--quiet"])
    assert args.seeds == [3] and args.opts == ["SEED", "1"]
