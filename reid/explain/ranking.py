"""Choosing the queries a dump explains, and ranking the gallery for them with one trunk pass per image.

The first stages of :func:`reid.explain.dump.write_explanations` (``reid explain``):

1. **Queries.** ``N`` queries evenly spread over the query set (:func:`spread_indices`: indices
   ``round(linspace(0, Q - 1, N))``; the query set is sorted by identity, so spreading covers many
   identities and cameras, unlike the first ``N``). All queries when ``N >= Q``. Or the queries
   a user names (``query_indices``, :func:`choose_queries`). :func:`encode_queries` embeds every
   query (the run's statistics need them all) and keeps what the chosen ones' explanations start
   from.
2. **Ranking** (:func:`rank_gallery`) by the model's own distance (the caller's ``distances_of``,
   the engine's :meth:`distance_matrix`, i.e. the model's
   :meth:`~reid.models.base.ReidModel.pairwise_distance`: ``TEST.DIST_METRIC``/
   ``TEST.NORMALIZE_FEATURE`` for an embedding, ``d_hat`` for AVSL), with gallery images of the
   query's identity *and* camera removed as in the evaluation protocol (``keep_same_camera`` keeps
   them); ties broken by gallery order (:class:`reid.metrics.streaming.MatchTracker`). Re-ranking
   is never applied: explanations explain the model's own distance (``docs/method.md`` section 4).
   Every query's distances are kept as well (:class:`GalleryRows`) when they fit the budget, for
   the run's statistics (:mod:`reid.explain.run_stats`).
3. **One trunk pass per image.** On the head-only path (no explicit layer; the model's
   ``forward_features`` gives its head map, ``embed_features`` the embedding), each chosen query
   and each gallery image goes through the trunk exactly once; the gallery is streamed, and only
   the maps of the images an explanation needs are kept (each query's current top-``K`` and its
   best true and best wrong match), so memory is bounded by ``N (K + 2)`` maps whatever the
   gallery size. The explanations (:mod:`reid.explain.explainer`) then run through the cheap head
   only. With an explicit layer, or for a model explained by attribution, only the embeddings are
   kept here and the explainer re-runs the model on the explained images.

With saved embeddings (``reid test --save-features``, then ``reid explain --features``) the
ranking reads them, and the trunk runs only on the chosen queries and the gallery images their
explanations need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.metrics.streaming import MatchTracker

logger = logging.getLogger(__name__)


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` indices evenly spread over ``range(total)`` (all of them when ``count >= total``)."""
    if count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def _features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    feature_maps = model.forward_features(images)
    if not isinstance(feature_maps, torch.Tensor) or feature_maps.dim() != 4:
        raise TypeError(
            f"{type(model).__name__}.forward_features must return one (B, C, h, w) map for the head-only "
            f"path; pass --layer to explain a named layer on the full model instead"
        )
    return feature_maps


@dataclass
class EncodedBatch:
    """Embeddings of a batch and, on the head-only path, its ``layer4`` maps.

    Attributes:
        embeddings: ``(b, D)`` float32 on the CPU.
        feature_maps: ``(b, C, h, w)`` on the model's device, or None.
    """

    embeddings: torch.Tensor
    feature_maps: torch.Tensor | None


@torch.no_grad()
def encode(model: nn.Module, images: torch.Tensor, head_path: bool) -> EncodedBatch:
    """Runs the trunk once on ``images``: embeddings, plus the maps on the head-only path."""
    if not head_path:
        return EncodedBatch(model(images).float().cpu(), None)
    feature_maps = _features(model, images)
    return EncodedBatch(model.embed_features(feature_maps).float().cpu(), feature_maps)


@dataclass(frozen=True)
class Setup:
    """What every stage of the dump needs.

    Attributes:
        model: the model, in eval mode.
        device: where it runs.
        head_path: explain through ``embed_features`` from maps of ``forward_features``.
        layer: the explained layer on the full-model path.
        batch_size: pairs (or triplets) per explanation batch.
        progress: show progress bars.
    """

    model: nn.Module
    device: torch.device
    head_path: bool
    layer: str
    batch_size: int
    progress: bool

    def bar(self, iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None) -> tqdm:
        """A tqdm bar that disappears when done (hidden with ``--no-progress``)."""
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=not self.progress)


@dataclass(frozen=True)
class QueryInfo:
    """A chosen query: its index in the query set, image path, identity and camera."""

    index: int
    path: str
    pid: int
    camid: int


@dataclass
class EncodedQueries:
    """The query set after its one trunk pass.

    Attributes:
        queries: the chosen queries, in query-set order.
        embeddings: ``(N, D)`` float32 embeddings of the chosen queries on the CPU.
        inputs: per chosen query, what explanations start from: its ``(C, h, w)`` ``layer4`` map
            on the head-only path, its ``(3, H, W)`` network input otherwise.
        all_embeddings: ``(Q, D)`` float32 embeddings of every query (the run's statistics).
        all_pids: ``(Q,)`` identities of every query.
        all_camids: ``(Q,)`` cameras of every query.
        chosen: ``(N,)`` indices of the chosen queries in the query set.
    """

    queries: list[QueryInfo]
    embeddings: torch.Tensor
    inputs: list[torch.Tensor]
    all_embeddings: torch.Tensor
    all_pids: np.ndarray
    all_camids: np.ndarray
    chosen: np.ndarray


def choose_queries(total: int, count: int | Sequence[int]) -> list[int]:
    """The query indices to explain: ``count`` evenly spread ones (:func:`spread_indices`), or the
    given indices (a sequence), each once, in the query set's order (the order every later step
    keeps; the explorer sorts the queries by AP anyway).

    Raises:
        ValueError: an index outside ``[0, total)`` (the message gives the query set's size).
    """
    if isinstance(count, int):
        return spread_indices(total, count)
    bad = [i for i in count if not 0 <= i < total]
    if bad:
        raise ValueError(f"query indices {bad} are outside the query set (0 to {total - 1})")
    return sorted({int(i) for i in count})


def encode_queries(setup: Setup, loader: DataLoader, count: int | Sequence[int],
                   saved: torch.Tensor | None = None) -> EncodedQueries:
    """Runs the trunk once on every query of ``loader``'s dataset, keeping the explanation inputs of
    the chosen ones (:func:`choose_queries`: ``count`` evenly spread ones, or the given indices).
    With ``saved`` (the query set's embeddings, in dataset order), the trunk runs on the chosen
    queries only."""
    if saved is not None:
        return _encode_chosen_queries(setup, loader, count, saved)
    chosen = choose_queries(len(loader.dataset), count)
    wanted = set(chosen)
    queries: list[QueryInfo] = []
    embeddings, inputs, pids, camids = [], [], [], []
    seen = 0
    for batch in setup.bar(loader, "queries"):
        images = batch["img"].to(setup.device)
        encoded = encode(setup.model, images, setup.head_path)
        embeddings.append(encoded.embeddings)
        for k, (path, pid, camid) in enumerate(zip(batch["impath"], batch["pid"], batch["camid"])):
            if seen + k in wanted:
                queries.append(QueryInfo(seen + k, path, int(pid), int(camid)))
                inputs.append(encoded.feature_maps[k].clone() if setup.head_path else images[k])
        pids.append(np.asarray(batch["pid"]))
        camids.append(np.asarray(batch["camid"]))
        seen += len(images)
    all_embeddings = torch.cat(embeddings)
    index = torch.as_tensor(chosen, dtype=torch.long)
    return EncodedQueries(
        queries, all_embeddings[index], inputs, all_embeddings, np.concatenate(pids), np.concatenate(camids),
        np.asarray(chosen, dtype=np.int64),
    )


def _encode_chosen_queries(setup: Setup, loader: DataLoader, count: int | Sequence[int],
                           saved: torch.Tensor) -> EncodedQueries:
    """:func:`encode_queries` from saved embeddings: one trunk pass per chosen query only."""
    items = list(loader.dataset.data)
    chosen = choose_queries(len(items), count)
    queries, inputs = [], []
    for start in range(0, len(chosen), loader.batch_size or 1):
        indices = chosen[start : start + (loader.batch_size or 1)]
        images = torch.stack([loader.dataset[i]["img"] for i in indices]).to(setup.device)
        encoded = encode(setup.model, images, setup.head_path)
        for k, i in enumerate(indices):
            path, pid, camid = items[i][:3]
            queries.append(QueryInfo(i, path, int(pid), int(camid)))
            inputs.append(encoded.feature_maps[k].clone() if setup.head_path else images[k])
    index = torch.as_tensor(chosen, dtype=torch.long)
    return EncodedQueries(
        queries, saved[index].float(), inputs, saved.float(), np.asarray([it[1] for it in items]),
        np.asarray([it[2] for it in items]), np.asarray(chosen, dtype=np.int64),
    )


@dataclass
class GalleryRows:
    """What the gallery pass keeps for the run's statistics (None where over the budget).

    Attributes:
        distances: ``(Q, G)`` float32 distances of every query, or None.
        embeddings: ``(G, D)`` float32 gallery embeddings (only for the failure table of a
            decomposable model), or None.
    """

    distances: np.ndarray | None = None
    embeddings: torch.Tensor | None = None


def rank_gallery(
    setup: Setup,
    loader: DataLoader,
    encoded: EncodedQueries,
    distances_of: Callable[[torch.Tensor, torch.Tensor], np.ndarray],
    topk: int,
    remove_same_camera: bool,
    max_matrix_mb: float = 0.0,
    saved: torch.Tensor | None = None,
) -> tuple[MatchTracker, GalleryRows]:
    """Streams the gallery once through the trunk, ranking it for the chosen queries and keeping
    the needed maps; keeps every query's distances too when they fit ``max_matrix_mb``. With
    ``saved`` (the gallery's embeddings, in dataset order) the ranking reads them instead, and the
    trunk runs only on the images the explanations need."""
    tracker = MatchTracker(
        np.array([q.pid for q in encoded.queries]), np.array([q.camid for q in encoded.queries]), topk,
        remove_same_camera,
    )
    num_q, num_g = len(encoded.all_embeddings), len(loader.dataset)
    keep_embeddings = bool(setup.model.explainability.decomposable_stripes)
    needed_mb = 4 * num_q * num_g / 2**20
    if keep_embeddings:
        needed_mb += 4 * num_g * encoded.all_embeddings.shape[1] / 2**20
    keep_all = needed_mb <= max_matrix_mb
    if not keep_all:
        logger.warning(
            "the run's statistics cover the %d explained queries only: all %d queries would need %.0f MB "
            "(--max-matrix-mb %.0f)", len(encoded.queries), num_q, needed_mb, max_matrix_mb,
        )
    rows, gallery_embeddings = [], []
    for batch in setup.bar(_gallery_batches(loader, saved), "gallery"):
        if saved is None:
            batch_encoded = encode(setup.model, batch["img"].to(setup.device), setup.head_path)
        else:
            batch_encoded = EncodedBatch(batch["embeddings"], None)
        maps = batch_encoded.feature_maps
        if keep_all:
            block = distances_of(encoded.all_embeddings, batch_encoded.embeddings).astype(np.float32)
            rows.append(block)
            chosen_rows = block[encoded.chosen].astype(np.float64)
            if keep_embeddings:
                gallery_embeddings.append(batch_encoded.embeddings)
        else:
            chosen_rows = distances_of(encoded.embeddings, batch_encoded.embeddings)
        tracker.update(
            chosen_rows, np.asarray(batch["pid"]), np.asarray(batch["camid"]), list(batch["impath"]),
            [m.clone() for m in maps] if maps is not None else None,  # a clone frees the batch
        )
    if saved is not None and setup.head_path:  # the maps of the images the explanations need
        needed = tracker.needed()
        for start in range(0, len(needed), loader.batch_size or 1):
            indices = needed[start : start + (loader.batch_size or 1)]
            images = torch.stack([loader.dataset[j]["img"] for j in indices]).to(setup.device)
            for j, feature_map in zip(indices, encode(setup.model, images, True).feature_maps):
                tracker.payload[j] = feature_map.clone()
    kept = GalleryRows()
    if keep_all:
        kept.distances = np.concatenate(rows, axis=1) if rows else np.empty((num_q, 0), dtype=np.float32)
        kept.embeddings = torch.cat(gallery_embeddings) if gallery_embeddings else None
    return tracker, kept


def _gallery_batches(loader: DataLoader, saved: torch.Tensor | None) -> Iterable[dict[str, Any]]:
    """The gallery loader's batches, or batches of the saved embeddings with the dataset's labels."""
    if saved is None:
        yield from loader
        return
    items = list(loader.dataset.data)
    size = loader.batch_size or 1
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        yield {"embeddings": saved[start : start + size].float(), "pid": [it[1] for it in chunk],
               "camid": [it[2] for it in chunk], "impath": [it[0] for it in chunk]}


def numpy_distances(
    distances_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | np.ndarray]
) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """``distances_of`` with its result as a numpy array (what :func:`rank_gallery` takes)."""

    def distances(query: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
        result = distances_of(query, gallery)
        return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)

    return distances
