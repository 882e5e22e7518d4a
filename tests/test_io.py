"""reid.io: atomic JSON files, safe on a full disk, created with the umask's mode."""

import errno
import json
import logging
import os
import stat

import pytest

from reid.io import write_json


def assert_previous_kept_on_full_disk(error: OSError, path, caplog) -> None:
    """After a write to ``path`` failed with a full disk: the error is ENOSPC, the folder holds the
    previous file only (no partial file), and one error line names the file and says the previous
    one was kept. Shared with the checkpoint test."""
    assert error.errno == errno.ENOSPC
    assert os.listdir(path.parent) == [path.name]
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(path) in line and "No space left on device" in line and "previous" in line


def test_write_json_round_trip(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(str(path), {"a": 1, "b": [0.5]})
    assert json.loads(path.read_text()) == {"a": 1, "b": [0.5]}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_disk_full_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.json"
    write_json(str(path), {"epoch": 1})

    def full_disk(content, handle, **kwargs):
        handle.write('{"epoch": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as info:
        write_json(str(path), {"epoch": 2})
    monkeypatch.undo()
    assert_previous_kept_on_full_disk(info.value, path, caplog)
    assert json.loads(path.read_text()) == {"epoch": 1}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_json_mode_follows_the_umask(tmp_path, umask):
    path = tmp_path / "metrics.json"
    old = os.umask(umask)
    try:
        write_json(str(path), {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
