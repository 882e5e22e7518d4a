"""Repeatable floating-point results on the CPU (``TRAIN.DETERMINISTIC``).

:func:`deterministic_algorithms` is the switch :meth:`reid.engine.base.ReidEngine.run` turns on
around a run on the CPU (and the benchmarks around their measured steps), so that the same seed
gives the same run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["deterministic_algorithms"]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Runs the block with ``torch.use_deterministic_algorithms(True, warn_only=True)`` when
    ``enabled``, then restores the previous setting.

    On the CPU some kernels of the similarity-mining step otherwise accumulate in an order that
    depends on the threads, so two PCB+SAM runs with the same seed differ after a few dozen steps
    (measured: gradients differ by ~3e-6 from one call to the next with 2 threads, never with 1).
    ``warn_only``: an operation without a deterministic implementation warns instead of failing.
    """
    if not enabled:
        yield
        return
    previous, previous_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
