import os
import random

import numpy as np
import pytest
import torch

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
