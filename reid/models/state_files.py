"""One reader of the ``.pth`` state files the toolkit loads: checkpoints, weights files and
ImageNet weights, all read with PyTorch's safe loader (``torch.load(..., weights_only=True)``).

:func:`read_state_file` loads a file (a path or a binary file object) that holds a dict: a state
dict, one of our checkpoints, or torchreid's ``model.pth.tar-N`` (whose NumPy rank-1 the loader
is allowed to read: :data:`TORCHREID_CHECKPOINT_GLOBALS`). Anything else is refused with
:class:`StateFileError`, one line naming the file and the reason, never torch's advice to load
it with ``weights_only=False`` (which could run code from an unknown file). Its callers turn it
into their own errors: :func:`reid.engine.checkpoint.load_checkpoint` (``CheckpointError``),
:func:`reid.models.torchreid_net.load_weights_file` (``TorchreidError``), the trunks' ImageNet
weights (:func:`reid.models.trunks.build_trunk`, which lets it through) and
:mod:`reid.models.imagenet_weights` (``WeightsFetchError``, or a file fetched again).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import IO, Any

import numpy as np
import torch

__all__ = ["TORCHREID_CHECKPOINT_GLOBALS", "StateFileError", "read_state_file"]

#: What ``torch.load(..., weights_only=True)`` must allow besides tensors and containers to read
#: torchreid's ``model.pth.tar-N``: its ``save_checkpoint`` stores the rank-1 as a NumPy scalar
#: (the scalar's reconstructor and the dtypes of float and integer scalars; data only).
TORCHREID_CHECKPOINT_GLOBALS = [
    np._core.multiarray.scalar, np.dtype,
    *(type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)),
]

# What torch.load raises for a file it cannot read safely: random bytes, a truncated or overwritten
# file, a pickle of objects the safe loader refuses; struct.error and AssertionError come from a
# damaged file of torch's legacy (non-zip) format (torch.OutOfMemoryError is let through).
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, IndexError,
               AttributeError, ImportError, UnicodeDecodeError, struct.error, AssertionError, OverflowError)


class StateFileError(ValueError):
    """A file that is not a state file: unreadable by the safe loader (random bytes, a truncated or
    overwritten file, other objects than it reads), or holding something else than a dict.

    Attributes:
        name: the file (its path, or the name given for a file object).
        reason: one line, why (``EOFError: the file ends before ...``, ``it holds a list, not a dict``).
        holds: the type name of what the file holds when it loaded but is not a dict, else None.
    """

    def __init__(self, name: str, reason: str, holds: str | None = None):
        self.name = name
        self.reason = reason
        self.holds = holds
        if holds is None:
            message = f"{name} cannot be read as a state file (damaged, truncated or not a torch.save file): {reason}"
        else:
            message = f"{name} is not a state file: {reason}"
        super().__init__(message)

    def __reduce__(self):  # picklable with its attributes (multiprocessing, torch.distributed)
        return type(self), (self.name, self.reason, self.holds)


def read_state_file(source: str | os.PathLike[str] | IO[bytes], map_location: Any = "cpu",
                    name: str | None = None) -> dict[str, Any]:
    """The dict a ``.pth`` file holds, read with ``torch.load(..., weights_only=True)`` and
    :data:`TORCHREID_CHECKPOINT_GLOBALS` allowed.

    Args:
        source: a path, or a binary file object (seekable, as ``torch.load`` needs).
        map_location: where the tensors go (``torch.load``'s argument).
        name: how messages name the file; default the path, or the file object's ``name``.

    Raises:
        FileNotFoundError: ``source`` is a path to no file.
        StateFileError: the file cannot be read safely or holds something else than a dict (one
            line naming the file and the reason).
        torch.OutOfMemoryError: as ``torch.load`` raises it.
    """
    if hasattr(source, "read"):
        name = name or str(getattr(source, "name", "") or "the file object")
    else:
        source = os.fspath(source)
        name = name or source
        if not os.path.isfile(source):
            raise FileNotFoundError(f"state file not found: {source}")
    try:
        with torch.serialization.safe_globals(TORCHREID_CHECKPOINT_GLOBALS):
            state = torch.load(source, map_location=map_location, weights_only=True)
    except torch.OutOfMemoryError:
        raise
    except _UNREADABLE as exc:
        raise StateFileError(name, load_error_reason(exc)) from None  # torch advises weights_only=False
    if not isinstance(state, dict):
        holds = type(state).__name__
        raise StateFileError(name, f"it holds a {holds}, not a dict", holds)
    return state


def load_error_reason(exc: BaseException) -> str:
    """The first sentence of what ``torch.load`` says is wrong, without its advice (one line,
    ``<exception type>: <reason>``, never mentioning ``weights_only``)."""
    message = str(exc)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not reason or "weights_only" in reason:
        reason = "torch.load could not read it"
    if isinstance(exc, EOFError):
        reason = "the file ends before the data does (empty or truncated)"
    return f"{type(exc).__name__}: {reason[:200]}"
