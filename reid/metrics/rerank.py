"""k-reciprocal re-ranking, a faster equivalent of ``torchreid.reid.utils.rerank.re_ranking``.

The output is bit-identical to torchreid's (hence the same ranking): every floating-point
operation is done in the same precision and the same order, and wherever numpy's rounding is
involved (``exp``, pairwise sums, ``mean``) the very same numpy call is made on the same
values. What changes is the data structures:

* only the ``max(k1 + 1, k2)`` nearest neighbours of each row are found (``torch.topk`` by
  chunks of rows) instead of an ``np.argsort`` of the whole ``(N, N)`` matrix. When equal
  distances make their order ambiguous, the row is sorted with ``np.argsort`` exactly as
  torchreid does, so ties resolve the same way;
* the k-reciprocal sets and their expansion are computed for blocks of rows at once with
  integer array operations;
* the encodings ``V`` are kept sparse (CSR) instead of dense ``(N, N)`` float32 matrices, and
  the Jaccard distance of each query only visits the gallery entries that share a non-zero
  with it, in torchreid's order of accumulation.

Memory is ``O(N (k1 + nnz))`` plus ``(chunk, N)`` blocks, instead of several ``(N, N)``
matrices.

Reference: Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017, section 3 (k-reciprocal nearest neighbours, their expansion, the Gaussian-kernel
encoding, local query expansion and the Jaccard distance, final distance
``(1 - lambda) d_J + lambda d``).
"""

from __future__ import annotations

import logging
from typing import Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["re_ranking", "rerank_memory_mb"]

Matrix = Union[np.ndarray, torch.Tensor]

# Cells per block of rows of the (N, N) matrices that are only ever materialised by chunks.
_CHUNK_ELEMENTS = 1 << 22
# Candidate members (rows x k x k/2) tested per block of the neighbourhood expansion.
_MEMBERSHIP_ELEMENTS = 1 << 22


def rerank_memory_mb(num_query: int, num_gallery: int) -> float:
    """A lower bound of the memory, in MB, that :func:`re_ranking` needs for its inputs and output.

    Its inputs are the float32 ``(Q, G)``, ``(Q, Q)`` and ``(G, G)`` distances (the last is the
    wall: 27 GB at MSMT17 size), and it returns and works on ``(Q, G)`` float32 matrices (the
    squared original distances, the Jaccard distances, the result). The sparse encodings add
    ``O((Q + G) k1)`` on top. Callers refuse a re-ranking above their memory budget with this
    figure instead of letting the process be killed.
    """
    q, g = int(num_query), int(num_gallery)
    return 4.0 * (q * q + g * g + 4 * q * g) / 2**20


def re_ranking(
    q_g_dist: Matrix,
    q_q_dist: Matrix,
    g_g_dist: Matrix,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """k-reciprocal re-ranked query-gallery distances, identical to torchreid's.

    Args:
        q_g_dist: ``(Q, G)`` query-gallery distances.
        q_q_dist: ``(Q, Q)`` query-query distances.
        g_g_dist: ``(G, G)`` gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhoods (paper: 20).
        k2: size of the local query expansion (paper: 6).
        lambda_value: weight of the original distance in the result (paper: 0.3).
        chunk_size: rows per block of the ``(N, N)`` work, ``N = Q + G``; ``None``:
            about 4M cells per block.
        device: where the nearest-neighbour search (``torch.topk``) runs; ``None``: the CPU.

    Returns:
        ``(Q, G)`` float32 re-ranked distances.

    Raises:
        ValueError: inconsistent shapes or non-positive ``k1``/``k2``.
    """
    q_g, q_q, g_g = (_to_numpy(m) for m in (q_g_dist, q_q_dist, g_g_dist))
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(
            f"expected (Q, G), (Q, Q), (G, G) distances, got {q_g.shape}, {q_q.shape}, {g_g.shape}"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got {k1} and {k2}")
    blocks = _Blocks(q_g, q_q, g_g)
    num = blocks.num
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(num, 1))
    device = torch.device("cpu" if device is None else device)

    width = min(max(k1 + 1, k2), num)
    top, colmax = _nearest(blocks, width, chunk_size, device)
    half = int(np.around(k1 / 2.0)) + 1
    sizes, cols = _expanded_neighbours(top, k1 + 1, half)
    v_ptr, v_col, v_val = _encodings(blocks, colmax, sizes, cols)
    if k2 != 1:
        v_ptr, v_col, v_val = _query_expansion(v_ptr, v_col, v_val, top[:, :k2], num, chunk_size)
    temp_min = _min_overlap(v_ptr, v_col, v_val, num_q, num, chunk_size)
    original = blocks.scaled_query_gallery(colmax)
    jaccard_dist = 1 - temp_min / (2.0 - temp_min)
    return jaccard_dist * (1 - lambda_value) + original * lambda_value


class _Blocks:
    """The ``(N, N)`` matrix ``[[q_q, q_g], [q_g^T, g_g]]`` of torchreid, by columns.

    torchreid squares it, casts to float32, divides every column by its maximum and
    transposes: row ``i`` of its ``original_dist`` is column ``i`` of the squared block
    matrix over that column's maximum.
    """

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        dtype = np.result_type(q_q, q_g, g_g)  # what np.concatenate gives torchreid
        self.q_g = q_g.astype(dtype, copy=False)
        self.q_q = q_q.astype(dtype, copy=False)
        self.g_g = g_g.astype(dtype, copy=False)
        self.num_q, self.num_g = q_g.shape
        self.num = self.num_q + self.num_g

    @staticmethod
    def _square(x: np.ndarray) -> np.ndarray:
        """``np.power(x, 2).astype(float32)``, torchreid's operations."""
        return np.power(x, 2).astype(np.float32, copy=False)

    def squared_columns(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start, N)`` float32: columns ``start:stop`` of the squared matrix, as rows.

        A block must lie within the query columns or within the gallery columns.
        """
        nq = self.num_q
        if stop <= nq:
            upper, lower = self.q_q[:, start:stop].T, self.q_g[start:stop, :]
        else:
            upper, lower = (
                self.q_g[:, start - nq : stop - nq].T,
                self.g_g[:, start - nq : stop - nq].T,
            )
        return np.concatenate([self._square(upper), self._square(lower)], axis=1)

    def squared_entries(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Squared float32 entries ``[row, col]`` of the block matrix (any index arrays)."""
        nq = self.num_q
        out = np.empty(row.shape, dtype=np.float32)
        for row_q in (True, False):
            for col_q in (True, False):
                sel = ((row < nq) == row_q) & ((col < nq) == col_q)
                r, c = row[sel], col[sel]
                if row_q and col_q:
                    vals = self.q_q[r, c]
                elif row_q:
                    vals = self.q_g[r, c - nq]
                elif col_q:
                    vals = self.q_g[c, r - nq]
                else:
                    vals = self.g_g[r - nq, c - nq]
                out[sel] = self._square(vals)
        return out

    def block_ranges(self, chunk_size: int) -> list[tuple[int, int]]:
        """Row ranges of at most ``chunk_size`` that do not straddle queries and gallery."""
        ranges = []
        for lo, hi in ((0, self.num_q), (self.num_q, self.num)):
            ranges += [(s, min(s + chunk_size, hi)) for s in range(lo, hi, chunk_size)]
        return ranges

    def scaled_query_gallery(self, colmax: np.ndarray) -> np.ndarray:
        """``(Q, G)`` float32: torchreid's ``original_dist[:Q, Q:]``."""
        return self._square(self.q_g) / colmax[: self.num_q, None]


def _to_numpy(x: Matrix) -> np.ndarray:
    """A numpy view or copy (tensors go to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _nearest(
    blocks: _Blocks, width: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``width`` columns of torchreid's ``initial_rank`` and the column maxima.

    Args:
        blocks: the distances.
        width: neighbours per row (at most ``N``).
        chunk_size: rows per block.
        device: where ``torch.topk`` runs.

    Returns:
        ``(N, width)`` int64 neighbours, nearest first (``np.argsort`` order), and ``(N,)``
        float32 maxima of the squared columns.
    """
    num = blocks.num
    top = np.empty((num, width), dtype=np.int64)
    colmax = np.empty(num, dtype=np.float32)
    probe = min(width + 1, num)  # one more value tells whether the cut at `width` is a tie
    num_sorted = 0
    for start, stop in blocks.block_ranges(chunk_size):
        squared = blocks.squared_columns(start, stop)
        colmax[start:stop] = squared.max(axis=1)
        scaled = 1.0 * squared / colmax[start:stop, None]
        values, idx = torch.from_numpy(scaled).to(device).topk(probe, dim=1, largest=False)
        values, idx = values.cpu().numpy(), idx.cpu().numpy()
        ambiguous = (values[:, 1:] == values[:, :-1]).any(1) | ~np.isfinite(values).all(1)
        top[start:stop] = idx[:, :width]
        for r in np.flatnonzero(ambiguous):
            top[start + r] = np.argsort(scaled[r])[:width]
        num_sorted += int(ambiguous.sum())
    if num_sorted:
        logger.debug("re-ranking: %d of %d rows had ties among their nearest", num_sorted, num)
    return top, colmax


def _reciprocal_mask(top: np.ndarray) -> np.ndarray:
    """``(N, k)`` bool: is ``top[i, t]``'s own ``k`` nearest list holding ``i``?"""
    own = np.arange(top.shape[0])[:, None, None]
    return (top[top] == own).any(-1)


def _expanded_neighbours(top: np.ndarray, k: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Expanded k-reciprocal neighbour set of every row, sorted (torchreid's ``np.unique``).

    ``R(i)`` are the entries of ``i``'s ``k`` nearest that hold ``i`` among their ``k``
    nearest; ``R_half(c)`` the same with ``half`` neighbours. ``R_half(c)`` of a candidate
    ``c`` in ``R(i)`` joins the set when more than 2/3 of it lies in ``R(i)``. Integer work on
    ``(N, k, half)`` arrays, in blocks of rows.

    Args:
        top: ``(N, >= k)`` neighbours, nearest first.
        k: ``k1 + 1``; half: ``round(k1 / 2) + 1``.

    Returns:
        ``sizes`` ``(N,)`` and ``cols`` ``(sum(sizes),)``: the sets one after the other, each
        sorted ascending.
    """
    num = top.shape[0]
    full, short = top[:, :k], top[:, :half]
    in_full = _reciprocal_mask(full)  # (N, k)
    in_short = _reciprocal_mask(short)  # (N, h)
    short_size = in_short.sum(1)
    # e in R(i) <=> key i * N + e among the sorted keys of all pairs (i, R(i)).
    owner = np.arange(num)[:, None]
    pair_keys = np.sort((owner * num + full)[in_full])
    sizes, cols = [], []
    block = max(1, _MEMBERSHIP_ELEMENTS // (full.shape[1] * short.shape[1]))
    for start in range(0, num, block):
        rows = slice(start, min(start + block, num))
        cand = full[rows]  # (B, k) candidates c
        members = short[cand]  # (B, k, h): R_half(c) before masking
        member_ok = in_short[cand]  # (B, k, h)
        keys = owner[rows, :, None] * num + members
        found = np.searchsorted(pair_keys, keys).clip(max=max(pair_keys.size - 1, 0))
        in_set = pair_keys[found] == keys if pair_keys.size else np.zeros_like(member_ok)
        overlap = (in_set & member_ok).sum(-1)  # |R_half(c) & R(i)|
        # torchreid: len(intersection) > 2. / 3 * len(candidate set), in float64.
        accept = in_full[rows] & (overlap > 2.0 / 3 * short_size[cand])
        own = np.where(in_full[rows], cand, num)  # num: "no entry"
        added = np.where(accept[..., None] & member_ok, members, num)
        pool = np.sort(np.concatenate([own, added.reshape(added.shape[0], -1)], axis=1), axis=1)
        keep = pool != num
        keep[:, 1:] &= pool[:, 1:] != pool[:, :-1]
        sizes.append(keep.sum(1))
        cols.append(pool[keep])
    return np.concatenate(sizes), np.concatenate(cols)


def _encodings(
    blocks: _Blocks, colmax: np.ndarray, sizes: np.ndarray, col: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse ``V``: ``exp(-d)`` over each expanded set, normalised to sum 1 (torchreid).

    Rows are grouped by set size so that one numpy ``exp``/row-sum serves many rows with the
    same rounding as torchreid's per-row calls.

    Args:
        blocks: the distances; colmax: ``(N,)`` column maxima.
        sizes, col: the expanded sets (see :func:`_expanded_neighbours`).

    Returns:
        CSR ``(ptr (N + 1,), col (nnz,), val (nnz,) float32)``.
    """
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    row = np.repeat(np.arange(sizes.shape[0]), sizes)
    dist = blocks.squared_entries(col, row) / colmax[row]  # original_dist[row, col]
    val = np.empty_like(dist)
    for size in np.unique(sizes):
        if size == 0:
            continue
        rows = np.flatnonzero(sizes == size)
        idx = ptr[rows][:, None] + np.arange(size)[None, :]
        weight = np.exp(-dist[idx])
        val[idx] = 1.0 * weight / np.sum(weight, axis=1, keepdims=True)
    return ptr, col, val


def _gather_rows(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry positions of CSR ``rows`` and, for each, the index into ``rows`` it came from."""
    counts = ptr[rows + 1] - ptr[rows]
    owner = np.repeat(np.arange(rows.shape[0]), counts)
    entries = np.arange(owner.shape[0]) + np.repeat(
        ptr[rows] - (np.cumsum(counts) - counts), counts
    )
    return entries, owner


def _query_expansion(
    ptr: np.ndarray,
    col: np.ndarray,
    val: np.ndarray,
    nearest: np.ndarray,
    num: int,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse ``V_qe[i] = mean(V[nearest[i]])``, added in neighbour order as ``np.mean``.

    Args:
        ptr, col, val: CSR ``V``.
        nearest: ``(N, k2')`` neighbours, nearest first.
        num: ``N``; chunk_size: rows per dense block.

    Returns:
        CSR ``V_qe``.
    """
    count = np.intp(nearest.shape[1])
    ptrs, cols, vals = [np.zeros(1, np.int64)], [], []
    offset = 0
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        acc = np.zeros((stop - start, num), dtype=np.float32)
        keys = []
        for t in range(nearest.shape[1]):
            entries, owner = _gather_rows(ptr, nearest[start:stop, t])
            acc[owner, col[entries]] += val[entries]
            keys.append(owner * num + col[entries])
        np.true_divide(acc, count, out=acc, casting="unsafe")  # what np.mean does
        support = np.unique(np.concatenate(keys))  # row-major: columns ascending in a row
        r, c = support // num, support % num
        ptrs.append(offset + np.cumsum(np.bincount(r, minlength=stop - start)))
        offset += r.shape[0]
        cols.append(c)
        vals.append(acc[r, c])
    return np.concatenate(ptrs), np.concatenate(cols), np.concatenate(vals)


def _min_overlap(
    ptr: np.ndarray, col: np.ndarray, val: np.ndarray, num_q: int, num: int, chunk_size: int
) -> np.ndarray:
    """``(Q, G)`` float32 ``sum_l min(V[q, l], V[Q + g, l])`` accumulated as torchreid does.

    torchreid adds, for ``l`` over the non-zeros of ``V[q]`` in increasing order, the minima
    with every row holding ``l``. Pass ``p`` here adds the ``p``-th non-zero of every query of
    a block at once, so each sum sees the same terms in the same order.

    Args:
        ptr, col, val: CSR ``V`` (after query expansion), ``N`` rows.
        num_q: ``Q``; num: ``N``; chunk_size: queries per block.
    """
    gallery_entries = np.flatnonzero(np.repeat(np.arange(num), np.diff(ptr)) >= num_q)
    by_col = gallery_entries[np.argsort(col[gallery_entries], kind="stable")]
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(col[by_col], minlength=num))])
    col_row = np.repeat(np.arange(num), np.diff(ptr))[by_col] - num_q
    col_val = val[by_col]
    out = np.zeros((num_q, num - num_q), dtype=np.float32)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        nnz = ptr[start + 1 : stop + 1] - ptr[start:stop]
        acc = out[start:stop]
        for p in range(int(nnz.max(initial=0))):
            active = np.flatnonzero(nnz > p)
            pos = ptr[start + active] + p
            entries, owner = _gather_rows(col_ptr, col[pos])
            query_val = val[pos][owner]
            acc[active[owner], col_row[entries]] += np.minimum(query_val, col_val[entries])
    return out
