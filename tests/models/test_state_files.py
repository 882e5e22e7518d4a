"""The one reader of ``.pth`` state files (reid.models.state_files): what loads, what is refused and
how (one line naming the file, never torch's advice to load it with ``weights_only=False``)."""

import io
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from reid.models.state_files import TORCHREID_CHECKPOINT_GLOBALS, StateFileError, read_state_file


def _assert_same(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def _assert_refused_naming(path, info):
    message = str(info.value)
    assert str(path) in message and info.value.name == str(path)
    assert "weights_only" not in message and "\n" not in message
    error = info.value  # torch's own error (and its advice) is not shown in a traceback either
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_a_saved_state_dict_round_trips(tmp_path):
    state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    for source in (path, str(path)):
        loaded = read_state_file(source)
        _assert_same(loaded, state)
        assert all(value.device.type == "cpu" for value in loaded.values())


def test_a_torchreid_checkpoint_with_a_numpy_rank1_loads(tmp_path):
    """torchreid's save_checkpoint stores the rank-1 as a NumPy scalar, which the safe loader
    refuses unless TORCHREID_CHECKPOINT_GLOBALS are allowed."""
    weights = {"module.fc.weight": torch.randn(3, 2), "module.fc.bias": torch.zeros(3)}
    path = tmp_path / "model.pth.tar-4"
    torch.save({"state_dict": weights, "epoch": 4, "rank1": np.float64(0.5), "mAP": np.float32(0.25),
                "count": np.int64(7), "optimizer": {"state": {}}}, path)
    with pytest.raises(pickle.UnpicklingError):  # the case is real: plain weights_only refuses it
        torch.load(path, weights_only=True)
    loaded = read_state_file(path)
    assert loaded["epoch"] == 4 and loaded["rank1"] == 0.5 and loaded["mAP"] == 0.25 and loaded["count"] == 7
    _assert_same(loaded["state_dict"], weights)


def test_the_globals_stay_importable_from_torchreid_net():
    from reid.models import torchreid_net

    assert torchreid_net.TORCHREID_CHECKPOINT_GLOBALS is TORCHREID_CHECKPOINT_GLOBALS


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(StateFileError) as info:
        read_state_file(path)
    _assert_refused_naming(path, info)
    assert info.value.holds is None and isinstance(info.value, ValueError)


def test_a_truncated_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save({"x": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(StateFileError) as info:
        read_state_file(str(path))
    _assert_refused_naming(path, info)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(StateFileError) as info:
        read_state_file(empty)
    _assert_refused_naming(empty, info)


def test_a_pickled_list_is_refused_as_not_a_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2), torch.zeros(2)], path)
    with pytest.raises(StateFileError) as info:
        read_state_file(path)
    _assert_refused_naming(path, info)
    assert info.value.holds == "list" and "it holds a list, not a dict" in str(info.value)


def test_a_pickle_of_other_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"x": torch.ones(1), "module": nn.Linear(1, 1)}, path)
    with pytest.raises(StateFileError) as info:
        read_state_file(path)
    _assert_refused_naming(path, info)


def test_a_missing_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_state_file(missing)
    with pytest.raises(FileNotFoundError):
        read_state_file(str(tmp_path))  # a folder is no file either


def test_a_file_object_works(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    _assert_same(read_state_file(buffer), state)
    path = tmp_path / "w.pth"
    path.write_bytes(buffer.getvalue())
    with open(path, "rb") as handle:
        _assert_same(read_state_file(handle), state)
    with pytest.raises(StateFileError) as info:  # named by the caller, or "the file object"
        read_state_file(io.BytesIO(b"junk" * 10), name="member.pt")
    assert str(info.value).startswith("member.pt ") and info.value.name == "member.pt"
    with pytest.raises(StateFileError, match="^the file object "):
        read_state_file(io.BytesIO(b"junk" * 10))
    with open(path, "r+b") as handle:  # an open file is named by its path
        handle.truncate(50)
        handle.seek(0)
        with pytest.raises(StateFileError) as info:
            read_state_file(handle)
    assert info.value.name == str(path)


def test_the_error_survives_pickling():
    error = StateFileError("a.pth", "it holds a list, not a dict", "list")
    again = pickle.loads(pickle.dumps(error))
    assert (again.name, again.reason, again.holds, str(again)) == ("a.pth", error.reason, "list", str(error))


def test_out_of_memory_propagates(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"x": torch.ones(1)}, path)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        read_state_file(path, map_location="cuda")


def test_map_location_is_passed_on(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"x": torch.ones(1)}, path)
    loaded = read_state_file(path, map_location=torch.device("meta"))
    assert loaded["x"].device.type == "meta"
