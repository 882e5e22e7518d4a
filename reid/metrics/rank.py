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
non-matches are closer. On the CPU they are counted, chunk of queries by chunk: one vectorised
comparison per row marks the distances up to the row's farthest true match (nothing beyond it can
rank before a true match), the same-identity entries (found through an identity index of the
gallery, not by comparing every label) are unmarked, and each true match's distance is located by
binary search among the few marked values of its row, sorted. How many are marked depends on the
model: few for a good one, the whole row at worst. On other devices whole rows are sorted
(``torch.sort`` is fast there) and searched. The per-query AP follows numpy's pairwise summation
over the true matches only (:func:`_sparse_sums`). No Python loop runs over the gallery. The
CUHK03 metric sorts indices like torchreid, since its sampling depends on the full ranking order.

Memory: only a chunk of rows is ever read at a time, so the full matrix need not exist. A
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
from typing import Sequence, Union

import numpy as np
import torch

from .match_ranks import CUHK03_NUM_REPEATS, TieBreak
from .match_ranks import Ranks as _Ranks
from .match_ranks import cuhk03_ranks, market_ranks
from .rows import DistanceRows, return_freed_blocks  # noqa: F401 (re-exported)

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

# Distances handled per chunk (queries x gallery); the fast path keeps two copies of each.
_CHUNK_ELEMENTS = 1 << 23
# float64 cells per block of the AP summation's dense leaves (a block that stays in the cache sums
# in half the time of one of 4M cells).
_AP_BLOCK_ELEMENTS = 1 << 16


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
        ranks = cuhk03_ranks(dist, labels, max_rank, tie_break, chunk_size, source)
    else:
        ranks = market_ranks(dist, labels, max_rank, tie_break, chunk_size, torch.device(device))
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

    torchreid's AP of a query is ``v.sum() / n_rel``, ``v`` a float64 vector as long as the
    query's kept gallery, zero except ``k / r_k`` at index ``r_k - 1`` (``r_k`` the rank of its
    ``k``-th true match). numpy sums a vector pairwise: up to 128 entries in one fixed pattern,
    longer ones as the sum of the first ``n2`` entries (``n // 2`` rounded down to a multiple of
    8) plus the sum of the rest, recursively. :func:`_sparse_sums` walks that same tree over the
    true matches alone, so every rounding step is numpy's and the cost follows the number of
    true matches, not the gallery size (11,659 queries x 82,161 kept entries, 27 true matches
    each: 0.03 s, against 0.56 s to fill and sum the 958M dense cells).

    Args:
        ranks: ``(M,)`` 1-based ranks; offsets: ``(Q + 1,)``; kept_len: ``(Q,)``;
        valid: ``(Q,)`` bool, queries with ranks.

    Returns:
        ``(V,)`` float64 AP of the valid queries, in query order.
    """
    counts = np.diff(offsets)
    within = np.arange(ranks.shape[0]) - np.repeat(offsets[:-1], counts)
    precision = (within + 1).astype(np.float64) / ranks.astype(np.float64)
    mine = np.repeat(valid, counts)
    sums = _sparse_sums(
        ranks[mine].astype(np.int64) - 1,
        precision[mine],
        counts[valid],
        kept_len[valid].astype(np.int64),
    )
    return sums / counts[valid]


def _sparse_sums(
    pos: np.ndarray, val: np.ndarray, counts: np.ndarray, length: np.ndarray
) -> np.ndarray:
    """``v.sum()`` of float64 vectors given by their non-zeros, bit-identical to numpy's.

    Vector ``i`` has ``length[i]`` entries, zero except ``val[j]`` at index ``pos[j]`` for its
    ``counts[i] >= 1`` entries ``j`` (the vectors own consecutive runs of ``pos`` in order; the
    positions increase within a vector; the values are positive).

    Exact because adding ``0.0`` changes nothing: in numpy's summation tree a node without a
    non-zero sums to ``0.0``, one with a single non-zero to that value, and one whose non-zeros
    all lie in one half to that half's sum. The walk goes down from each vector's root through
    such nodes; a node with non-zeros in both halves is split, and its sum is the two halves'
    sums added in numpy's order; a node at most 128 wide with several non-zeros is filled in
    densely and summed by numpy itself, as a row of a 2-D array of exactly that width.
    """
    n = counts.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.float64)
    bounds = np.cumsum(counts)
    span = int(length.max()) + 1
    # Increasing over all non-zeros (vector, then position): one searchsorted finds, for many
    # nodes at once, the first non-zero at or after each node's split.
    key = np.repeat(np.arange(n, dtype=np.int64) * span, counts) + pos
    # A sum per vector, then one per half of a split node (at most 2 per extra non-zero).
    sums = np.empty(n + 2 * (pos.shape[0] - n), dtype=np.float64)
    next_slot = n
    # The live nodes: the slot of their sum, their vector, first index, width, non-zeros [lo, hi).
    slot, vec = np.arange(n), np.arange(n)
    off, width = np.zeros(n, dtype=np.int64), length
    lo, hi = bounds - counts, bounds
    joins = []  # per round: slots of the nodes split in two, of their left and right halves
    leaves = []  # per round: (slot, first index, width, lo, hi) of the nodes to sum densely
    while slot.shape[0]:
        one = hi - lo == 1
        sums[slot[one]] = val[lo[one]]
        small = ~one & (width <= 128)
        leaves.append((slot[small], off[small], width[small], lo[small], hi[small]))
        go = ~(one | small)
        slot, vec, off, width, lo, hi = (a[go] for a in (slot, vec, off, width, lo, hi))
        half = width // 2
        half -= half % 8
        split = off + half
        left = pos[hi - 1] < split
        right = pos[lo] >= split
        both = ~(left | right)
        side = ~both
        # A node with non-zeros in both halves becomes two nodes, with new slots.
        b_vec, b_off, b_split, b_lo, b_hi = vec[both], off[both], split[both], lo[both], hi[both]
        b_width, b_half = width[both], half[both]
        mid = np.searchsorted(key, b_vec * span + b_split)
        count = b_vec.shape[0]
        lefts = np.arange(next_slot, next_slot + count)
        rights = lefts + count
        next_slot += 2 * count
        joins.append((slot[both], lefts, rights))
        # A node with non-zeros in one half only becomes that half, keeping its slot.
        left, right = left[side], right[side]
        slot = np.concatenate([slot[side], lefts, rights])
        vec = np.concatenate([vec[side], b_vec, b_vec])
        off = np.concatenate([np.where(right, split[side], off[side]), b_off, b_split])
        width = np.concatenate(
            [np.where(left, half[side], width[side] - half[side]), b_half, b_width - b_half]
        )
        lo = np.concatenate([lo[side], b_lo, mid])
        hi = np.concatenate([hi[side], mid, b_hi])
    l_slot, l_off, l_width, l_lo, l_hi = (np.concatenate(a) for a in zip(*leaves))
    order = np.argsort(l_width, kind="stable")
    widths, starts = np.unique(l_width[order], return_index=True)
    ends = np.append(starts[1:], order.shape[0])
    for w, start, end in zip(widths.tolist(), starts.tolist(), ends.tolist()):
        step = max(1, _AP_BLOCK_ELEMENTS // w)
        for s in range(start, end, step):
            idx = order[s : min(end, s + step)]
            cnt = l_hi[idx] - l_lo[idx]
            row = np.repeat(np.arange(idx.shape[0]), cnt)
            entries = np.arange(row.shape[0]) + np.repeat(l_lo[idx] - (np.cumsum(cnt) - cnt), cnt)
            cells = np.zeros((idx.shape[0], w), dtype=np.float64)
            cells[row, pos[entries] - np.repeat(l_off[idx], cnt)] = val[entries]
            sums[l_slot[idx]] = cells.sum(axis=1)
    # Deeper rounds first: both halves of a split node are summed before the node itself.
    for parents, lefts, rights in reversed(joins):
        sums[parents] = sums[lefts] + sums[rights]
    return sums[:n]
