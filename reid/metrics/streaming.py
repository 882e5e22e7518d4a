"""Streaming ranking of a gallery for a few queries, keeping only what explanations need.

:class:`MatchTracker` takes the gallery batch by batch (distances of the batch to the ``N``
queries) and keeps, per query, its top ``K`` and its best true and best wrong match, plus a
payload (e.g. a feature map) for exactly those images; memory is bounded by ``N (K + 2)``
payloads whatever the gallery size. Ties are broken by gallery index (the order of a stable sort
of the whole row), and gallery images of the query's identity and camera are removed as in the
evaluation protocol (``docs/method.md`` sections 4 and 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MatchTracker"]


@dataclass
class _QueryCandidates:
    """The gallery images one query still needs: its top-K, best true and best wrong match."""

    indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    distances: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    correct: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))


class MatchTracker:
    """Ranks a streamed gallery for a few queries and keeps the payload of the images needed.

    Gallery images arrive batch by batch with their distances to the ``N`` queries. For each
    query the tracker keeps the top ``K`` (by distance, ties by gallery index, i.e. the order of
    a stable sort of the whole row) plus its best true match and best wrong match; the payload
    (e.g. a ``layer4`` map) of every image some query still needs is kept, the others dropped.

    Args:
        query_pids: ``(N,)`` identities of the queries.
        query_camids: ``(N,)`` cameras of the queries.
        topk: ``K``.
        remove_same_camera: drop gallery images with the query's identity and camera.
    """

    def __init__(self, query_pids: np.ndarray, query_camids: np.ndarray, topk: int, remove_same_camera: bool) -> None:
        self.query_pids = np.asarray(query_pids)
        self.query_camids = np.asarray(query_camids)
        self.topk = topk
        self.remove_same_camera = remove_same_camera
        self.candidates = [_QueryCandidates() for _ in self.query_pids]
        self.payload: dict[int, Any] = {}
        self.distance_chunks: list[np.ndarray] = []
        self.pids: list[np.ndarray] = []
        self.camids: list[np.ndarray] = []
        self.paths: list[str] = []

    @property
    def num_gallery(self) -> int:
        """Gallery images seen so far."""
        return len(self.paths)

    def update(
        self,
        distances: np.ndarray,
        pids: np.ndarray,
        camids: np.ndarray,
        paths: Sequence[str],
        payload: Sequence[Any] | None = None,
    ) -> None:
        """Takes the next gallery batch.

        Args:
            distances: ``(N, b)`` query-gallery distances of the batch.
            pids: ``(b,)`` gallery identities.
            camids: ``(b,)`` gallery cameras.
            paths: b gallery image paths.
            payload: b items kept for the images that are needed (None: keep nothing).
        """
        offset = self.num_gallery
        distances = np.where(self._junk(pids, camids), np.inf, np.asarray(distances, dtype=np.float64))
        self.distance_chunks.append(distances)
        self.pids.append(np.asarray(pids))
        self.camids.append(np.asarray(camids))
        self.paths.extend(paths)
        batch_indices = offset + np.arange(len(paths))
        for i, cand in enumerate(self.candidates):
            valid = np.isfinite(distances[i])
            indices = np.concatenate([cand.indices, batch_indices[valid]])
            dists = np.concatenate([cand.distances, distances[i][valid]])
            correct = np.concatenate([cand.correct, np.asarray(pids)[valid] == self.query_pids[i]])
            order = np.lexsort((indices, dists))
            keep = set(order[: self.topk].tolist())
            for wanted in (True, False):
                hits = order[correct[order] == wanted]
                if hits.size:
                    keep.add(int(hits[0]))
            chosen = order[np.isin(order, sorted(keep))]
            self.candidates[i] = _QueryCandidates(indices[chosen], dists[chosen], correct[chosen])
        needed = {int(j) for cand in self.candidates for j in cand.indices}
        for j in [j for j in self.payload if j not in needed]:
            del self.payload[j]
        if payload is not None:
            for j in needed:
                if j >= offset and j not in self.payload:
                    self.payload[j] = payload[j - offset]

    def needed(self) -> list[int]:
        """Gallery indices some query still needs (its top ``K``, best true and best wrong match)."""
        return sorted({int(j) for cand in self.candidates for j in cand.indices})

    def _junk(self, pids: np.ndarray, camids: np.ndarray) -> np.ndarray:
        """``(N, b)`` bool: gallery entries removed for each query."""
        pids, camids = np.asarray(pids), np.asarray(camids)
        if not self.remove_same_camera:
            return np.zeros((len(self.query_pids), len(pids)), dtype=bool)
        return (self.query_pids[:, None] == pids[None, :]) & (self.query_camids[:, None] == camids[None, :])

    def distances(self) -> np.ndarray:
        """``(N, G)`` distances of every gallery image seen (``inf`` where removed)."""
        if not self.distance_chunks:
            return np.empty((len(self.query_pids), 0))
        return np.concatenate(self.distance_chunks, axis=1)

    def ranked(self, query: int) -> list[int]:
        """Gallery indices of the query's top ``K``, best first."""
        cand = self.candidates[query]
        return [int(j) for j in cand.indices[: self.topk]]

    def contrast(self, query: int) -> int | None:
        """Gallery index of B: the best match whose correctness differs from the top match's."""
        cand = self.candidates[query]
        if not cand.indices.size:
            return None
        others = np.flatnonzero(cand.correct != cand.correct[0])
        return int(cand.indices[others[0]]) if others.size else None

    def rank_of(self, query: int, gallery_index: int) -> int:
        """1-based rank of a gallery image for a query (stable order of the whole row)."""
        row = self.distances()[query]
        d = row[gallery_index]
        before = (row < d) | ((row == d) & (np.arange(row.size) < gallery_index))
        return int(np.count_nonzero(before & np.isfinite(row))) + 1
