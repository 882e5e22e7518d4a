"""Two small helpers the explanation workflows share (the dump and the quality evaluation)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size`` (the last one shorter; ``size`` below 1 counts as 1)."""
    size = max(size, 1)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def mean_of(values: Iterable[Any]) -> float | None:
    """The mean of the values that are neither None nor NaN; None when no value is left."""
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else None
