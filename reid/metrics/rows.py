"""Distance rows computed block by block: :class:`DistanceRows`, what the evaluators rank in place
of a whole query x gallery matrix when it does not fit in memory (``docs/evaluation.md``, "Large
galleries"), and the allocator setting that keeps a long streaming evaluation's memory flat
(:func:`return_freed_blocks`). numpy and torch only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .distance import chunk_rows

__all__ = ["DistanceRows", "return_freed_blocks"]


def work_dtype(dtype: torch.dtype | np.dtype) -> np.dtype:
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
    :meth:`observed` lets a second consumer see every block as it is computed, so that two
    metric families share one pass over the rows.

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
        into_buffer: bool = False,
    ) -> "DistanceRows":
        """The rows ``distances(query[start:stop], gallery)``, blocks of about ``block_mb`` MB, in
        float64 when either feature set is float64 (float32 otherwise).

        Args:
            query: ``(Q, D)`` features.
            gallery: ``(G, D)`` features.
            distances: ``(b, D), (G, D) -> (b, G)`` distances, e.g. the model's own.
            block_mb: size of one block of float32 rows; a block of at least one chunk of
                :func:`reid.metrics.distance.chunk_rows` is rounded down to whole chunks, so
                that :func:`reid.metrics.compute_distance_matrix` gives each block the numbers of
                the whole matrix.
            into_buffer: ``distances`` takes ``out=`` (as :func:`reid.metrics.compute_distance_matrix`
                and the models' ``pairwise_distance`` do) and every block is written into one
                buffer, allocated once: no fresh allocation, and no fresh pages to fault in, per
                block. The rows a read returns are then valid until the next block is read.
        """
        num_q, num_g = int(query.shape[0]), int(gallery.shape[0])
        # the distances keep the features' precision: float64 features give float64 rows, ranked
        # exactly as the dense float64 matrix is (casting them to float32 merged close distances)
        wide = torch.float64 in (getattr(query, "dtype", None), getattr(gallery, "dtype", None))
        dtype = np.float64 if wide else np.float32
        block_rows = max(1, int(block_mb * 2**20 // (np.dtype(dtype).itemsize * max(num_g, 1))))
        chunk = chunk_rows(num_g)
        if block_rows >= chunk:  # whole chunks of compute_distance_matrix: the numbers of the whole matrix
            block_rows -= block_rows % chunk
        block_rows = min(num_q, block_rows)
        if not into_buffer:
            return cls(lambda start, stop: distances(query[start:stop], gallery), (num_q, num_g), block_rows, dtype=dtype)
        buffer = torch.empty(block_rows, num_g, dtype=torch.float64 if wide else torch.float32)

        def rows_into_buffer(start: int, stop: int) -> np.ndarray | torch.Tensor:
            return distances(query[start:stop], gallery, out=buffer[: stop - start])

        return cls(rows_into_buffer, (num_q, num_g), block_rows, dtype=dtype)

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
        self._observer: Callable[[int, np.ndarray], object] | None = None

    def observed(self, callback: Callable[[int, np.ndarray], object]) -> "DistanceRows":
        """The same rows, in the same blocks, as a new ``DistanceRows`` (with its own cache) that
        also hands every block it computes to ``callback(start, rows)``: ``rows`` is rows
        ``start:start + len(rows)`` as returned to the reader, after the reader's cache is set and
        before the reader gets it. A block read again from the cache is not handed over again; one
        computed again (after another block) is. ``callback`` must not modify ``rows``, and what it
        raises propagates to the reader. An observer of ``self`` is not carried over."""
        rows = DistanceRows(self.rows_of, self.shape, self.block_rows, dtype=self.dtype)
        rows._observer = callback
        return rows

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("DistanceRows supports row slices only")
        start, stop, _ = key.indices(self.shape[0])
        if self._cached is None or self._cached[:2] != (start, stop):
            self._cached = None  # freed before the next block exists: one block in memory at a time
            rows = self.rows_of(start, stop)
            rows = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
            if rows.shape != (stop - start, self.shape[1]):
                raise ValueError(
                    f"rows_of({start}, {stop}) returned shape {rows.shape}, expected {(stop - start, self.shape[1])}"
                )
            self._cached = (start, stop, np.asarray(rows, dtype=self.dtype))
            if self._observer is not None:
                self._observer(start, self._cached[2])
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


def rows_numpy(dist: np.ndarray | torch.Tensor | DistanceRows, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the distance matrix as numpy, in its own dtype."""
    if isinstance(dist, torch.Tensor):
        return dist[start:stop].cpu().numpy()
    return dist[start:stop]
