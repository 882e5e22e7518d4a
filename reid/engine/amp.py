"""Mixed precision shared by the training step and feature extraction.

``amp`` is ``off`` (float32), ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA only, with a loss scaler):
the forward passes run under :func:`autocast_context`, and :func:`to_float32` casts their outputs
back so that the losses are computed in float32. (Repeatable floating-point results on the CPU,
``TRAIN.DETERMINISTIC``, are :mod:`reid.engine.determinism`'s.)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

__all__ = ["AMP_DTYPES", "AMP_MODES", "autocast_context", "check_amp", "to_float32"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# TRAIN.AMP: float32 (off) or autocast to one of AMP_DTYPES.
AMP_MODES = ("off", *AMP_DTYPES)
"""Autocast dtype of each mixed-precision mode (``off`` runs in float32)."""


def check_amp(amp: str, device: torch.device) -> None:
    """Fails clearly when ``amp`` cannot run on ``device``.

    Raises:
        ValueError: unknown mode.
        RuntimeError: ``fp16`` off CUDA, or ``bf16`` on a GPU without bfloat16 support.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise RuntimeError(
            f"mixed precision fp16 needs a CUDA device (float16 autocast with a loss scaler), "
            f"this run uses {device}; use bf16 on the CPU"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"{torch.cuda.get_device_name(device)} does not support bfloat16; use fp16")


def autocast_context(device: torch.device, amp: str = "off") -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in the dtype of ``amp``; a no-op for ``off``."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_float32(value: Any) -> Any:
    """``value`` with every float16 / bfloat16 tensor cast to float32 (tensors, lists, tuples,
    dicts and dataclasses such as ``PCBOutput``, recursively; other tensors are returned as
    they are); the casts keep the autograd graph."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_float32(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value
