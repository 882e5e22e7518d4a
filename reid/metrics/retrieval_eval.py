"""Image-retrieval metrics of the metric-learning benchmarks (CUB-200-2011, Cars196, SOP).

Protocol. The test set is ``N`` embeddings with class labels, and every image queries all the
*other* images of the set: the image itself is left out, and nothing else is (no camera or
junk rule as in person re-identification). A smaller distance means a closer match. Equal
distances are ordered by gallery index, smallest index first: the ranking of a query is the
stable order of its ``N - 1`` other images by ``(distance, index)``, the same on every machine
and device. ``R`` is the number of other images of the query's class.

* Recall@K: the fraction of *all* ``N`` queries with at least one image of their class among
  their ``K`` nearest others (CUB and Cars196 use K = 1, 2, 4, 8; SOP 1, 10, 100, 1000). A query
  whose class has no other image (``R = 0``) counts as a miss. ``K`` must be in ``[1, N - 1]``.
* R-Precision (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020): the precision
  among the ``R`` nearest others of a query; the mean over the queries with ``R >= 1``.
* MAP@R (same paper): ``(1/R) * sum_{i=1..R} P(i) * rel(i)``, with ``rel(i) = 1`` when the
  i-th nearest other shares the query's class and ``P(i)`` the precision among the first ``i``;
  the mean over the queries with ``R >= 1``. Queries with ``R = 0`` are left out of both means
  and counted (:attr:`RetrievalResult.num_excluded`); where every query has ``R = 0`` the means
  are NaN.
* NMI: the normalized mutual information ``2 I(Y; C) / (H(Y) + H(C))`` (natural logarithms,
  arithmetic-mean normalisation) between the labels ``Y`` and a k-means clustering ``C`` of the
  embeddings into as many clusters as there are classes (k-means++ seeded, Lloyd iterations).
  When ``H(Y) + H(C) = 0`` both partitions are a single block, hence identical, and the NMI
  is 1. Both come from scikit-learn (``KMeans``, ``normalized_mutual_info_score``), as in the
  metric-learning evaluations.

Memory. The ``(N, N)`` distance matrix is read block of rows by block of rows (a
:class:`~reid.metrics.rank.DistanceRows` computes each block from the features when it is
needed), so it never has to exist whole. The blocks go to a :class:`RetrievalAccumulator`, which
keeps only a few numbers per query, takes them in any order and size, and can be fed by another
reader's pass over the rows (:meth:`~reid.metrics.rank.DistanceRows.observed`: the engine ranks
and scores a streamed retrieval set with one computation of each block). In each block the
self-distances are set to ``+inf``, the ``k + 1`` smallest entries of each row are taken in
``(distance, index)`` order (:func:`~reid.metrics.retrieval.smallest_k`, exact for ties at the
k-th place) and the query itself is dropped, which leaves its ``k = max(max(K), max R)`` nearest
others, in order, even where other distances are ``+inf`` too. The metrics only need these.
k-means holds the ``(N, D)`` embeddings in float64 (scikit-learn works on chunks of points inside).

This module imports numpy and torch, and scikit-learn for the clustering.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from reid.metrics.rank import DistanceRows
from reid.metrics.retrieval import smallest_k

__all__ = [
    "RetrievalAccumulator",
    "RetrievalResult",
    "kmeans",
    "nmi",
    "normalized_mutual_information",
    "retrieval_metrics",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

# Cells per block of distance rows (dense matrices).
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval metrics of a set queried against itself.

    Attributes:
        recall: ``{K: Recall@K}`` for every requested ``K``, in the order given.
        map_at_r: MAP@R, mean over the queries with ``R >= 1`` (NaN if there is none).
        r_precision: R-Precision, mean over the queries with ``R >= 1`` (NaN if there is none).
        num_queries: ``N``, every image of the set.
        num_excluded: queries with ``R = 0`` (no other image of their class), left out of
            MAP@R and R-Precision and counted as misses by Recall@K.
        map_at_r_per_query: ``(N,)`` float64, NaN where ``R = 0``.
        r_precision_per_query: ``(N,)`` float64, NaN where ``R = 0``.
        first_hit_rank: ``(N,)`` int64, 1-based rank among the other images of the nearest
            image of the query's class, 0 where ``R = 0``.
    """

    recall: dict[int, float]
    map_at_r: float
    r_precision: float
    num_queries: int
    num_excluded: int
    map_at_r_per_query: np.ndarray
    r_precision_per_query: np.ndarray
    first_hit_rank: np.ndarray


class RetrievalAccumulator:
    """Recall@K, MAP@R and R-Precision of a set queried against itself, gathered from blocks of
    rows of its ``(N, N)`` distances, in any order and of any size (:func:`retrieval_metrics` is
    this over every block of a matrix or :class:`~reid.metrics.rank.DistanceRows`).

    Each query's metrics depend on its own row only, so the result is the same whatever the
    blocks, as long as every row is added exactly once; :meth:`result` checks that. What is kept
    between blocks is a few numbers per query, not the rows.

    Args:
        labels: ``(N,)`` class labels, of any comparable dtype; ``N`` is the size of the set.
        recall_ks: the ``K`` of Recall@K, each in ``[1, N - 1]``.
        device: where the blocks are ranked; ``None``: the CPU.

    Raises:
        ValueError: labels not 1-D or fewer than 2, an empty ``recall_ks`` or a ``K`` outside
            ``[1, N - 1]``.
    """

    def __init__(
        self,
        labels: ArrayLike,
        recall_ks: Sequence[int] = (1, 2, 4, 8),
        device: torch.device | str | None = None,
    ) -> None:
        lab = _to_numpy(labels)
        if lab.ndim != 1:
            raise ValueError(f"labels must be 1-D (N,), got shape {tuple(lab.shape)}")
        num = int(lab.shape[0])
        if num < 2:
            raise ValueError(f"retrieval needs at least 2 images, got {num}")
        codes = _encode_labels(lab, num)
        self.recall_ks = _check_recall_ks(recall_ks, num)
        self.num = num
        self.device = torch.device("cpu" if device is None else device)
        self._r = np.bincount(codes)[codes] - 1  # other images of the query's class
        self._k = max(max(self.recall_ks), int(self._r.max()))  # <= N - 1
        self._codes_t = torch.from_numpy(codes).to(self.device)
        self._r_t = torch.from_numpy(self._r).to(self.device)
        self._hits = {kk: 0 for kk in self.recall_ks}
        self._map_r = np.full(num, np.nan)
        self._r_prec = np.full(num, np.nan)
        self._first_hit = np.zeros(num, dtype=np.int64)
        self._times_added = np.zeros(num, dtype=np.int64)

    def add(self, start: int, rows: np.ndarray | torch.Tensor) -> None:
        """Takes rows ``start:start + len(rows)`` of the distance matrix (numpy array or tensor,
        any real dtype; not modified; their diagonal entries are ignored).

        Raises:
            ValueError: rows that are not ``(B, N)`` or outside ``[0, N)``, or a NaN distance.
        """
        if isinstance(rows, torch.Tensor):
            rows = rows.detach()
        elif not isinstance(rows, np.ndarray):
            rows = np.asarray(rows)
        if rows.ndim != 2 or int(rows.shape[1]) != self.num:
            raise ValueError(f"rows must be (B, {self.num}) distances, got shape {tuple(rows.shape)}")
        start = operator.index(start)
        stop = start + int(rows.shape[0])
        if start < 0 or stop > self.num:
            raise ValueError(f"rows {start}:{stop} are outside the {self.num} rows of the matrix")
        if stop == start:
            return
        device = self.device
        block = _block(rows, start, stop, device)
        diagonal = torch.arange(stop - start, device=device)
        block[diagonal, diagonal + start] = float("inf")  # self
        neighbours = _nearest_others(block, self._k, start)  # (B, k), nearest first
        q_codes = self._codes_t[start:stop]
        q_r = self._r_t[start:stop]
        rel = self._codes_t[neighbours] == q_codes[:, None]  # (B, k)
        for kk in self.recall_ks:
            self._hits[kk] += int(rel[:, :kk].any(1).sum())
        _per_query_precisions(rel, q_r, self._map_r[start:stop], self._r_prec[start:stop])
        self._first_hit[start:stop] = _first_hit_ranks(block, rel, self._codes_t, q_codes, q_r, start)
        self._times_added[start:stop] += 1

    def incomplete(self) -> str | None:
        """What keeps :meth:`result` from answering (rows never added, rows added more than
        once), or None when every row was added exactly once."""
        problems = []
        for what, rows in (
            ("never added", np.flatnonzero(self._times_added == 0)),
            ("added more than once", np.flatnonzero(self._times_added > 1)),
        ):
            if rows.size:
                problems.append(f"{rows.size} rows {what} ({_row_ranges(rows)})")
        if not problems:
            return None
        return f"retrieval metrics of {self.num} rows: " + "; ".join(problems)

    def result(self) -> RetrievalResult:
        """The :class:`RetrievalResult` of the rows added.

        Raises:
            ValueError: not every row was added exactly once (the rows are named).
        """
        problem = self.incomplete()
        if problem is not None:
            raise ValueError(problem)
        valid = self._r >= 1
        num_valid = int(valid.sum())
        return RetrievalResult(
            recall={kk: self._hits[kk] / self.num for kk in self.recall_ks},
            map_at_r=float(np.mean(self._map_r[valid])) if num_valid else float("nan"),
            r_precision=float(np.mean(self._r_prec[valid])) if num_valid else float("nan"),
            num_queries=self.num,
            num_excluded=self.num - num_valid,
            map_at_r_per_query=self._map_r.copy(),
            r_precision_per_query=self._r_prec.copy(),
            first_hit_rank=self._first_hit.copy(),
        )


def _row_ranges(rows: np.ndarray, shown: int = 5) -> str:
    """``a:b, c:d, ...`` ranges of sorted row indices, the first ``shown`` of them."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    ranges = [
        str(rows[a]) if b - a == 1 else f"{rows[a]}:{rows[b - 1] + 1}" for a, b in zip(starts, stops)
    ]
    more = f", ... ({len(ranges) - shown} more ranges)" if len(ranges) > shown else ""
    return ", ".join(ranges[:shown]) + more


def retrieval_metrics(
    distances: DistanceRows | np.ndarray | torch.Tensor,
    labels: ArrayLike,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    device: torch.device | str | None = None,
    *,
    block_rows: int | None = None,
) -> RetrievalResult:
    """Recall@K, MAP@R and R-Precision of a set of images queried against itself: every block of
    rows, in order, into a :class:`RetrievalAccumulator`.

    Args:
        distances: ``(N, N)`` distances of the set to itself (numpy array or tensor, any real
            dtype), or a :class:`~reid.metrics.rank.DistanceRows` producing its rows. Its
            diagonal is ignored and the input is not modified. NaN is not allowed.
        labels: ``(N,)`` class labels, of any comparable dtype.
        recall_ks: the ``K`` of Recall@K, each in ``[1, N - 1]``.
        device: where the rows are ranked; ``None``: the device of ``distances`` if it is a
            tensor, else the CPU.
        block_rows: rows per block; ``None``: the ``block_rows`` of a ``DistanceRows``, about
            4M distances per block for a matrix.

    Returns:
        The :class:`RetrievalResult`.

    Raises:
        ValueError: a matrix that is not 2-D and square, fewer than 2 images, labels of another
            length, an empty ``recall_ks`` or a ``K`` outside ``[1, N - 1]``, a
            ``block_rows < 1`` or a NaN distance.
    """
    dist = _check_distances(distances)
    num = int(dist.shape[0])
    lab = _to_numpy(labels)
    if lab.ndim != 1 or lab.shape[0] != num:
        raise ValueError(f"labels must have shape ({num},), got {tuple(lab.shape)}")
    if device is None:
        device = dist.device if isinstance(dist, torch.Tensor) else torch.device("cpu")
    accumulator = RetrievalAccumulator(lab, recall_ks, device)
    if block_rows is None:
        if isinstance(dist, DistanceRows):
            block_rows = dist.block_rows
        else:
            block_rows = max(1, _BLOCK_ELEMENTS // num)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    for start in range(0, num, block_rows):
        accumulator.add(start, dist[start : start + block_rows])
    return accumulator.result()


def _check_distances(
    distances: DistanceRows | np.ndarray | torch.Tensor,
) -> DistanceRows | np.ndarray | torch.Tensor:
    """The distances as a ``DistanceRows``, a detached tensor or a numpy array, checked square."""
    if isinstance(distances, DistanceRows):
        dist = distances
    elif isinstance(distances, torch.Tensor):
        dist = distances.detach()
    else:
        dist = np.asarray(distances)
    if dist.ndim != 2:
        raise ValueError(f"distances must be a 2-D (N, N) matrix, got shape {tuple(dist.shape)}")
    rows, cols = (int(s) for s in dist.shape)
    if rows != cols:
        raise ValueError(f"distances must be a square (N, N) matrix, got shape {(rows, cols)}")
    if rows < 2:
        raise ValueError(f"retrieval needs at least 2 images, got {rows}")
    return dist


def _encode_labels(labels: ArrayLike, num: int) -> np.ndarray:
    """``(N,)`` int64 codes ``0..C-1`` of the labels (checked 1-D of length ``num``)."""
    lab = _to_numpy(labels)
    if lab.ndim != 1 or lab.shape[0] != num:
        raise ValueError(f"labels must have shape ({num},), got {tuple(lab.shape)}")
    _, codes = np.unique(lab, return_inverse=True)
    return codes.astype(np.int64).reshape(-1)


def _check_recall_ks(recall_ks: Sequence[int], num: int) -> list[int]:
    """The distinct ``K`` of Recall@K in the order given, each checked in ``[1, N - 1]``."""
    ks: list[int] = []
    for value in recall_ks:
        if isinstance(value, bool):
            raise ValueError(f"recall_ks must hold integers, got {value!r}")
        try:
            kk = operator.index(value)
        except TypeError:
            raise ValueError(f"recall_ks must hold integers, got {value!r}") from None
        if kk < 1:
            raise ValueError(f"Recall@K needs K >= 1, got K={kk}")
        if kk > num - 1:
            raise ValueError(
                f"Recall@K with K={kk} is larger than the {num - 1} other images of a query "
                f"(N={num})"
            )
        if kk not in ks:
            ks.append(kk)
    if not ks:
        raise ValueError("recall_ks must hold at least one K")
    return ks


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view or copy of an array-like (tensors are moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _block(
    rows: np.ndarray | torch.Tensor, start: int, stop: int, device: torch.device
) -> torch.Tensor:
    """Rows ``start:stop`` of the distances, given as ``rows``, as a fresh tensor on ``device`` in
    a floating dtype that orders them exactly (float16/bfloat16 -> float32, integers and bools
    -> float64)."""
    rows = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
    if rows.dtype == torch.float64:
        work = torch.float64
    elif rows.dtype.is_floating_point:
        work = torch.float32
    else:
        work = torch.float64
    block = rows.to(device=device, dtype=work, copy=True)
    if bool(torch.isnan(block).any()):
        raise ValueError(f"distances contain NaN in rows {start}:{stop}")
    return block


def _nearest_others(block: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """``(B, k)`` columns of the ``k`` nearest others of each row, in ``(distance, index)`` order.

    ``block`` has ``+inf`` on the self entries; the ``k + 1`` smallest are taken and the self
    entry is dropped (or, where it is not among them, the last one), so other ``+inf`` distances
    are still ranked exactly.
    """
    num_rows = block.shape[0]
    _, cols = smallest_k(block, k + 1)
    selves = torch.arange(start, start + num_rows, device=block.device)
    keep = cols != selves[:, None]
    keep[:, -1] &= ~keep.all(1)  # self not among them: drop the (k+1)-th instead
    return cols[keep].view(num_rows, k)


def _per_query_precisions(
    rel: torch.Tensor, r: torch.Tensor, map_out: np.ndarray, rp_out: np.ndarray
) -> None:
    """Writes MAP@R and R-Precision of the rows with ``R >= 1`` into ``map_out`` / ``rp_out``.

    Args:
        rel: ``(B, k)`` bool, same class as the query, nearest first (``k >= R``).
        r: ``(B,)`` int64, ``R`` of each query.
        map_out, rp_out: ``(B,)`` float64 views filled where ``R >= 1`` (left NaN elsewhere).
    """
    k = rel.shape[1]
    if k == 0:
        return
    pos = torch.arange(1, k + 1, device=rel.device, dtype=torch.float64)
    within = torch.arange(1, k + 1, device=rel.device)[None, :] <= r[:, None]
    hit = (rel & within).to(torch.float64)
    cum = hit.cumsum(1)
    r_f = r.to(torch.float64).clamp_min(1.0)
    map_r = ((cum / pos) * hit).sum(1) / r_f
    r_prec = cum.gather(1, (r.clamp_min(1) - 1)[:, None]).squeeze(1) / r_f
    valid = (r >= 1).cpu().numpy()
    map_out[valid] = map_r.cpu().numpy()[valid]
    rp_out[valid] = r_prec.cpu().numpy()[valid]


def _first_hit_ranks(
    block: torch.Tensor,
    rel: torch.Tensor,
    codes: torch.Tensor,
    q_codes: torch.Tensor,
    q_r: torch.Tensor,
    start: int,
) -> np.ndarray:
    """``(B,)`` 1-based rank of each query's nearest same-class other, 0 where ``R = 0``.

    Read from the top-k where the hit is in it; otherwise counted on the full row: the others
    before the nearest same-class image in ``(distance, index)`` order.
    """
    found = rel.any(1)
    ranks = torch.where(found, rel.to(torch.int8).argmax(1) + 1, 0)
    missing = torch.nonzero(~found & (q_r >= 1)).flatten()
    if missing.numel():
        d = block[missing]
        cols = torch.arange(block.shape[1], device=block.device)
        other = cols[None, :] != (missing + start)[:, None]
        same = (codes[None, :] == q_codes[missing][:, None]) & other
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
        d_min = torch.where(same, d, inf).min(1, keepdim=True).values
        at_min = same & (d == d_min)
        col_min = at_min.to(torch.int8).argmax(1, keepdim=True)  # first such column
        before = (d < d_min) | ((d == d_min) & (cols[None, :] < col_min) & other)
        ranks[missing] = before.sum(1) + 1
    return ranks.cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------
# Clustering quality: k-means and NMI (scikit-learn)
# --------------------------------------------------------------------------------------------


def normalized_mutual_information(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """NMI of two partitions of the same items, ``2 I(A; B) / (H(A) + H(B))``: scikit-learn's
    ``normalized_mutual_info_score`` (natural logarithms, arithmetic-mean normalisation, its
    default), after checking the inputs, clipped to ``[0, 1]`` against rounding.

    It does not depend on the names of the blocks (identical partitions, up to renaming, give 1).
    Where ``H(A) + H(B) = 0`` both are a single block, identical, and the NMI is 1.

    Args:
        labels_a: ``(n,)`` labels of any comparable dtype.
        labels_b: ``(n,)`` labels of the same items.

    Returns:
        The NMI in ``[0, 1]``.

    Raises:
        ValueError: not 1-D, different lengths or no item.
    """
    from sklearn.metrics import normalized_mutual_info_score

    a = _to_numpy(labels_a)
    b = _to_numpy(labels_b)
    if a.ndim != 1 or b.ndim != 1 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"labels must be two 1-D arrays of one length, got shapes {a.shape} and {b.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError("NMI needs at least one item")
    # scikit-learn compares labels as given; encode them so that any comparable dtype works
    _, ca = np.unique(a, return_inverse=True)
    _, cb = np.unique(b, return_inverse=True)
    score = normalized_mutual_info_score(ca.reshape(-1), cb.reshape(-1), average_method="arithmetic")
    return min(1.0, max(0.0, float(score)))


def kmeans(
    features: ArrayLike,
    num_clusters: int,
    seed: int = 0,
    max_iter: int = 100,
) -> np.ndarray:
    """k-means with k-means++ seeding (scikit-learn's ``KMeans``: one initialisation seeded with
    ``seed``, Lloyd iterations until the assignments stop changing, at most ``max_iter``); the
    cluster index of every point.

    Deterministic for a seed. The features are clustered in float64 on the CPU. Fewer distinct
    points than clusters is not an error (some clusters then repeat a point).

    Args:
        features: ``(N, D)`` features (tensor or numpy array), finite.
        num_clusters: ``C`` in ``[1, N]``.
        seed: seed of the k-means++ draws.
        max_iter: maximum number of Lloyd iterations, ``>= 1``.

    Returns:
        ``(N,)`` int64 cluster indices in ``[0, C)``.

    Raises:
        ValueError: features not 2-D, empty or not finite, ``num_clusters`` outside ``[1, N]`` or
            ``max_iter < 1``.
    """
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = features.detach().double().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(x.shape)}")
    num = int(x.shape[0])
    if num < 1:
        raise ValueError("k-means needs at least one point")
    if isinstance(num_clusters, bool) or not 1 <= num_clusters <= num:
        raise ValueError(
            f"num_clusters must be in [1, {num}] (the number of points), got {num_clusters}"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    model = KMeans(
        n_clusters=num_clusters, init="k-means++", n_init=1, max_iter=max_iter, tol=0.0,
        random_state=seed, algorithm="lloyd",
    )
    with warnings.catch_warnings():  # duplicate points: fewer distinct clusters, documented above
        warnings.filterwarnings("ignore", message="Number of distinct clusters", category=ConvergenceWarning)
        clusters = model.fit_predict(x)
    return clusters.astype(np.int64)


def nmi(features: ArrayLike, labels: ArrayLike, seed: int = 0) -> float:
    """NMI between the labels and a k-means clustering into as many clusters as classes.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` class labels.
        seed: seed of :func:`kmeans`.

    Returns:
        :func:`normalized_mutual_information` of ``labels`` and the clusters.

    Raises:
        ValueError: features and labels of different lengths, and as :func:`kmeans`.
    """
    x = features if isinstance(features, torch.Tensor) else np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(x.shape)}")
    lab = _to_numpy(labels)
    if lab.ndim != 1 or lab.shape[0] != x.shape[0]:
        raise ValueError(
            f"labels must have shape ({x.shape[0]},) like the features, got {tuple(lab.shape)}"
        )
    clusters = kmeans(x, int(np.unique(lab).shape[0]), seed=seed)
    return normalized_mutual_information(lab, clusters)
