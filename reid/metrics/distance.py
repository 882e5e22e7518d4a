"""The project's distances: pairwise matrices (evaluation, losses, AVSL) and paired rows.

One implementation per distance, used by the losses (:mod:`reid.losses`), the evaluation
(:mod:`reid.engine.evaluation`, :mod:`reid.metrics.retrieval`) and the AVSL objective:

- :func:`euclidean_squared_distance`: ``||x||^2 + ||y||^2 - 2 x.y`` (torchreid's formula);
  tiny negative values from rounding are kept unless ``clamp_min`` is given.
- :func:`euclidean_distance`: its square root, clamped at ``eps`` first (losses).
- :func:`cosine_distance`: ``1 - x.y / (||x|| ||y||)`` (``F.normalize`` then a matrix product).
- :func:`paired_euclidean_distance`: ``||x_i - y_i||`` of matching rows (no expansion).
- :func:`compute_distance_matrix`: ``"euclidean"`` (the *squared* one, as torchreid) or
  ``"cosine"`` by name, the evaluation's entry point.

The matrices are computed in chunks of rows of ``input1``, so the temporaries stay at
``chunk_size x N`` instead of full size (a batch of a training step is one chunk). All are
differentiable. This module imports torch and numpy only.
"""

from __future__ import annotations

import logging
from typing import Literal, Union, get_args

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "DISTANCE_METRICS",
    "FeatureInput",
    "Metric",
    "compute_distance_matrix",
    "cosine_distance",
    "euclidean_distance",
    "euclidean_squared_distance",
    "paired_euclidean_distance",
]

Metric = Literal["euclidean", "cosine"]
DISTANCE_METRICS: tuple[str, ...] = get_args(Metric)
"""The metrics of :func:`compute_distance_matrix`: ``"euclidean"`` (squared) and ``"cosine"``."""

FeatureInput = Union[torch.Tensor, np.ndarray]
"""``(N, D)`` features given as a tensor or a numpy array."""

# Cells of the largest temporary per chunk (rows x gallery).
_CHUNK_ELEMENTS = 1 << 22


def compute_distance_matrix(
    input1: FeatureInput,
    input2: FeatureInput,
    metric: Metric = "euclidean",
    chunk_size: int | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Distances between all rows of ``input1`` and all rows of ``input2``.

    Same values as ``torchreid.reid.metrics.compute_distance_matrix`` up to the rounding of
    the last bits (torchreid fuses the Euclidean sum into one ``addmm``; BLAS may also block a
    chunk of rows differently).

    Args:
        input1: ``(M, D)`` features (tensor or numpy array).
        input2: ``(N, D)`` features, same device.
        metric: ``"euclidean"`` (squared, as torchreid) or ``"cosine"``.
        chunk_size: rows of ``input1`` per chunk; ``None``: about 4M cells per chunk.
        normalize: L2-normalise the rows first (``TEST.NORMALIZE_FEATURE``).

    Returns:
        ``(M, N)`` distances on the inputs' device, float32 (float64 for float64 inputs).

    Raises:
        ValueError: bad shapes, unknown metric or non-positive ``chunk_size``.
    """
    if normalize:
        input1, input2 = (F.normalize(x, p=2, dim=1) for x in _check_pair(input1, input2))
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2, chunk_size)
    if metric == "cosine":
        return cosine_distance(input1, input2, chunk_size)
    raise ValueError(
        f'Unknown distance metric: {metric}. Please choose either "euclidean" or "cosine"'
    )


def euclidean_squared_distance(
    input1: FeatureInput,
    input2: FeatureInput | None = None,
    chunk_size: int | None = None,
    *,
    clamp_min: float | None = None,
) -> torch.Tensor:
    """Squared Euclidean distances ``||x||^2 + ||y||^2 - 2 x.y`` (torchreid's formula).

    For L2-normalised AVSL level embeddings this is the level distance
    ``d^l = sum_i delta^l_i`` (AVSL paper, section 3.4; docs/method.md section 5).

    Args:
        input1: ``(M, D)``.
        input2: ``(N, D)``; ``None`` means ``input1``.
        chunk_size: rows of ``input1`` per chunk; ``None``: automatic.
        clamp_min: clamp the result at this value (``0.0`` removes the tiny negative values of
            rounding); ``None`` returns it as computed.

    Returns:
        ``(M, N)`` float32 (float64 for float64 inputs), differentiable.

    Raises:
        ValueError: bad shapes or devices, non-positive ``chunk_size``.
    """
    x, y = _check_pair(input1, input1 if input2 is None else input2)
    sq_x = _squared_norms(x)
    sq_y = _squared_norms(y)
    spans = _chunks(x.shape[0], y.shape[0], chunk_size)
    if len(spans) == 1:  # e.g. a training batch: no output buffer, a plain autograd graph
        out = _squared_block(x, y, sq_x, sq_y)
    else:
        out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
        for start, stop in spans:
            out[start:stop] = _squared_block(x[start:stop], y, sq_x[start:stop], sq_y)
    return out if clamp_min is None else out.clamp_min(clamp_min)


def euclidean_distance(
    input1: FeatureInput,
    input2: FeatureInput | None = None,
    chunk_size: int | None = None,
    *,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Euclidean distances ``sqrt(max(||x||^2 + ||y||^2 - 2 x.y, eps))``.

    The clamp at ``eps`` before the square root keeps rounding (negative squares) and zero
    distances (infinite derivative of ``sqrt``) from producing NaNs; it gives a zero gradient
    for (near-)identical pairs, and ``sqrt(eps)`` (1e-6) on the diagonal of ``input1``
    against itself.

    Args:
        input1: ``(M, D)``.
        input2: ``(N, D)``; ``None`` means ``input1``.
        chunk_size: rows of ``input1`` per chunk; ``None``: automatic.
        eps: the clamp of the squared distance.

    Returns:
        ``(M, N)`` distances, float32 (float64 for float64 inputs), differentiable.
    """
    return euclidean_squared_distance(input1, input2, chunk_size, clamp_min=eps).sqrt()


def paired_euclidean_distance(input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
    """``(N,)`` Euclidean norms ``||x_i - y_i||`` of the differences of matching rows.

    Computed from the difference itself (no expansion, no clamp): exact for near-identical
    rows, with a zero gradient at a zero difference.

    Args:
        input1: ``(N, D)``; input2: ``(N, D)``.

    Returns:
        ``(N,)`` distances, in the inputs' dtype.
    """
    if input1.shape != input2.shape or input1.dim() != 2:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(input1.shape)} and "
            f"{tuple(input2.shape)}"
        )
    return torch.linalg.vector_norm(input1 - input2, ord=2, dim=1)


def cosine_distance(
    input1: FeatureInput, input2: FeatureInput, chunk_size: int | None = None
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


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """``x.pow(2).sum(dim=1)`` by blocks of rows: the same values, without an ``(N, D)``
    temporary (a large gallery's squared features would double its memory)."""
    if x.shape[0] * x.shape[1] <= _CHUNK_ELEMENTS or torch.is_grad_enabled() and x.requires_grad:
        return x.pow(2).sum(dim=1)
    rows = max(1, _CHUNK_ELEMENTS // max(x.shape[1], 1))
    return torch.cat([x[start : start + rows].pow(2).sum(dim=1) for start in range(0, x.shape[0], rows)])


def _squared_block(
    x: torch.Tensor, y: torch.Tensor, sq_x: torch.Tensor, sq_y: torch.Tensor
) -> torch.Tensor:
    """``(m, N)`` squared distances of the rows ``x (m, D)`` to ``y (N, D)``, given the
    squared norms ``sq_x (m,)`` and ``sq_y (N,)``: ``(sq_x + sq_y) - 2 x.y``."""
    return (sq_x[:, None] + sq_y[None, :]) - 2.0 * (x @ y.t())


def _check_pair(input1: FeatureInput, input2: FeatureInput) -> tuple[torch.Tensor, torch.Tensor]:
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
