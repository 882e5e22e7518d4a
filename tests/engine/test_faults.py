"""Faults during a (tiny) run: a failed or interrupted evaluation, a NaN loss, non-finite weights,
orphan temporary files. Nothing is lost and nothing wrong is written."""

import logging
import math
import os

import pytest
import torch

from reid.engine import hooks as hooks_module
from reid.engine.checkpoint import load_checkpoint
from reid.engine.hooks import Hook
from tests.engine.toy_engine import NUM_BATCHES, make_toy_engine


# -- 5. orphan temporary files -------------------------------------------------------------------


def test_orphan_temporary_files_are_removed_at_the_next_start(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    orphans = [checkpoints / ".tmp-k2j3x9ab.pth", tmp_path / "metrics.json.tmp",
               tmp_path / ".tmp-metrics.json.1a2b3c"]
    kept = [tmp_path / "notes.tmp", tmp_path / "my.tmp-file.txt", checkpoints / "best.pth"]
    for path in orphans + kept:
        path.write_bytes(b"half a file")
    with caplog.at_level(logging.INFO):
        make_toy_engine(tmp_path).run(max_epoch=1, print_freq=1)
    assert not any(path.exists() for path in orphans)
    assert all(path.read_bytes() == b"half a file" for path in kept)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert "orphan" in line and all(str(path) in line for path in orphans)
