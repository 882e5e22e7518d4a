"""Faults from outside the program, driven through the real commands as subprocesses: the operating
system refusing a write, a signal mid-epoch, a second run in the same OUTPUT_DIR, a training set too
small for its batch. Each ends in one line on stderr and a documented exit status
(docs/training.md, "Faults from outside")."""

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from reid.cli.main import OS_ERROR, USAGE_ERROR, os_error_message
from reid.io import LOCK_NAME, claim_folder, release_folder
from tests.conftest import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic_pcb.yaml")


def reid(*args, preexec_fn=None, code=None):
    """Runs ``python -m reid ARGS`` (or ``python -c CODE ARGS``) in the repository; returns the
    completed process."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "reid", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)


def last_line(done):
    return done.stderr.strip().splitlines()[-1]


def train_args(root, out, *extra, epochs=1):
    return ["train", "--config", CONFIG, "--no-progress", *tiny_overrides(root, out, epochs), *extra]


# -- the operating system refuses a write ----------------------------------------------------------


def test_output_dir_that_is_a_file_is_one_line(tiny_data_root, tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    for command in (train_args(tiny_data_root, path),
                    ["test", "--config", CONFIG, "--weights", str(path), *tiny_overrides(tiny_data_root, path)]):
        done = reid(*command)
        assert done.returncode == OS_ERROR, done.stderr
        assert last_line(done) == (
            f"os error: cannot write {path}: the path exists as a file where a folder is needed; remove that file "
            "or choose another OUTPUT_DIR (the previous files are left as they were)"
        )
        assert "Traceback" not in done.stderr


def _file_size_limit(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_too_large_while_writing_the_checkpoint_keeps_the_previous_one(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    assert reid(*train_args(tiny_data_root, out)).returncode == 0
    checkpoint = out / "checkpoints" / "checkpoint_last.pth"
    before = checkpoint.read_bytes()
    # the checkpoint is far larger than 1 MB; the log and the TensorBoard events are not
    done = reid(*train_args(tiny_data_root, out, "--resume", epochs=2), preexec_fn=_file_size_limit(2**20))
    assert done.returncode == OS_ERROR, done.stderr
    assert last_line(done).startswith(f"os error: cannot write {checkpoint}: file too large for the file system or "
                                      "the process's file-size limit (ulimit -f); raise the limit")
    assert checkpoint.read_bytes() == before  # untouched, and still a checkpoint of epoch 1
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert not [name for name in os.listdir(checkpoint.parent) if name.startswith(".tmp-")]
    assert "Traceback" in (out / "train.log").read_text()  # the traceback goes to the log


@pytest.mark.parametrize("code, what", [
    (errno.ENOSPC, "no space left on the device; free some space, or set OUTPUT_DIR on another disk"),
    (errno.EACCES, "permission denied; choose a folder you can write (OUTPUT_DIR), or fix its permissions"),
    (errno.EROFS, "read-only file system; set OUTPUT_DIR on a writable file system"),
    (errno.ENOTDIR, "a part of the path is a file, not a folder; remove that file or choose another OUTPUT_DIR"),
])
def test_each_refusal_of_the_system_says_what_to_do(code, what):
    # root ignores permissions and no test may fill a disk: the other refusals are checked on their errno
    message = os_error_message(OSError(code, os.strerror(code), "/runs/x/metrics.json"))
    assert message == f"os error: cannot write /runs/x/metrics.json: {what} (the previous files are left as they were)"
    assert os_error_message(OSError(errno.EIO, "I/O error")) is None  # anything else keeps its traceback
    assert os_error_message(ValueError("x")) is None


class _FullDisk:
    """A file whose write fails as a full disk's does: an OSError without a file name."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_during_the_checkpoint_write_names_the_checkpoint(tiny_data_root, tmp_path, monkeypatch, capsys):
    import contextlib

    import reid.engine.checkpoint as checkpoint_module
    from reid.cli.main import main

    atomic_write = checkpoint_module.atomic_write

    @contextlib.contextmanager
    def full_disk(path, binary=False):
        with atomic_write(path, binary) as handle:
            yield _FullDisk(handle)

    monkeypatch.setattr(checkpoint_module, "atomic_write", full_disk)
    out = tmp_path / "run"
    assert main(train_args(tiny_data_root, out)) == OS_ERROR
    checkpoint = out / "checkpoints" / "checkpoint_last.pth"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"os error: cannot write {checkpoint}: no space left on the device; free some space, or set OUTPUT_DIR "
        "on another disk (the previous files are left as they were)"
    )
    assert not checkpoint.exists() and not os.listdir(checkpoint.parent)  # no partial file


# -- a signal mid-epoch ----------------------------------------------------------------------------

SIGNALLING = textwrap.dedent("""
    import os, signal, sys
    from reid.engine.pcb import PCBEngine
    step = PCBEngine.forward_backward
    def forward_backward(self, data):  # the scheduler's SIGTERM arrives during epoch 2, step 2
        if self.epoch == 1 and self.batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, data)
    PCBEngine.forward_backward = forward_backward
    from reid.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_mid_epoch_exits_143_and_resume_finishes(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    done = reid(*train_args(tiny_data_root, out, epochs=2), code=SIGNALLING)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert last_line(done).startswith("interrupted by SIGTERM at epoch 2/2, step 2/")
    assert last_line(done).endswith("continue it with reid train ... --resume")
    saved = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)
    resumed = reid(*train_args(tiny_data_root, out, "--resume", epochs=2))
    assert resumed.returncode == 0, resumed.stderr
    assert "inside epoch 2, after its step 2" in (out / "train.log").read_text()


# -- one run per OUTPUT_DIR ------------------------------------------------------------------------


def test_a_second_command_in_a_running_runs_folder_is_refused(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    assert reid(*train_args(tiny_data_root, out)).returncode == 0
    claim_folder(str(out), "train")  # this test's process plays the running run
    try:
        holder = f"process {os.getpid()}"
        for command in (train_args(tiny_data_root, out, "--overwrite"),
                        ["test", "--config", CONFIG, "--weights", str(out / "checkpoints" / "checkpoint_last.pth"),
                         *tiny_overrides(tiny_data_root, out)]):
            done = reid(*command)
            assert done.returncode == USAGE_ERROR, done.stderr
            line = last_line(done)
            assert line.startswith(f"error: {out} is in use by {holder} on ") and "(reid train, started" in line
            assert line.endswith("wait for it to end or stop it, or choose another OUTPUT_DIR")
        assert os.path.isfile(out / "checkpoints" / "checkpoint_last.pth")  # --overwrite moved nothing
        assert not [name for name in os.listdir(out) if name.startswith("replaced-")]
    finally:
        release_folder(str(out))
    assert (out / LOCK_NAME).read_text() == ""  # released: nothing names a holder
    assert reid(*train_args(tiny_data_root, out, "--overwrite")).returncode == 0


def test_a_dead_runs_lock_is_taken_over_with_a_line_in_the_log(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("process 4000000 on elsewhere (reid train, started 2026-12-01 10:00:00)")
    done = reid(*train_args(tiny_data_root, out))
    assert done.returncode == 0, done.stderr
    assert (f"took over the lock of {out} from process 4000000 on elsewhere (reid train, started 2026-12-01 "
            "10:00:00), which ended without releasing it") in (out / "train.log").read_text()


# -- a training set too small for its batch -------------------------------------------------------


def test_a_training_set_too_small_for_the_batch_is_one_line(tiny_data_root, tmp_path):
    done = reid(*train_args(tiny_data_root, tmp_path / "a", "SAMPLER.BATCH_SIZE_TRAIN", "64"))
    assert done.returncode == USAGE_ERROR, done.stderr
    assert last_line(done) == (
        "config error: the training set has 8 identities, but SAMPLER.BATCH_SIZE_TRAIN 64 / SAMPLER.NUM_INSTANCES 2 "
        "= 32 identities per batch: lower SAMPLER.BATCH_SIZE_TRAIN to at most 16 (a multiple of "
        "SAMPLER.NUM_INSTANCES), or train on more identities"
    )
    done = reid(*train_args(tiny_data_root, tmp_path / "b", "SAMPLER.TRAIN", "RandomSampler",
                            "SAMPLER.BATCH_SIZE_TRAIN", "64"))
    assert done.returncode == USAGE_ERROR, done.stderr
    assert last_line(done).startswith("config error: the training set has 48 images, fewer than "
                                      "SAMPLER.BATCH_SIZE_TRAIN 64: no full batch")


# -- every kind of file the commands write names itself when the system refuses it ----------------


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write(): no file name


def _writers(tmp_path):
    """(what, the file, a call that writes it)."""
    import numpy as np

    from reid.engine.evaluation import ExtractedFeatures, save_features
    from reid.vis.curves import plot_cmc
    from reid.vis.explorer import write_explorer
    from reid.vis.image import save_image

    features = ExtractedFeatures(torch.zeros(2, 4), np.array([0, 1]), np.array([0, 1]), ["a.jpg", "b.jpg"])
    return [
        ("plot", tmp_path / "cmc.png", lambda p: plot_cmc({"x": [0.5, 1.0]}, str(p)),
         ("matplotlib.figure.Figure", "savefig")),
        ("panel", tmp_path / "panel.png", lambda p: save_image(p, np.zeros((4, 4, 3), np.uint8)),
         ("PIL.Image.Image", "save")),
        ("explorer", tmp_path / "index.html", lambda p: write_explorer(p, [], []), ("pathlib.Path", "write_text")),
        ("features", tmp_path / "features.npz", lambda p: save_features(str(p), "t", features, features),
         ("numpy", "savez")),
    ]


@pytest.mark.parametrize("what", ["plot", "panel", "explorer", "features"])
def test_each_written_file_is_named_when_the_disk_is_full(what, tmp_path, monkeypatch):
    import importlib

    (_, path, write, (owner, attribute)), = [w for w in _writers(tmp_path) if w[0] == what]
    module_name, _, class_name = owner.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        target = importlib.import_module(owner)
    monkeypatch.setattr(target, attribute, _full_disk)
    with pytest.raises(OSError) as info:
        write(path)
    assert info.value.filename == str(path)
    assert os_error_message(info.value).startswith(f"os error: cannot write {path}: no space left on the device")


def test_tensorboard_and_onnx_name_their_files(tmp_path, monkeypatch):
    from reid.cli.export import export_onnx
    from reid.engine.hooks import TensorBoardHook

    hook = TensorBoardHook()
    hook.folder, hook.writer = str(tmp_path / "tensorboard"), type("Writer", (), {"add_scalar": _full_disk})()
    hook.engine = type("Engine", (), {"epoch": 0})()
    with pytest.raises(OSError) as info:
        hook.after_evaluate({"target": {"rank1": 0.5}})
    assert info.value.filename == str(tmp_path / "tensorboard")
    monkeypatch.setattr(torch.onnx, "export", _full_disk)
    with pytest.raises(OSError) as info:
        export_onnx(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), str(tmp_path / "model.onnx"), 18, "torchscript")
    assert info.value.filename == str(tmp_path / "model.onnx")


def test_a_file_size_limit_while_generating_the_synthetic_set(tmp_path):
    root = tmp_path / "data"
    overrides = tiny_overrides(root, tmp_path / "run")
    overrides[overrides.index("DATA.SYNTHETIC.SEED") + 1] = "4"  # a set nobody generated yet
    done = reid("train", "--config", CONFIG, *overrides, preexec_fn=_file_size_limit(600))  # < one image
    assert done.returncode == OS_ERROR, done.stderr
    line = last_line(done)
    assert line.startswith(f"os error: cannot write {root}/synthetic/") and ": file too large" in line
    assert "Traceback" not in done.stderr
