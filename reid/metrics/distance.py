"""Query-gallery distance matrices in chunks of query rows.

The formulas are those of ``torchreid.reid.metrics.distance``: ``"euclidean"`` is the
*squared* Euclidean distance ``||x||^2 + ||y||^2 - 2 x.y`` (one ``addmm``), ``"cosine"`` is
``1 - x.y / (||x|| ||y||)`` (``F.normalize`` then a matrix product). Computing them chunk by
chunk into one preallocated output keeps the temporaries at ``chunk_size x N`` instead of
torchreid's full-size ones.
"""

from __future__ import annotations

import logging
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "Metric",
    "compute_distance_matrix",
    "cosine_distance",
    "euclidean_squared_distance",
]

Metric = Literal["euclidean", "cosine"]
Features = Union[torch.Tensor, np.ndarray]

# Cells of the largest temporary per chunk (rows x gallery).
_CHUNK_ELEMENTS = 1 << 22


def compute_distance_matrix(
    input1: Features,
    input2: Features,
    metric: Metric = "euclidean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Distances between all rows of ``input1`` and all rows of ``input2``.

    Same values as ``torchreid.reid.metrics.compute_distance_matrix`` (up to the rounding
    of the matrix product, which BLAS may block differently for a chunk of rows).

    Args:
        input1: ``(M, D)`` features (tensor or numpy array).
        input2: ``(N, D)`` features, same device.
        metric: ``"euclidean"`` (squared, as torchreid) or ``"cosine"``.
        chunk_size: rows of ``input1`` per chunk; ``None``: about 4M cells per chunk.

    Returns:
        ``(M, N)`` distances on the inputs' device, float32 (float64 for float64 inputs).

    Raises:
        ValueError: bad shapes, unknown metric or non-positive ``chunk_size``.
    """
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2, chunk_size)
    if metric == "cosine":
        return cosine_distance(input1, input2, chunk_size)
    raise ValueError(
        f'Unknown distance metric: {metric}. Please choose either "euclidean" or "cosine"'
    )


def euclidean_squared_distance(
    input1: Features, input2: Features, chunk_size: int | None = None
) -> torch.Tensor:
    """Squared Euclidean distances ``||x||^2 + ||y||^2 - 2 x.y`` (torchreid's formula).

    Args:
        input1: ``(M, D)``; input2: ``(N, D)``.
        chunk_size: rows of ``input1`` per chunk; ``None``: automatic.

    Returns:
        ``(M, N)`` float32 (float64 for float64 inputs); may hold tiny negative values.
    """
    x, y = _check_pair(input1, input2)
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    sq_x = x.pow(2).sum(dim=1)
    sq_y = y.pow(2).sum(dim=1)
    for start, stop in _chunks(x.shape[0], y.shape[0], chunk_size):
        norms = sq_x[start:stop, None] + sq_y[None, :]
        torch.addmm(norms, x[start:stop], y.t(), beta=1, alpha=-2, out=out[start:stop])
    return out


def cosine_distance(
    input1: Features, input2: Features, chunk_size: int | None = None
) -> torch.Tensor:
    """Cosine distances ``1 - cos(x, y)`` (torchreid's formula, ``F.normalize`` eps 1e-12).

    Args:
        input1: ``(M, D)``; input2: ``(N, D)``.
        chunk_size: rows of ``input1`` per chunk; ``None``: automatic.

    Returns:
        ``(M, N)`` float32 (float64 for float64 inputs), in ``[0, 2]`` up to rounding.
    """
    x, y = _check_pair(input1, input2)
    x = F.normalize(x, p=2, dim=1)
    y = F.normalize(y, p=2, dim=1)
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    for start, stop in _chunks(x.shape[0], y.shape[0], chunk_size):
        block = out[start:stop]
        torch.mm(x[start:stop], y.t(), out=block)
        block.neg_().add_(1)  # 1 - s, exactly as torchreid's rsub
    return out


def _check_pair(input1: Features, input2: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as 2-D tensors of a common floating dtype (at least float32)."""
    x = torch.as_tensor(input1)
    y = torch.as_tensor(input2)
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"expected 2-D features, got {x.dim()}-D and {y.dim()}-D")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    if x.device != y.device:
        raise ValueError(f"inputs on different devices: {x.device} and {y.device}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def _chunks(num_rows: int, num_cols: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``num_rows`` rows."""
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(num_cols, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, num_rows)) for s in range(0, num_rows, chunk_size)]
