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
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "config error: SAM.ENABLED needs MODEL.NAME pcb, got 'avsl'"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("tool", ["train", "test", "explain", "eval_explanations", "check_data", "export"])
def test_tools_shims_run_the_same_command(tool):
    done = run(os.path.join("tools", f"{tool}.py"), "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: reid {tool.replace('_', '-')}" in done.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_needs_a_config(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command])
    assert stop.value.code == 2
    assert "--config" in capsys.readouterr().err
