import os
import random

import numpy as np
import pytest
import torch

from tests.test_io import assert_previous_kept_on_full_disk

from reid.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    model_state_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trip_through_safe_loader(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"rng": capture_rng_state()}, str(path))
    first = draws()
    restore_rng_state(load_checkpoint(str(path))["rng"])  # weights_only=True inside
    assert draws() == first


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"x": torch.ones(2)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"x": Unpicklable()}, str(path))
    assert torch.equal(load_checkpoint(str(path))["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))


def test_model_state_from_various_layouts():
    state = {"w": torch.zeros(1)}
    assert model_state_from_checkpoint({"model": state}) == state
    assert model_state_from_checkpoint({"state_dict": {"module.w": state["w"]}}) == state
    assert model_state_from_checkpoint(state) == state


# -- faults: a full disk, file modes, a file that is not a checkpoint -----------------------------


def test_disk_full_while_writing_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, caplog):
    import errno
    import logging

    path = tmp_path / "ckpt.pth"
    save_checkpoint({"x": torch.ones(2)}, str(path))

    import reid.io

    fdopen = os.fdopen

    class FullDisk:  # half the checkpoint reaches the disk, then the write fails as a full disk's does
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(reid.io.os, "fdopen", lambda *a, **k: FullDisk(fdopen(*a, **k)))
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as info:
        save_checkpoint({"x": torch.zeros(2)}, str(path))
    monkeypatch.undo()
    assert_previous_kept_on_full_disk(info.value, path, caplog)  # no partial file either
    assert info.value.filename == str(path)  # the error names the checkpoint (a failed write() names none)
    assert torch.equal(load_checkpoint(str(path))["x"], torch.ones(2))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask):
    import stat

    path = tmp_path / "ckpt.pth"
    old = os.umask(umask)
    try:
        save_checkpoint({"x": torch.ones(1)}, str(path))
        save_checkpoint({"x": torch.ones(1)}, str(path))  # replacing an existing file too
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_random_bytes_are_not_a_checkpoint_of_this_project(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(random.Random(0).randbytes(4096))
    truncated = tmp_path / "truncated.pth"
    save_checkpoint({"x": torch.ones(100)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:300])
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.ones(2), tensor)
    for bad in (path, truncated, tensor):
        with pytest.raises(ValueError) as info:
            load_checkpoint(str(bad))
        message = str(info.value)
        assert f"{bad} is not a checkpoint of this project" in message
        assert "weights_only" not in message and "\n" not in message


def test_a_checkpoint_read_once_is_restored_without_reading_it_again_unless_it_was_replaced(tmp_path, monkeypatch):
    """reid train --resume reads the checkpoint once (to check the config) and the engine restores
    that read; a checkpoint replaced in between (a torchrun process that started the next command
    before rank 0 wrote the last checkpoint of the previous one) is read again."""
    from reid.engine import checkpoint as module
    from tests.engine.toy_engine import make_toy_engine

    engine = make_toy_engine(tmp_path)
    engine.run(max_epoch=1, print_freq=1)
    read = module.read_checkpoint(engine.checkpoint_path)
    assert read.is_current() and read.state["epoch"] == 1
    reads = []
    load = module.load_checkpoint
    monkeypatch.setattr(module, "load_checkpoint", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    assert module.restore_training_state(make_toy_engine(tmp_path), read) == 1
    assert reads == []
    engine.run(max_epoch=2, print_freq=1, resume=True, resume_state=read)  # rewrites the checkpoint
    assert reads == [] and not read.is_current()
    resumed = make_toy_engine(tmp_path)
    assert module.restore_training_state(resumed, read) == 2  # the stale read is not restored
    assert reads == [engine.checkpoint_path] and resumed.history == engine.history
