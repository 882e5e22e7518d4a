"""Top-k gallery retrieval without a full query-gallery distance matrix.

Two backends return the same neighbours:

* ``"dense"``: chunks of query rows of :func:`reid.metrics.distance.compute_distance_matrix`,
  reduced to their ``k`` nearest entries at once (memory ``chunk_size x N``).
* ``"faiss"``: a FAISS index over the gallery (``pip install faiss-cpu``, the ``faiss`` extra,
  imported only here and only when asked for). The default ``"Flat"`` index is exact; any
  ``faiss.index_factory`` string (e.g. ``"IVF1024,Flat"``) gives an approximate one, trained
  on the gallery.

Distances are torchreid's: squared Euclidean or ``1 - cosine``. Equal distances are ordered by
gallery index in both backends; FAISS computes the distances with its own rounding, so
neighbours within a few float32 ulps of each other may swap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from reid.metrics.distance import FeatureInput, Metric, compute_distance_matrix

logger = logging.getLogger(__name__)

__all__ = ["Backend", "TopK", "build_faiss_index", "smallest_k", "topk_retrieval"]

Backend = Literal["dense", "faiss"]

# Cells of the distance chunk of the dense backend (rows x gallery).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TopK:
    """The ``k`` nearest gallery entries of every query, nearest first.

    Attributes:
        distances: ``(Q, k)`` float32 distances, ascending along each row.
        indices: ``(Q, k)`` int64 gallery indices.
    """

    distances: torch.Tensor
    indices: torch.Tensor


def topk_retrieval(
    query: FeatureInput,
    gallery: FeatureInput,
    k: int,
    metric: Metric = "euclidean",
    backend: Backend = "dense",
    chunk_size: int | None = None,
    faiss_index: str = "Flat",
) -> TopK:
    """The ``k`` nearest gallery entries of each query.

    Args:
        query: ``(Q, D)`` features.
        gallery: ``(N, D)`` features.
        k: neighbours per query; clipped to ``N``.
        metric: ``"euclidean"`` (squared, as torchreid) or ``"cosine"``.
        backend: ``"dense"`` (torch, on the features' device) or ``"faiss"`` (CPU).
        chunk_size: queries per chunk; ``None``: about 4M distances per chunk (dense) or
            all queries at once (FAISS).
        faiss_index: ``faiss.index_factory`` description; ``"Flat"`` is exact.

    Returns:
        The :class:`TopK` (on the features' device for ``"dense"``, on the CPU for FAISS).

    Raises:
        ValueError: bad ``k``, ``backend`` or ``chunk_size``.
        ImportError: ``backend="faiss"`` without FAISS installed.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend == "dense":
        return _dense_topk(query, gallery, k, metric, chunk_size)
    if backend == "faiss":
        return _faiss_topk(query, gallery, k, metric, chunk_size, faiss_index)
    raise ValueError(f"backend must be 'dense' or 'faiss', got {backend!r}")


def smallest_k(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ties broken by column index.

    ``torch.topk`` leaves both the choice among values tied at the k-th place and their order
    unspecified; here every value below the k-th is taken, then the lowest columns among the
    tied ones, and the result is sorted by (value, column).

    Args:
        dist: ``(B, N)`` distances (finite), ``k <= N``.
        k: entries per row.

    Returns:
        ``(B, k)`` values and ``(B, k)`` int64 columns.
    """
    if k == 0:
        empty = torch.zeros(dist.shape[0], 0, dtype=torch.int64, device=dist.device)
        return dist[:, :0], empty
    kth = dist.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]
    below = dist < kth
    tied = dist == kth
    room = k - below.sum(1, keepdim=True)
    take = below | (tied & (tied.cumsum(1) <= room))
    cols = take.nonzero()[:, 1].view(dist.shape[0], k)  # row-major: ascending columns
    values = dist.gather(1, cols)
    order = values.sort(dim=1, stable=True).indices
    return values.gather(1, order), cols.gather(1, order)


def _dense_topk(
    query: FeatureInput, gallery: FeatureInput, k: int, metric: Metric, chunk_size: int | None
) -> TopK:
    """Top-k by chunks of the dense distance matrix."""
    query_t, gallery_t = torch.as_tensor(query), torch.as_tensor(gallery)
    num_q, num_g = query_t.shape[0], gallery_t.shape[0]
    k = min(k, num_g)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    values, indices = [], []
    for start in range(0, num_q, chunk_size):
        dist = compute_distance_matrix(query_t[start : start + chunk_size], gallery_t, metric)
        v, i = smallest_k(dist, k)
        values.append(v)
        indices.append(i)
    if not values:
        dtype = torch.promote_types(query_t.dtype, torch.float32)
        return TopK(torch.zeros(0, k, dtype=dtype), torch.zeros(0, k, dtype=torch.int64))
    return TopK(torch.cat(values), torch.cat(indices))


def build_faiss_index(
    gallery: FeatureInput, metric: Metric = "euclidean", faiss_index: str = "Flat"
) -> Any:
    """A FAISS index holding the gallery (normalised for ``"cosine"``).

    Args:
        gallery: ``(N, D)`` features.
        metric: ``"euclidean"`` (L2 index, squared distances) or ``"cosine"`` (inner
            product of normalised features).
        faiss_index: ``faiss.index_factory`` description; trained on the gallery if needed.

    Returns:
        The ``faiss.Index`` (search it with float32 queries prepared the same way).
    """
    faiss = _import_faiss()
    x = _faiss_features(gallery, metric)
    kind = faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(x.shape[1], faiss_index, kind)
    if not index.is_trained:
        logger.info("Training FAISS index %r on %d gallery features", faiss_index, x.shape[0])
        index.train(x)
    index.add(x)
    return index


def _faiss_topk(
    query: FeatureInput,
    gallery: FeatureInput,
    k: int,
    metric: Metric,
    chunk_size: int | None,
    faiss_index: str,
) -> TopK:
    """Top-k through a FAISS index, in chunks of queries."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(
            f'Unknown distance metric: {metric}. Please choose either "euclidean" or "cosine"'
        )
    index = build_faiss_index(gallery, metric, faiss_index)
    x = _faiss_features(query, metric)
    k = min(k, int(index.ntotal))
    chunk_size = chunk_size or max(x.shape[0], 1)
    values, indices = [], []
    for start in range(0, x.shape[0], chunk_size):
        dist, idx = index.search(x[start : start + chunk_size], k)
        if metric == "cosine":
            dist = 1.0 - dist
        values.append(dist)
        indices.append(idx)
    dist = np.concatenate(values) if values else np.zeros((0, k), np.float32)
    idx = np.concatenate(indices) if indices else np.zeros((0, k), np.int64)
    dist, idx = _order_ties_by_index(dist.astype(np.float32), idx.astype(np.int64))
    return TopK(torch.from_numpy(dist), torch.from_numpy(idx))


def _order_ties_by_index(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorts each row by (distance, index), as the dense backend orders them."""
    order = np.lexsort((idx, dist), axis=-1) if dist.size else np.zeros_like(idx)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def _faiss_features(x: FeatureInput, metric: Metric) -> np.ndarray:
    """Contiguous float32 numpy features for FAISS (L2-normalised as torchreid for cosine)."""
    t = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float32)
    if t.dim() != 2:
        raise ValueError(f"expected 2-D features, got {t.dim()}-D")
    if metric == "cosine":
        t = F.normalize(t, p=2, dim=1)
    return np.ascontiguousarray(t.numpy())


def _import_faiss() -> Any:
    """The ``faiss`` module, or an ImportError saying how to install it."""
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as err:
        raise ImportError(
            "The FAISS backend needs faiss: pip install faiss-cpu (extra 'faiss' of this package)"
        ) from err
    return faiss
