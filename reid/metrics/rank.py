"""Ranking metrics of a query-gallery distance matrix: CMC, mAP, mINP, per-query AP.

A fast, exact re-implementation of ``torchreid.reid.metrics.rank.evaluate_rank`` (its Python
version, ``use_cython=False``). The numbers are bit-identical to torchreid's:

* Protocol: for each query, gallery entries with the same identity *and* the same camera are
  removed; queries without any remaining true match are skipped.
* Ties: torchreid ranks with ``np.argsort(distmat, axis=1)``, numpy's default (unstable)
  sort. Its order of tied distances depends on the numpy version and the CPU (the SIMD sorts of
  numpy >= 1.25 are not stable even for ten elements), so "stable gallery order" does not
  describe it. A tie only changes the metrics when a true match ties with a kept non-match
  ("mixed tie"); such queries are re-ranked with the very same ``np.argsort`` call
  (``tie_break="numpy"``, the default, identical to torchreid on the same machine) or with a
  stable sort (``tie_break="stable"``: gallery index order, the same on every machine).
* Arithmetic: the per-query AP is summed by numpy over the same ``float64`` vector torchreid
  builds, the CMC rows are summed and divided in ``float32`` exactly as torchreid does.

Speed: a query's metrics only need the rank of each of its true matches, i.e. how many kept
non-matches are closer. Chunk by chunk, one vectorised comparison per row keeps the distances up
to the row's farthest true match (nothing beyond it can rank before a true match), only those
*values* are sorted (numpy's SIMD sort on the CPU; ``torch.sort`` of whole rows on other devices),
each true match's distance is located among them by binary search, and the same-identity entries
(found through an identity index of the gallery, not by comparing every label) are subtracted.
For a good model the kept entries are a small part of the row, so rows are not sorted whole. No Python loop runs over the gallery. (Locating every
gallery distance among the true-match distances instead, with ``torch.searchsorted``, avoids the
sort but measured about 8 times slower per element on a CPU than numpy's value sort.) The CUHK03
metric sorts indices like torchreid, since its sampling depends on the full ranking order.

Memory: only a chunk of rows is ever sorted, so the full matrix need not exist. A
:class:`DistanceRows` computes each chunk from the features when it is needed
(:meth:`DistanceRows.from_features`); the numbers are the same as on the whole matrix, because it
is the same code on the same rows. Peak memory is then the features plus a few ``block x G``
arrays, whatever the number of queries (``docs/evaluation.md``, "Large galleries").

Reference: CMC and mAP as in Zheng et al., "Scalable Person Re-identification: A Benchmark",
ICCV 2015; mINP as in Ye et al., "Deep Learning for Person Re-identification: A Survey and
Outlook", TPAMI 2021 (AGW baseline): INP = |true matches| / rank of the hardest true match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CUHK03_NUM_REPEATS",
    "DistanceRows",
    "NoValidQueryError",
    "RankingResult",
    "evaluate",
    "evaluate_rank",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]
RandomSource = Union[np.random.RandomState, np.random.Generator]
TieBreak = Literal["numpy", "stable"]

#: Number of random gallery samplings per query of the CUHK03 single-gallery-shot metric.
CUHK03_NUM_REPEATS = 10
# Distances handled per chunk (queries x gallery); the fast path keeps two copies of each.
_CHUNK_ELEMENTS = 1 << 23
# float64 cells per block of the exact AP summation.
_AP_BLOCK_ELEMENTS = 1 << 22


class NoValidQueryError(AssertionError, ValueError):
    """No query has a true match in the gallery.

    Derives from ``AssertionError`` (what torchreid raises) and from ``ValueError``.
    """


@dataclass(frozen=True)
class RankingResult:
    """Ranking metrics of one query-gallery evaluation.

    Attributes:
        cmc: ``(R,)`` float32, CMC curve, ``cmc[k - 1]`` is the rank-k accuracy, with
            ``R = min(max_rank, num_gallery)``. A query whose kept gallery is shorter than ``R``
            counts as matched at the ranks past its gallery (torchreid fails on such input).
        mAP: mean of ``ap`` over the valid queries (numpy float64).
        mINP: mean of ``inp`` over the valid queries (numpy float64).
        ap: ``(Q,)`` float64 average precision of every query, NaN where not valid.
        inp: ``(Q,)`` float64 inverse negative penalty of every query, NaN where not valid.
        first_match_rank: ``(Q,)`` int64, 1-based rank of the first true match among the kept
            gallery entries (the CMC metric uses one random sampling per identity instead),
            0 where not valid.
        valid: ``(Q,)`` bool, queries with at least one true match.
        num_valid: number of valid queries.
    """

    cmc: np.ndarray
    mAP: np.float64
    mINP: np.float64
    ap: np.ndarray
    inp: np.ndarray
    first_match_rank: np.ndarray
    valid: np.ndarray
    num_valid: int


@dataclass(frozen=True)
class _Ranks:
    """True-match ranks of every query (CSR layout over queries).

    Attributes:
        ranks: ``(M,)`` int64, 1-based ranks among the kept gallery of the true matches, query
            after query, increasing within a query.
        offsets: ``(Q + 1,)`` int64, query ``q`` owns ``ranks[offsets[q]:offsets[q + 1]]``.
        kept_len: ``(Q,)`` int64, number of kept gallery entries of each query.
        cmc_rows: ``(V, R)`` float32, per-valid-query CMC rows padded past ``row_len``.
        row_len: ``(V,)`` int64, length torchreid gives each valid query's CMC row.
    """

    ranks: np.ndarray
    offsets: np.ndarray
    kept_len: np.ndarray
    cmc_rows: np.ndarray
    row_len: np.ndarray


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    use_metric_cuhk03: bool = False,
    use_cython: bool = True,
    *,
    tie_break: TieBreak = "numpy",
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    rng: RandomSource | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, np.float64]:
    """Drop-in replacement for ``torchreid.reid.metrics.evaluate_rank``: ``(cmc, mAP)``.

    Same arguments, same numbers and same failures as torchreid's Python evaluation: the CMC
    has ``min(max_rank, num_gallery, kept gallery length)`` entries, a ``ValueError`` is raised
    where torchreid's CMC rows would have different lengths (``max_rank`` larger than some
    queries' kept gallery), an ``AssertionError`` (:class:`NoValidQueryError`) where no query
    has a true match. See :func:`evaluate` for the arguments.

    Args:
        use_cython: ignored (accepted for signature compatibility with torchreid).

    Returns:
        ``cmc``: ``(R,)`` float32; ``mAP``: numpy float64.
    """
    del use_cython
    result, ranks = _evaluate(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank,
        use_metric_cuhk03,
        tie_break=tie_break,
        chunk_size=chunk_size,
        device=device,
        rng=rng,
        seed=seed,
    )
    lengths = np.unique(ranks.row_len)
    if lengths.size > 1:
        raise ValueError(
            f"CMC rows of different lengths {lengths.tolist()}: max_rank={max_rank} exceeds the "
            "kept gallery of some queries (torchreid's evaluate_rank fails on this input too); "
            "use reid.metrics.evaluate, which pads them"
        )
    rows = np.ascontiguousarray(ranks.cmc_rows[:, : int(lengths[0])])
    cmc = rows.sum(0) / float(result.num_valid)
    return cmc, result.mAP


def evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    use_metric_cuhk03: bool = False,
    *,
    tie_break: TieBreak = "numpy",
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    rng: RandomSource | None = None,
    seed: int | None = None,
) -> RankingResult:
    """CMC, mAP, mINP and per-query AP of a distance matrix (torchreid's protocol and numbers).

    Args:
        distmat: ``(Q, G)`` distances (numpy array or tensor, any real dtype, any device);
            smaller is more similar.
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        max_rank: number of CMC ranks; clipped to ``G`` with a logged warning (torchreid's
            "Note: number of gallery samples is quite small") when ``G < max_rank``.
        use_metric_cuhk03: CMC of the CUHK03 single-gallery-shot protocol (torchreid's
            ``eval_cuhk03``): per valid query, 10 times one random gallery entry per identity,
            averaged. mAP and mINP still use the whole kept gallery.
        tie_break: order of equal distances. ``"numpy"``: the order of ``np.argsort``'s
            default sort on this machine, as torchreid; ``"stable"``: gallery index order.
        chunk_size: queries per chunk; ``None`` picks about 8M distances per chunk.
        device: where the rows are sorted; ``None``: the device of ``distmat`` if it is a
            tensor, else the CPU. (The CUHK03 metric always runs on the CPU.)
        rng: random source of the CUHK03 sampling (``RandomState`` draws equal torchreid's).
        seed: seeds a fresh ``np.random.RandomState`` when ``rng`` is ``None``. With neither,
            numpy's global random state is used and advanced, exactly as torchreid does; so
            after ``np.random.seed(s)`` both give the same numbers, as does ``seed=s``.

    Returns:
        The :class:`RankingResult`.

    Raises:
        NoValidQueryError: no query has a true match in the gallery.
        ValueError: inconsistent shapes, negative ``max_rank`` or unknown ``tie_break``.
    """
    result, _ = _evaluate(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank,
        use_metric_cuhk03,
        tie_break=tie_break,
        chunk_size=chunk_size,
        device=device,
        rng=rng,
        seed=seed,
    )
    return result


def _evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int,
    use_metric_cuhk03: bool,
    *,
    tie_break: TieBreak,
    chunk_size: int | None,
    device: torch.device | str | None,
    rng: RandomSource | None,
    seed: int | None,
) -> tuple[RankingResult, _Ranks]:
    """Shared body of :func:`evaluate` and :func:`evaluate_rank`."""
    if tie_break not in ("numpy", "stable"):
        raise ValueError(f"tie_break must be 'numpy' or 'stable', got {tie_break!r}")
    if max_rank < 0:
        raise ValueError(f"max_rank must be >= 0, got {max_rank}")
    if isinstance(distmat, DistanceRows):
        dist = distmat
    else:
        dist = distmat.detach() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (Q, G), got shape {tuple(dist.shape)}")
    num_q, num_g = (int(s) for s in dist.shape)
    q_pid, g_pid = _encode_pair(q_pids, g_pids, num_q, num_g, "pids")
    q_cam, g_cam = _encode_pair(q_camids, g_camids, num_q, num_g, "camids")
    if num_g < max_rank:
        logger.warning("Note: number of gallery samples is quite small, got %d", num_g)
        max_rank = num_g
    if chunk_size is None:
        if isinstance(dist, DistanceRows):
            chunk_size = dist.block_rows
        else:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if device is None:
        device = dist.device if isinstance(dist, torch.Tensor) else torch.device("cpu")
    labels = (q_pid, q_cam, g_pid, g_cam)

    if use_metric_cuhk03:
        source = _random_source(rng, seed)
        ranks = _cuhk03_ranks(dist, labels, max_rank, tie_break, chunk_size, source)
    else:
        ranks = _market_ranks(dist, labels, max_rank, tie_break, chunk_size, torch.device(device))
    return _summarise(ranks, num_q), ranks


def _encode_pair(
    query: ArrayLike, gallery: ArrayLike, num_q: int, num_g: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Maps query and gallery labels of any comparable dtype to shared int64 codes."""
    q = _to_numpy(query).reshape(-1)
    g = _to_numpy(gallery).reshape(-1)
    if q.shape[0] != num_q or g.shape[0] != num_g:
        raise ValueError(
            f"q_{name} and g_{name} must have {num_q} and {num_g} entries, "
            f"got {q.shape[0]} and {g.shape[0]}"
        )
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    return codes[:num_q], codes[num_q:]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view or copy of an array-like (tensors are moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _random_source(rng: RandomSource | None, seed: int | None) -> RandomSource | None:
    """The CUHK03 random source; ``None`` stands for numpy's global state."""
    if rng is not None:
        return rng
    if seed is not None:
        return np.random.RandomState(seed)
    return None


def _draw(source: RandomSource | None, highs: np.ndarray) -> np.ndarray:
    """One uniform integer in ``[0, high)`` per entry of ``highs``.

    With a ``RandomState`` (or the global one) this consumes the stream exactly as the
    successive ``np.random.choice(idxs)`` calls of torchreid do (no draw for ``high == 1``).
    """
    if source is None:
        return np.random.randint(0, highs)
    if isinstance(source, np.random.Generator):
        return source.integers(0, highs)
    return source.randint(0, highs)


def _work_dtype(dtype: torch.dtype | np.dtype) -> np.dtype:
    """Floating dtype that orders (and ties) values exactly as ``dtype`` does.

    Half precision goes to float32 (exact); integers and bools go to float64, where distinct
    huge integers may merge into ties, which only sends their queries to the sorting path.
    """
    if isinstance(dtype, torch.dtype):
        if dtype == torch.float64:
            return np.dtype(np.float64)
        return np.dtype(np.float32 if dtype.is_floating_point else np.float64)
    if dtype in (np.float32, np.float16):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class DistanceRows:
    """A ``(Q, G)`` distance matrix that is computed block of rows by block of rows, never whole.

    :func:`evaluate` and :func:`evaluate_rank` take it in place of a matrix and rank its rows
    ``block_rows`` at a time, with the same code and hence the same numbers as on the full matrix
    (every tie order, the CUHK03 sampling): memory is ``block_rows x G`` distances plus what
    ``rows_of`` needs, whatever ``Q``. The last block is cached (a block with ties is read twice).

    Args:
        rows_of: ``(start, stop) -> (stop - start, G)`` distances (numpy array or tensor).
        shape: ``(Q, G)``.
        block_rows: rows per block.
        dtype: dtype of the rows (float32 for torchreid's distances).
    """

    ndim = 2

    @classmethod
    def from_features(
        cls,
        query: torch.Tensor,
        gallery: torch.Tensor,
        distances: Callable[[torch.Tensor, torch.Tensor], np.ndarray | torch.Tensor],
        block_mb: float = 128.0,
    ) -> "DistanceRows":
        """The rows ``distances(query[start:stop], gallery)``, blocks of about ``block_mb`` MB, in
        float64 when either feature set is float64 (float32 otherwise).

        Args:
            query: ``(Q, D)`` features.
            gallery: ``(G, D)`` features.
            distances: ``(b, D), (G, D) -> (b, G)`` distances, e.g. the model's own.
            block_mb: size of one block of float32 rows.
        """
        num_q, num_g = int(query.shape[0]), int(gallery.shape[0])
        # the distances keep the features' precision: float64 features give float64 rows, ranked
        # exactly as the dense float64 matrix is (casting them to float32 merged close distances)
        wide = torch.float64 in (getattr(query, "dtype", None), getattr(gallery, "dtype", None))
        dtype = np.float64 if wide else np.float32
        block_rows = max(1, min(num_q, int(block_mb * 2**20 // (np.dtype(dtype).itemsize * max(num_g, 1)))))
        return cls(lambda start, stop: distances(query[start:stop], gallery), (num_q, num_g), block_rows, dtype=dtype)

    def __init__(
        self,
        rows_of: Callable[[int, int], np.ndarray | torch.Tensor],
        shape: tuple[int, int],
        block_rows: int,
        dtype: np.dtype | type = np.float32,
    ) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return_freed_blocks()
        self.rows_of = rows_of
        self.shape = (int(shape[0]), int(shape[1]))
        self.block_rows = int(block_rows)
        self.dtype = np.dtype(dtype)
        self._cached: tuple[int, int, np.ndarray] | None = None

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("DistanceRows supports row slices only")
        start, stop, _ = key.indices(self.shape[0])
        if self._cached is None or self._cached[:2] != (start, stop):
            rows = self.rows_of(start, stop)
            rows = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
            if rows.shape != (stop - start, self.shape[1]):
                raise ValueError(
                    f"rows_of({start}, {stop}) returned shape {rows.shape}, expected {(stop - start, self.shape[1])}"
                )
            self._cached = (start, stop, np.asarray(rows, dtype=self.dtype))
        return self._cached[2]


_FREED_BLOCKS_RETURNED = False
#: glibc's ``mallopt`` parameter of the mmap threshold, and the fixed threshold set (1 MB).
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES = -3, 1 << 20


def return_freed_blocks() -> bool:
    """Makes glibc serve blocks of 1 MB and more with ``mmap``, so that every block of rows a
    streaming evaluation frees goes back to the system at once (the process sets it itself, as
    ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment would). glibc's default threshold rises
    with the blocks freed, up to 32 MB, after which freed row blocks stay in the heap and the
    resident size creeps up block after block. Once per process; where the C library is not glibc
    (or does not answer), nothing changes. Returns whether the threshold is set."""
    global _FREED_BLOCKS_RETURNED
    if _FREED_BLOCKS_RETURNED:
        return True
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            _FREED_BLOCKS_RETURNED = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except OSError:  # pragma: no cover - no C library to load
        pass
    return _FREED_BLOCKS_RETURNED


def _rows_numpy(dist: np.ndarray | torch.Tensor | DistanceRows, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the distance matrix as numpy, in its own dtype."""
    if isinstance(dist, torch.Tensor):
        return dist[start:stop].cpu().numpy()
    return dist[start:stop]


def _argsort(rows: np.ndarray, tie_break: TieBreak) -> np.ndarray:
    """``(B, G)`` orders of the rows: numpy's default sort (as torchreid) or a stable one."""
    if tie_break == "numpy":
        return np.argsort(rows, axis=1)
    return np.argsort(rows, axis=1, kind="stable")


# --------------------------------------------------------------------------------------------
# Market-1501 protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GalleryIndex:
    """Gallery entries grouped by identity, to find a query's same-identity entries.

    Attributes:
        order: ``(G,)`` gallery indices sorted by identity code (stable).
        start: ``(C,)`` first position in ``order`` of each identity code.
        count: ``(C,)`` number of gallery entries of each identity code.
        cam: ``(G,)`` camera codes.
    """

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray
    cam: np.ndarray

    @classmethod
    def build(cls, g_pid: np.ndarray, g_cam: np.ndarray, num_codes: int) -> "_GalleryIndex":
        """Index of the gallery identity codes ``g_pid`` (codes below ``num_codes``)."""
        count = np.bincount(g_pid, minlength=num_codes)
        return cls(np.argsort(g_pid, kind="stable"), np.cumsum(count) - count, count, g_cam)

    def same_identity(
        self, q_pid: np.ndarray, q_cam: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gallery columns sharing each query's identity, padded to the longest.

        Args:
            q_pid, q_cam: ``(B,)`` codes.

        Returns:
            ``cols`` ``(B, S)`` gallery indices (0 in padding), ``valid`` ``(B, S)`` bool,
            ``junk`` ``(B, S)`` bool: same camera too (removed by the protocol).
        """
        count = self.count[q_pid]
        j = np.arange(int(count.max(initial=0)))
        valid = j[None, :] < count[:, None]
        pos = np.where(valid, self.start[q_pid][:, None] + j[None, :], 0)
        cols = self.order[pos] if self.order.size else np.zeros_like(pos)
        junk = valid & (self.cam[cols] == q_cam[:, None])
        return cols, valid, junk


def _market_ranks(
    dist: np.ndarray | torch.Tensor,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    max_rank: int,
    tie_break: TieBreak,
    chunk_size: int,
    device: torch.device,
) -> _Ranks:
    """True-match ranks of every query, chunk by chunk, with the sorting fallback."""
    q_pid, q_cam, g_pid, g_cam = labels
    num_q, num_g = q_pid.shape[0], g_pid.shape[0]
    num_codes = int(max(q_pid.max(initial=-1), g_pid.max(initial=-1))) + 1
    gallery = _GalleryIndex.build(g_pid, g_cam, num_codes)
    per_query: list[np.ndarray] = []
    kept_len = np.empty(num_q, dtype=np.int64)
    num_sorted = 0
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        cols, valid, junk = gallery.same_identity(q_pid[start:stop], q_cam[start:stop])
        sorted_rows, same, finite = _sorted_chunk(dist, start, stop, cols, valid & ~junk, device)
        ranks, n_rel, needs_sort = _chunk_match_ranks(sorted_rows, same, valid, junk, finite)
        kept_len[start:stop] = num_g - junk.sum(1)
        chunk_lists = [ranks[b, : n_rel[b]] for b in range(stop - start)]
        redo = np.flatnonzero(needs_sort)
        if redo.size:
            num_sorted += redo.size
            redo_q = redo + start
            sorted_ranks, _ = _sorted_match_ranks(
                _rows_numpy(dist, start, stop)[redo],
                q_pid[redo_q],
                q_cam[redo_q],
                g_pid,
                g_cam,
                tie_break,
            )
            for b, r in zip(redo, sorted_ranks):
                chunk_lists[b] = r
        per_query.extend(chunk_lists)
    if num_sorted:
        logger.debug("%d of %d queries ranked by sorting (ties or non-finite)", num_sorted, num_q)
    return _assemble(per_query, kept_len, max_rank, market_cmc=True)


def _sorted_chunk(
    dist: np.ndarray | torch.Tensor, start: int, stop: int, cols: np.ndarray, match: np.ndarray,
    device: torch.device,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """What :func:`_chunk_match_ranks` counts in, for rows ``start:stop``: per row, ascending, every
    distance up to the row's farthest true match (+inf padding); the distances at ``cols``; which
    rows are finite.

    Only values are sorted (no indices, so no tie order is involved). On the CPU only the
    distances that can rank before a true match are sorted (:func:`_candidates_numpy`); on another
    device the whole row (``torch.sort`` is fast there).

    Returns:
        ``(B, W)`` tensor on ``device`` (``W <= G``), ``(B, S)`` numpy, the distances at ``cols``,
        and ``(B,)`` bool, the rows without NaN or infinity; in the working dtype.
    """
    if device.type == "cpu":
        return _candidates_numpy(dist, start, stop, cols, match)
    return _sorted_chunk_torch(dist, start, stop, cols, device)


def _candidates_numpy(
    dist: np.ndarray | torch.Tensor, start: int, stop: int, cols: np.ndarray, match: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`_sorted_chunk` on the CPU without sorting whole rows: a query's ranks only count the
    entries closer than (or as close as) its farthest true match, so one vectorised comparison
    per row keeps those and only they are sorted (numpy's SIMD sort). How many there are depends on
    the model: few for a good one (the ranks are small), the whole row at worst, as before."""
    rows = np.asarray(_rows_numpy(dist, start, stop), dtype=_work_dtype(dist.dtype))
    same = np.take_along_axis(rows, cols, axis=1)
    finite = np.isfinite(rows.min(axis=1)) & np.isfinite(rows.max(axis=1))  # NaN propagates too
    farthest = np.where(match, same, -np.inf).max(axis=1, initial=-np.inf)
    keep = rows <= farthest[:, None]
    counts = keep.sum(axis=1)
    padded = np.full((rows.shape[0], max(int(counts.max(initial=0)), 1)), np.inf, dtype=rows.dtype)
    for b in np.flatnonzero(counts):
        padded[b, : counts[b]] = np.sort(rows[b][keep[b]])
    return torch.from_numpy(padded), same, finite


def _sorted_chunk_torch(
    dist: np.ndarray | torch.Tensor, start: int, stop: int, cols: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`_sorted_chunk` with ``torch.sort`` of the whole rows on ``device``."""
    dtype = _work_dtype(dist.dtype)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    if isinstance(dist, torch.Tensor):
        rows = dist[start:stop].to(device=device, dtype=torch_dtype)
    else:
        rows = torch.from_numpy(np.asarray(dist[start:stop], dtype=dtype)).to(device)
    same = rows.gather(1, torch.from_numpy(cols).to(device)).cpu().numpy()
    sorted_rows = torch.sort(rows, dim=1).values
    if sorted_rows.shape[1]:
        finite = torch.isfinite(sorted_rows[:, [0, -1]]).all(1).cpu().numpy()
    else:
        finite = np.ones(sorted_rows.shape[0], dtype=bool)
    return sorted_rows, same, finite


def _chunk_match_ranks(
    sorted_rows: torch.Tensor, same: np.ndarray, valid: np.ndarray, junk: np.ndarray, finite: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches of a chunk of queries from the sorted distance values.

    The rank (1-based, among kept entries) of the k-th nearest true match, at distance
    ``t_k``, is ``k`` plus the number of kept non-matches closer than ``t_k``: the number of
    all entries closer (a binary search in the sorted row) minus the number of closer
    same-identity entries (true matches and removed ones). Any sort gives this rank unless a
    kept non-match is at exactly ``t_k`` (then the sort's tie order decides) or the row is not
    finite; those queries are flagged for the sorting path.

    Args:
        sorted_rows: ``(B, W)`` distances, each row sorted ascending (any device): the whole row,
            or at least every entry up to the row's farthest true match, padded with +inf.
        same: ``(B, S)`` distances of each query's same-identity gallery entries.
        valid: ``(B, S)`` bool, real entries of ``same`` (the rest is padding).
        junk: ``(B, S)`` bool, entries of ``same`` removed by the protocol (same camera).
        finite: ``(B,)`` bool, the rows without NaN or infinity (the others are redone by sorting).

    Returns:
        ``ranks`` ``(B, M)`` int64 (entries past ``n_rel`` are meaningless), ``n_rel`` ``(B,)``
        number of true matches, ``needs_sort`` ``(B,)`` bool.
    """
    num_b, num_g = sorted_rows.shape
    match = valid & ~junk
    n_rel = match.sum(1)
    m_max = int(n_rel.max(initial=0))
    if m_max == 0 or num_g == 0:
        return np.zeros((num_b, 0), dtype=np.int64), n_rel, np.zeros(num_b, dtype=bool)
    thresholds = np.sort(np.where(match, same, np.inf), axis=1)[:, :m_max]
    # #(v <= t) is #(v < next float above t): one search gives both counts.
    probes = np.concatenate([thresholds, np.nextafter(thresholds, np.inf)], axis=1)
    probes_t = torch.from_numpy(probes).to(sorted_rows.device)
    below_all = torch.searchsorted(sorted_rows, probes_t).cpu().numpy()
    # Padding (+inf) never counts below a finite threshold; rows with infinities are redone.
    same_sorted = torch.from_numpy(np.sort(np.where(valid, same, np.inf), axis=1))
    below_same = torch.searchsorted(same_sorted, torch.from_numpy(probes)).numpy()
    below = below_all - below_same  # kept non-matches below each probe
    closer, at_most = below[:, :m_max], below[:, m_max:]
    k = np.arange(m_max)
    real = k[None, :] < n_rel[:, None]
    needs_sort = ~finite | ((at_most != closer) & real).any(1)
    return closer + k + 1, n_rel, needs_sort


def _sorted_match_ranks(
    rows: np.ndarray,
    q_pid: np.ndarray,
    q_cam: np.ndarray,
    g_pid: np.ndarray,
    g_cam: np.ndarray,
    tie_break: TieBreak,
) -> tuple[list[np.ndarray], np.ndarray]:
    """True-match ranks (and kept gallery pids in rank order) by sorting rows, as torchreid.

    Args:
        rows: ``(B, G)`` distances in the caller's dtype.
        q_pid, q_cam: ``(B,)`` codes; g_pid, g_cam: ``(G,)`` codes.
        tie_break: see :func:`evaluate`.

    Returns:
        Per row the 1-based ranks of its true matches among the kept entries, and the ``(B, G)``
        order of the sort.
    """
    order = _argsort(np.asarray(rows), tie_break)
    pid_sorted = g_pid[order]
    same_pid = pid_sorted == q_pid[:, None]
    keep = ~(same_pid & (g_cam[order] == q_cam[:, None]))
    position = np.cumsum(keep, axis=1)  # 1-based rank among kept entries
    match = same_pid & keep
    return [position[b][match[b]] for b in range(rows.shape[0])], order


# --------------------------------------------------------------------------------------------
# CUHK03 single-gallery-shot protocol
# --------------------------------------------------------------------------------------------


def _cuhk03_ranks(
    dist: np.ndarray | torch.Tensor,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    max_rank: int,
    tie_break: TieBreak,
    chunk_size: int,
    source: RandomSource | None,
) -> _Ranks:
    """True-match ranks and sampled CMC rows of torchreid's ``eval_cuhk03``.

    Sorting is needed here: the sampling walks the identities in order of first appearance in
    the ranking, and draws per identity among its entries in ranking order.
    """
    q_pid, q_cam, g_pid, g_cam = labels
    num_q = q_pid.shape[0]
    per_query: list[np.ndarray] = []
    kept_len = np.empty(num_q, dtype=np.int64)
    cmc_rows: list[np.ndarray] = []
    row_len: list[int] = []
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        rows = _rows_numpy(dist, start, stop)
        ranks, order = _sorted_match_ranks(
            rows, q_pid[start:stop], q_cam[start:stop], g_pid, g_cam, tie_break
        )
        for b, q in enumerate(range(start, stop)):
            pids = g_pid[order[b]]
            keep = ~((pids == q_pid[q]) & (g_cam[order[b]] == q_cam[q]))
            kept_pids = pids[keep]
            kept_len[q] = kept_pids.shape[0]
            per_query.append(ranks[b])
            if ranks[b].size:
                row, length = _cuhk03_cmc_row(kept_pids, q_pid[q], max_rank, source)
                cmc_rows.append(row)
                row_len.append(length)
    assembled = _assemble(per_query, kept_len, max_rank, market_cmc=False)
    rows_arr = np.stack(cmc_rows) if cmc_rows else np.zeros((0, max_rank), dtype=np.float32)
    return _Ranks(
        assembled.ranks, assembled.offsets, kept_len, rows_arr, np.asarray(row_len, dtype=np.int64)
    )


def _cuhk03_cmc_row(
    kept_pids: np.ndarray, q_pid: int, max_rank: int, source: RandomSource | None
) -> tuple[np.ndarray, int]:
    """CMC row of one valid query under the single-gallery-shot sampling of torchreid.

    Args:
        kept_pids: ``(L,)`` identity codes of the kept gallery entries in ranking order.
        q_pid: the query's identity code.
        max_rank: CMC length (already clipped to the gallery size).
        source: random source (``None``: numpy's global state).

    Returns:
        The ``(max_rank,)`` float32 row (padded with 1 past the number of identities) and the
        length torchreid gives it, ``min(max_rank, number of gallery identities)``.
    """
    uniq, first, inverse, counts = np.unique(
        kept_pids, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    appearance = np.argsort(first)  # identities in order of first appearance
    by_identity = np.argsort(inverse, kind="stable")  # positions grouped by identity, ascending
    starts = np.cumsum(counts) - counts
    sizes = counts[appearance]
    draws = _draw(source, np.tile(sizes, CUHK03_NUM_REPEATS)).reshape(CUHK03_NUM_REPEATS, -1)
    sampled = by_identity[starts[appearance][None, :] + draws]  # (repeats, identities)
    target = int(np.flatnonzero(uniq[appearance] == q_pid)[0])
    first_hit = (sampled < sampled[:, target : target + 1]).sum(1)  # 0-based rank per repeat
    num_ids = uniq.shape[0]
    hits = (np.arange(max_rank)[None, :] >= first_hit[:, None]).sum(0)
    row = hits.astype(np.float32)
    row /= CUHK03_NUM_REPEATS
    return row, min(max_rank, num_ids)


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _assemble(
    per_query: list[np.ndarray], kept_len: np.ndarray, max_rank: int, market_cmc: bool
) -> _Ranks:
    """Packs per-query ranks; builds the Market-1501 CMC rows when ``market_cmc``."""
    counts = np.fromiter((r.size for r in per_query), dtype=np.int64, count=len(per_query))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ranks = np.concatenate(per_query).astype(np.int64) if per_query else np.zeros(0, np.int64)
    valid = counts > 0
    if market_cmc:
        first = ranks[offsets[:-1][valid]] - 1  # 0-based position of the first true match
        cmc_rows = (np.arange(max_rank)[None, :] >= first[:, None]).astype(np.float32)
        row_len = np.minimum(kept_len[valid], max_rank)
    else:
        cmc_rows = np.zeros((0, max_rank), dtype=np.float32)
        row_len = np.zeros(0, dtype=np.int64)
    return _Ranks(ranks, offsets, kept_len, cmc_rows, row_len)


def _summarise(ranks: _Ranks, num_q: int) -> RankingResult:
    """CMC, AP, INP and their means from the true-match ranks."""
    counts = np.diff(ranks.offsets)
    valid = counts > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise NoValidQueryError("Error: all query identities do not appear in gallery")
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    first_match_rank = np.zeros(num_q, dtype=np.int64)
    valid_ap = _average_precisions(ranks.ranks, ranks.offsets, ranks.kept_len, valid)
    ap[valid] = valid_ap
    last = ranks.ranks[ranks.offsets[1:][valid] - 1]
    valid_inp = counts[valid] / last.astype(np.float64)
    inp[valid] = valid_inp
    first_match_rank[valid] = ranks.ranks[ranks.offsets[:-1][valid]]
    cmc = ranks.cmc_rows.sum(0) / float(num_valid)
    return RankingResult(
        cmc=cmc,
        mAP=np.mean(valid_ap),
        mINP=np.mean(valid_inp),
        ap=ap,
        inp=inp,
        first_match_rank=first_match_rank,
        valid=valid,
        num_valid=num_valid,
    )


def _average_precisions(
    ranks: np.ndarray, offsets: np.ndarray, kept_len: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """AP of the valid queries, bit-identical to torchreid's.

    torchreid sums the float64 vector ``precision@i * rel_i`` over all kept entries with
    numpy's pairwise summation, whose rounding depends on the vector's length and on where the
    non-zeros sit. The same vectors are rebuilt (zeros except ``k / r_k`` at the true matches),
    grouped by length so that one numpy row-sum serves many queries.

    Args:
        ranks: ``(M,)`` 1-based ranks; offsets: ``(Q + 1,)``; kept_len: ``(Q,)``;
        valid: ``(Q,)`` bool, queries with ranks.

    Returns:
        ``(V,)`` float64 AP of the valid queries, in query order.
    """
    queries = np.flatnonzero(valid)
    n_rel = np.diff(offsets)[queries]
    within = np.arange(ranks.shape[0]) - np.repeat(offsets[:-1], np.diff(offsets))
    precision = (within + 1).astype(np.float64) / ranks.astype(np.float64)
    out = np.empty(queries.shape[0], dtype=np.float64)
    lengths = kept_len[queries]
    for length in np.unique(lengths):
        members = np.flatnonzero(lengths == length)
        block = max(1, _AP_BLOCK_ELEMENTS // int(length))
        for s in range(0, members.shape[0], block):
            idx = members[s : s + block]
            qs = queries[idx]
            cnt = n_rel[idx]
            row = np.repeat(np.arange(idx.shape[0]), cnt)
            entries = np.arange(row.shape[0]) + np.repeat(offsets[qs] - (np.cumsum(cnt) - cnt), cnt)
            dense = np.zeros((idx.shape[0], int(length)), dtype=np.float64)
            dense[row, ranks[entries] - 1] = precision[entries]
            out[idx] = dense.sum(axis=1) / n_rel[idx]
    return out
