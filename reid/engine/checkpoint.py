"""Checkpoints written atomically and loadable with ``weights_only=True``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads under
PyTorch's safe loader. It carries the RNG states needed for a resumed run to match an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Writes ``state`` to ``path`` atomically (temporary file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("checkpoint written to %s", path)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def model_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from one of our checkpoints or from a bare state dict."""
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    return {k.removeprefix("module."): v for k, v in state.items()}


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
