"""The rank of every true match of every query, the work behind :mod:`reid.metrics.rank`'s
metrics (that module states the protocol, the tie orders and why the ranks are counted this way):
the Market-1501 protocol (:func:`market_ranks`) and the CUHK03 single-gallery-shot one
(:func:`cuhk03_ranks`), both into the CSR layout of :class:`Ranks`. numpy and torch only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch

from .rows import rows_numpy, work_dtype

logger = logging.getLogger(__name__)

RandomSource = Union[np.random.RandomState, np.random.Generator]
TieBreak = Literal["numpy", "stable"]

#: Number of random gallery samplings per query of the CUHK03 single-gallery-shot metric.
CUHK03_NUM_REPEATS = 10


@dataclass(frozen=True)
class Ranks:
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


def market_ranks(
    dist: np.ndarray | torch.Tensor,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    max_rank: int,
    tie_break: TieBreak,
    chunk_size: int,
    device: torch.device,
) -> Ranks:
    """True-match ranks of every query, chunk by chunk, with the sorting fallback."""
    q_pid, q_cam, g_pid, g_cam = labels
    num_q, num_g = q_pid.shape[0], g_pid.shape[0]
    num_codes = int(max(q_pid.max(initial=-1), g_pid.max(initial=-1))) + 1
    gallery = _GalleryIndex.build(g_pid, g_cam, num_codes)
    per_query: list[np.ndarray] = []
    kept_len = np.empty(num_q, dtype=np.int64)
    num_sorted = 0
    keep_buffer = np.empty((mark_rows(min(chunk_size, num_q)), num_g), dtype=bool) if _counts_on(device) else None
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        cols, valid, junk = gallery.same_identity(q_pid[start:stop], q_cam[start:stop])
        if keep_buffer is not None:  # (no reference to the rows is kept: one block in memory at a time)
            ranks, n_rel, needs_sort = _counted_match_ranks(
                np.asarray(rows_numpy(dist, start, stop), dtype=work_dtype(dist.dtype)), cols, valid, junk,
                keep_buffer[: stop - start], stable=tie_break == "stable",
            )
        else:
            sorted_rows, same, finite = _sorted_chunk_torch(dist, start, stop, cols, device)
            ranks, n_rel, needs_sort = _chunk_match_ranks(sorted_rows, same, valid, junk, finite)
            del sorted_rows
        kept_len[start:stop] = num_g - junk.sum(1)
        chunk_lists = [ranks[b, : n_rel[b]] for b in range(stop - start)]
        redo = np.flatnonzero(needs_sort)
        if redo.size:
            num_sorted += redo.size
            redo_q = redo + start
            sorted_ranks, _ = _sorted_match_ranks(
                rows_numpy(dist, start, stop)[redo],
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


def mark_rows(chunk_rows: int) -> int:
    """Rows marked at a time by :func:`_counted_match_ranks` in a chunk of ``chunk_rows``: an
    eighth of it, so the boolean mask is an eighth of the block of distances."""
    return max(1, -(-chunk_rows // 8))


def _counts_on(device: torch.device) -> bool:
    """Whether the ranks are counted (:func:`_counted_match_ranks`, the CPU) rather than read
    from whole sorted rows (:func:`_sorted_chunk_torch`, other devices)."""
    return device.type == "cpu"


def _counted_match_ranks(
    rows: np.ndarray, cols: np.ndarray, valid: np.ndarray, junk: np.ndarray, keep: np.ndarray,
    stable: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches of a chunk of queries on the CPU, by counting, without sorting
    the rows.

    The rank (1-based, among kept entries) of the k-th nearest true match, at distance ``t_k``,
    is ``k`` plus the number of kept non-matches closer than ``t_k``. Only entries up to the
    row's farthest true match can be closer, so one comparison per row marks them (``keep``);
    the same-identity entries (true matches and removed ones) are unmarked; the few marked
    values of each row are sorted and each ``t_k`` is located among them by binary search, once
    strictly below and once at most. A difference is a kept non-match at exactly ``t_k``, where
    the tie order decides: in the stable order (gallery index) the tied non-matches of smaller
    index are counted too; numpy's order cannot be predicted, so the query is flagged for the
    sorting path. A row whose true matches are not all finite is flagged in either order. NaN
    elsewhere in a row is never marked, which is where every sort puts it: last. How many entries
    are marked depends on the model: few for a good one (its true matches rank near the top), the
    whole row at worst.

    Args:
        rows: ``(B, G)`` distances in the working dtype (:func:`work_dtype`).
        cols: ``(B, S)`` gallery columns of each query's same-identity entries (0 in padding).
        valid: ``(B, S)`` bool, real entries of ``cols`` (the rest is padding).
        junk: ``(B, S)`` bool, entries of ``cols`` removed by the protocol (same camera).
        keep: ``(b, G)`` bool buffer, overwritten: the rows are marked ``b`` at a time
            (:func:`mark_rows` gives the size).
        stable: ties in gallery index order (else numpy's unstable sort decides them).

    Returns:
        ``ranks`` ``(B, M)`` int64 (entries past ``n_rel`` are meaningless), ``n_rel`` ``(B,)``
        number of true matches, ``needs_sort`` ``(B,)`` bool.
    """
    num_b, num_g = rows.shape
    match = valid & ~junk
    n_rel = match.sum(1)
    m_max = int(n_rel.max(initial=0))
    if m_max == 0 or num_g == 0:
        return np.zeros((num_b, 0), dtype=np.int64), n_rel, np.zeros(num_b, dtype=bool)
    same = np.take_along_axis(rows, cols, axis=1)
    # ascending true-match distances, ties by gallery index (the columns of an identity ascend),
    # +inf past n_rel (a NaN sorts past +inf, so it leaves a non-finite value among the first n_rel)
    by_distance = np.argsort(np.where(match, same, np.inf), axis=1, kind="stable")[:, :m_max]
    thresholds = np.take_along_axis(same, by_distance, axis=1)
    threshold_cols = np.take_along_axis(cols, by_distance, axis=1)
    thresholds[~np.take_along_axis(match, by_distance, axis=1)] = np.inf
    k = np.arange(m_max)
    real = k[None, :] < n_rel[:, None]
    finite = np.isfinite(np.where(real, thresholds, 0)).all(1)
    ranked = finite & (n_rel > 0)
    farthest = np.full(num_b, -np.inf, dtype=rows.dtype)
    farthest[ranked] = thresholds[ranked, n_rel[ranked] - 1]
    cols = np.where(valid, cols, cols[:, :1])  # padding: the row's first same-identity entry
    # one search per row finds both counts: #(v <= t) is #(v < the next float above t)
    probes = np.concatenate([thresholds, np.nextafter(thresholds, np.inf)], axis=1)
    below = np.zeros((num_b, 2 * m_max), dtype=np.int64)
    needs_sort = ~finite
    # an eighth of the rows at a time: the mask is an eighth of the block, and a poor model, which
    # marks whole rows, gathers an eighth of it (positions and values)
    step = keep.shape[0]
    for first in range(0, num_b, step):
        last = min(first + step, num_b)
        marks = keep[: last - first]
        np.less_equal(rows[first:last], farthest[first:last, None], out=marks)
        np.put_along_axis(marks, cols[first:last], False, axis=1)  # same-identity entries do not count
        positions = np.flatnonzero(marks)
        values = rows[first:last].reshape(-1)[positions]
        counts = np.bincount(positions // num_g, minlength=last - first)
        del positions
        starts = np.cumsum(counts) - counts
        for b in np.flatnonzero(counts):
            marked = values[starts[b] : starts[b] + counts[b]]
            marked.sort()
            below[first + b] = marked.searchsorted(probes[first + b])
        tied = (below[first:last, m_max:] != below[first:last, :m_max]) & real[first:last]
        if not stable:
            needs_sort[first:last] |= tied.any(1)
            continue
        # the stable order: the tied non-matches before a true match are those of smaller index
        for b in np.flatnonzero(tied.any(1)):
            q = first + b
            marked_cols = np.flatnonzero(marks[b])
            marked_values = rows[q, marked_cols]
            for j in np.flatnonzero(tied[b]):
                before = (marked_values == thresholds[q, j]) & (marked_cols < threshold_cols[q, j])
                below[q, j] += np.count_nonzero(before)
    return below[:, :m_max] + k + 1, n_rel, needs_sort


def _sorted_chunk_torch(
    dist: np.ndarray | torch.Tensor, start: int, stop: int, cols: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Rows ``start:stop`` sorted whole by ``torch.sort`` on ``device`` (a GPU sorts fast), the
    distances at ``cols`` and which rows are finite: what :func:`_chunk_match_ranks` counts in.

    Returns:
        ``(B, G)`` tensor on ``device``, ``(B, S)`` numpy, the distances at ``cols``, and ``(B,)``
        bool, the rows without NaN or infinity; in the working dtype.
    """
    dtype = work_dtype(dist.dtype)
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
    """Ranks of the true matches of a chunk of queries from the sorted rows (other devices).

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


def cuhk03_ranks(
    dist: np.ndarray | torch.Tensor,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    max_rank: int,
    tie_break: TieBreak,
    chunk_size: int,
    source: RandomSource | None,
) -> Ranks:
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
        rows = rows_numpy(dist, start, stop)
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
    return Ranks(
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
) -> Ranks:
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
    return Ranks(ranks, offsets, kept_len, cmc_rows, row_len)
