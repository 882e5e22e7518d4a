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

Without autograd the matrices are written in place, chunk of rows by chunk of rows, into the
output: the squared Euclidean one as torchreid computes it, the norms broadcast into the chunk and
one BLAS ``addmm`` on top (no temporary of the chunk's size). The automatic chunk holds about
256 MB of distances and depends only on the number of columns, and chunks start at multiples of
it, so that the rows ``a:b`` computed alone (a block of :class:`reid.metrics.DistanceRows`, whose
blocks are multiples of the chunk) are bit-identical to the same rows of the whole matrix. With
autograd (training losses) a chunk is computed out of place (a batch is one chunk).

Large inputs (a gallery of several million numbers) are prepared once: their squared norms and
their normalised copy are remembered for as long as the tensor lives unchanged (a weak reference
and the tensor's version counter), so a streaming evaluation that asks for the distances of one
block of queries after another to the same gallery does not recompute them per block.
This module imports torch and numpy only.
"""

from __future__ import annotations

import logging
import weakref
from typing import Callable, Literal, Union, get_args

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "DISTANCE_METRICS",
    "FeatureInput",
    "Metric",
    "chunk_rows",
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

# Bytes of float32 distances per automatic chunk of rows (rows x gallery): large enough for BLAS to
# run at full speed (a GEMM of 50 rows is about 25% slower per number than one of 800).
_CHUNK_BYTES = 256 << 20
# Inputs with at least this many numbers are prepared once (norms, normalised copy): see the
# module docstring.
_PREPARE_ELEMENTS = 1 << 22


def compute_distance_matrix(
    input1: FeatureInput,
    input2: FeatureInput,
    metric: Metric = "euclidean",
    chunk_size: int | None = None,
    normalize: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances between all rows of ``input1`` and all rows of ``input2``.

    Same values as ``torchreid.reid.metrics.compute_distance_matrix`` up to the rounding of
    the last bits (torchreid fuses the Euclidean sum into one ``addmm``; BLAS may also block a
    chunk of rows differently).

    Args:
        input1: ``(M, D)`` features (tensor or numpy array).
        input2: ``(N, D)`` features, same device.
        metric: ``"euclidean"`` (squared, as torchreid) or ``"cosine"``.
        chunk_size: rows of ``input1`` per chunk; ``None``: :func:`chunk_rows` (about 256 MB).
        normalize: L2-normalise the rows first (``TEST.NORMALIZE_FEATURE``).
        out: a ``(M, N)`` tensor of the result's dtype and device to write the distances into
            (returned), e.g. a buffer reused for every block of rows; not with autograd.

    Returns:
        ``(M, N)`` distances on the inputs' device, float32 (float64 for float64 inputs).

    Raises:
        ValueError: bad shapes, unknown metric or non-positive ``chunk_size``.
    """
    if normalize:
        input1, input2 = (_prepared(x, "normalized", _normalized) for x in _check_pair(input1, input2))
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2, chunk_size, out=out)
    if metric == "cosine":
        return cosine_distance(input1, input2, chunk_size, out=out)
    raise ValueError(
        f'Unknown distance metric: {metric}. Please choose either "euclidean" or "cosine"'
    )


def euclidean_squared_distance(
    input1: FeatureInput,
    input2: FeatureInput | None = None,
    chunk_size: int | None = None,
    *,
    clamp_min: float | None = None,
    out: torch.Tensor | None = None,
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
        out: write the result into this ``(M, N)`` tensor (see :func:`compute_distance_matrix`).

    Returns:
        ``(M, N)`` float32 (float64 for float64 inputs), differentiable.

    Raises:
        ValueError: bad shapes or devices, non-positive ``chunk_size``.
    """
    x, y = _check_pair(input1, input1 if input2 is None else input2)
    sq_x = _prepared(x, "squared_norms", _squared_norms)
    sq_y = _prepared(y, "squared_norms", _squared_norms)
    spans = _chunks(x.shape[0], y.shape[0], chunk_size)
    if _tracks_grad(x, y):
        if out is not None:
            raise ValueError("out= cannot be used while autograd records the inputs")
        if len(spans) == 1:  # e.g. a training batch: no output buffer, a plain autograd graph
            out = _squared_block(x, y, sq_x, sq_y)
        else:
            out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
            for start, stop in spans:
                out[start:stop] = _squared_block(x[start:stop], y, sq_x[start:stop], sq_y)
    else:  # in place: the norms broadcast into the output, one addmm on top, as torchreid
        out = _output(out, x, y)
        for start, stop in spans:
            block = out[start:stop]
            torch.add(sq_x[start:stop, None], sq_y[None, :], out=block)
            block.addmm_(x[start:stop], y.t(), beta=1, alpha=-2)
    if clamp_min is None:
        return out
    return out.clamp_min_(clamp_min) if not _tracks_grad(x, y) else out.clamp_min(clamp_min)


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
    input1: FeatureInput, input2: FeatureInput, chunk_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine distances ``1 - cos(x, y)`` (torchreid's formula, ``F.normalize`` eps 1e-12).

    Args:
        input1: ``(M, D)``; input2: ``(N, D)``.
        chunk_size: rows of ``input1`` per chunk; ``None``: automatic.
        out: write the result into this ``(M, N)`` tensor (see :func:`compute_distance_matrix`).

    Returns:
        ``(M, N)`` float32 (float64 for float64 inputs), in ``[0, 2]`` up to rounding.
    """
    x, y = _check_pair(input1, input2)
    x = _prepared(x, "normalized", _normalized)
    y = _prepared(y, "normalized", _normalized)
    out = _output(out, x, y)
    for start, stop in _chunks(x.shape[0], y.shape[0], chunk_size):
        block = out[start:stop]
        torch.mm(x[start:stop], y.t(), out=block)
        block.neg_().add_(1)  # 1 - s, exactly as torchreid's rsub
    return out


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """``x.pow(2).sum(dim=1)`` by blocks of rows: the same values, without an ``(N, D)``
    temporary (a large gallery's squared features would double its memory)."""
    if x.shape[0] * x.shape[1] <= _PREPARE_ELEMENTS or _tracks_grad(x):
        return x.pow(2).sum(dim=1)
    rows = max(1, _PREPARE_ELEMENTS // max(x.shape[1], 1))
    return torch.cat([x[start : start + rows].pow(2).sum(dim=1) for start in range(0, x.shape[0], rows)])


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (``F.normalize``, eps 1e-12, as torchreid)."""
    return F.normalize(x, p=2, dim=1)


def _squared_block(
    x: torch.Tensor, y: torch.Tensor, sq_x: torch.Tensor, sq_y: torch.Tensor
) -> torch.Tensor:
    """``(m, N)`` squared distances of the rows ``x (m, D)`` to ``y (N, D)``, given the
    squared norms ``sq_x (m,)`` and ``sq_y (N,)``: ``(sq_x + sq_y) - 2 x.y`` in one ``addmm``
    (the numbers of the in-place path)."""
    return torch.addmm(sq_x[:, None] + sq_y[None, :], x, y.t(), beta=1, alpha=-2)


def _output(out: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``out`` checked to hold the ``(M, N)`` distances of ``x`` and ``y``, or a new tensor."""
    if out is None:
        return torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    if (out.shape != (x.shape[0], y.shape[0]) or out.dtype != x.dtype or out.device != x.device
            or not out.is_contiguous()):
        raise ValueError(
            f"out must be a contiguous {(x.shape[0], y.shape[0])} {x.dtype} tensor on {x.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    return out


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` now."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# One remembered result per kind of preparation: (weak reference to the input, its version, result).
_PREPARED: dict[str, tuple[weakref.ref, int, torch.Tensor]] = {}


def _prepared(x: torch.Tensor, kind: str, prepare: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``prepare(x)``, remembered for a large ``x`` until ``x`` is freed or changed in place.

    Only the last large input of each ``kind`` is remembered (the gallery of a streaming
    evaluation); small inputs and inputs that autograd tracks are prepared every time.
    """
    if x.numel() < _PREPARE_ELEMENTS or _tracks_grad(x):
        return prepare(x)
    entry = _PREPARED.get(kind)
    if entry is not None and entry[0]() is x and entry[1] == x._version:
        return entry[2]
    result = prepare(x)
    _PREPARED[kind] = (weakref.ref(x, lambda _ref, kind=kind: _forget(kind, _ref)), x._version, result)
    return result


def _forget(kind: str, ref: weakref.ref) -> None:
    """Drops the remembered result of ``kind`` when its input is freed."""
    entry = _PREPARED.get(kind)
    if entry is not None and entry[0] is ref:
        del _PREPARED[kind]


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


def chunk_rows(num_cols: int) -> int:
    """Rows of the automatic chunk of a distance matrix with ``num_cols`` columns: about 256 MB
    of float32 distances (at least one row). :class:`reid.metrics.DistanceRows` makes its blocks a
    multiple of it, so that a block is computed in the same chunks as the whole matrix."""
    return max(1, _CHUNK_BYTES // (4 * max(num_cols, 1)))


def _chunks(num_rows: int, num_cols: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``num_rows`` rows, starting at multiples of the chunk."""
    if chunk_size is None:
        chunk_size = chunk_rows(num_cols)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, num_rows)) for s in range(0, num_rows, chunk_size)]
