"""Explanation dumps of a model's top matches: panels, an HTML report and ``explanations.json``.

:func:`write_explanations` does what ``reid explain`` runs, on one query and gallery set:

1. **Queries.** ``N`` queries evenly spread over the query set (:func:`spread_indices`: indices
   ``round(linspace(0, Q - 1, N))``; the query set is sorted by identity, so spreading covers many
   identities and cameras, unlike the first ``N``). All queries when ``N >= Q``. Or the queries
   a user names (``query_indices``, :func:`choose_queries`).
2. **Ranking** by the model's own distance (the caller's ``distances_of``, the engine's
   :meth:`distance_matrix`, i.e. the model's :meth:`~reid.models.base.ReidModel.pairwise_distance`:
   ``TEST.DIST_METRIC``/``TEST.NORMALIZE_FEATURE`` for an embedding, ``d_hat`` for AVSL), with
   gallery images of the query's identity *and* camera removed as in the evaluation protocol
   (``keep_same_camera`` keeps them); ties broken by gallery order
   (:class:`reid.metrics.streaming.MatchTracker`). Re-ranking is never applied: explanations
   explain the model's own distance (``docs/method.md`` section 4).
3. **One trunk pass per image.** On the head-only path (no explicit layer; the model's
   ``forward_features`` gives its head map, ``embed_features`` the embedding), each chosen query
   and each gallery image goes through the trunk exactly once; the gallery is streamed, and only
   the maps of the images an explanation needs are kept (each query's current top-``K`` and its
   best true and best wrong match), so memory is bounded by ``N (K + 2)`` maps whatever the
   gallery size. All pairs and triplets are then explained through the cheap head only
   (:func:`reid.explain.explain_pair_features`). With an explicit layer the explanations run
   :func:`reid.explain.explain_pair` on the images, which re-runs the model on the explained images.
4. **Siamese explanation** of each of the top-``K`` pairs. ``same="model"`` (default): every shown
   match is explained as a match, because the model ranks it among its top ``K``: the maps answer
   "why did the model put this image here?", for wrong matches too, whose ground truth the panels
   and the explorer show by colour. ``same="truth"``: ``same`` is the ground truth (query and
   gallery identities equal), so a wrong match is explained as a dissimilar pair ("what differs").
   The explorer's notes say which one is shown. Reference: SAM paper, section 3.1;
   ``docs/method.md`` sections 2 and 4.
5. **Triplet explanation** (``triplets=True``): "why is the top match A closer than B", where B is
   the best-ranked gallery image whose correctness differs from A's: the first wrong match when A
   is correct, the first true match when A is wrong (why the model failed). B may rank below
   ``K``; its map was kept while streaming. No triplet when no such B exists.

Everything goes under ``out_dir``:

* ``panels/q<query>_r<rank>.png``: one panel per pair (query, both overlays, gallery, distance,
  rank, correct or wrong);
* ``triplets/q<query>.png``: triplet panels;
* ``index.html``: the report (query and gallery images are copied under ``images/``);
* ``explanations.json``: per pair the query and gallery paths and identities, distance, rank,
  correct (identity equality), the ``same`` used for the weights, the panel path relative to
  the report, and, where a ground-truth person mask exists beside the image (the synthetic set),
  the energy of each map inside the person mask (``query_mask_fraction``,
  ``gallery_mask_fraction``: :func:`person_energy`) and the person's area; the triplets; a summary.

**Models with exact attribution** (``model.explainability.attribution``, e.g. AVSL) are not
explained with similarity attention (their eval features are not an embedding; the distance is
``d_hat``). Steps 1-2 are the same; step 3 runs the full model; steps 4-5 are replaced by one
**attribution panel** per pair (triplets and an explicit layer are refused by the caller, ``same``
is ignored), from the model's :meth:`~reid.models.base.ReidModel.attribute` and
:mod:`reid.vis.attribution`:

* the overall distance ``d_hat`` and its split over the levels, ``sum_i lambda^l_i delta^l_i``
  (exact: AVSL paper, section 3.4, eq. 11);
* per level, the ``top_nodes`` nodes with the largest contribution ``lambda^l_i delta^l_i``, each
  with its node CAM overlaid on the query and on the gallery image;
* one rectified node: among the ``top_nodes`` top-level nodes with the largest rectified value
  ``delta_hat^L_i`` (the terms of ``d_hat``), the least reliable one (lowest ``p``), with its raw
  ``delta``, ``p``, ``delta_hat = p delta + (1 - p) sum_j W~_ij delta_hat^(L-1)_j`` (eq. 8) and the
  ``feeders`` lower-level nodes ``j`` with the largest ``W~_ij delta_hat^(L-1)_j`` (their edge
  weights and CAMs).

Panels go to ``attributions/q<query>_r<rank>.png`` and join ``index.html`` as each match's panel;
``explanations.json`` holds per pair the ranking's ``distance``, the attribution pass's
``attributed_distance`` (equal to float precision; a warning is logged otherwise) and
``attribution``: per level the ``total``, every node's ``contributions``, the ``top`` nodes (node,
contribution, weight, delta) and ``rest``; and ``rectified_node`` (level, node, delta,
reliability, rectified, carried, feeders). The summary gives the mean share of ``d_hat`` per
level. Reference: ``docs/method.md`` section 5.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.data.synthetic import load_mask, mask_path
from reid.metrics.explanation import energy_inside
from reid.metrics.rank import NoValidQueryError, evaluate
from reid.metrics.streaming import MatchTracker
from reid.io import write_json
from reid.vis import Match, Panel, QueryResult, load_image, pair_panel, save_image, triplet_panel
from reid.vis import attribution_panel, summarize_attribution, write_html_report
from reid.vis.explorer import (
    ExplorerExplainer, ExplorerMatch, ExplorerQuery, FailureTable, RunStatistics, write_explorer,
)

from .decomposition import Decomposition, decompose_pair
from .postprocess import normalize_maps, resize_maps
from .tuples import explain_pair, explain_pair_features, explain_triplet, explain_triplet_features

logger = logging.getLogger(__name__)

EXPLANATIONS_DIR = "explanations"
EXPLORER_PAGE = "index.html"
PANELS_PAGE = "panels.html"
SAME_MODES = ("model", "truth")
# What the explorer says about the Siamese maps it shows (ExplainOptions.same).
SAME_NOTES = {
    "model": "Maps explain the model's decision: every shown match as a similar pair (why the model put it "
             "there), wrong matches included; green and red mark the ground truth (--same model, the default).",
    "truth": "Maps explain the ground truth: a true match as a similar pair, a wrong match as a dissimilar one "
             "(what tells them apart); green and red mark the ground truth (--same truth).",
}
# Relative tolerance between the ranking's distance and the attribution's d_hat of a pair.
_DISTANCE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExplainOptions:
    """What :func:`write_explanations` explains.

    Attributes:
        num_queries: ``N``, queries explained, evenly spread.
        query_indices: these queries instead (indices into the query set, as ``query_index`` of
            ``explanations.json``); empty: ``num_queries`` spread ones.
        topk: ``K``, matches explained per query.
        triplets: also explain "why is A closer than B" (similarity attention only).
        same: Siamese weights from the ground truth (``truth``) or every shown match treated as a
            match (``model``).
        layer: explain this layer on the full model; None: the head-only path (or attribution).
        keep_same_camera: keep gallery images of the query's identity and camera.
        batch_size: pairs (or triplets) per explanation batch.
        top_nodes: attribution: nodes shown per level (and rectification candidates).
        feeders: attribution: lower-level nodes shown for the rectified node.
        max_matrix_mb: largest all-queries x gallery distance matrix (float32, plus the gallery
            embeddings where the failure table needs them) kept for the run's statistics; above
            it the statistics cover the explained queries only.
        progress: show progress bars.
    """

    num_queries: int = 10
    query_indices: tuple[int, ...] = ()
    topk: int = 5
    triplets: bool = False
    same: str = "model"
    layer: str | None = None
    keep_same_camera: bool = False
    batch_size: int = 32
    top_nodes: int = 3
    feeders: int = 3
    max_matrix_mb: float = 1024.0
    progress: bool = True

    def __post_init__(self) -> None:
        if min(self.num_queries, self.topk, self.batch_size, self.top_nodes, self.feeders) < 1:
            raise ValueError(
                "num_queries, topk, batch_size, top_nodes and feeders must be positive, got "
                f"{self.num_queries}, {self.topk}, {self.batch_size}, {self.top_nodes}, {self.feeders}"
            )
        if self.same not in SAME_MODES:
            raise ValueError(f"same must be one of {SAME_MODES}, got {self.same!r}")
        if self.max_matrix_mb < 0:
            raise ValueError(f"max_matrix_mb must be non-negative, got {self.max_matrix_mb}")


# -- choosing queries and ranking -----------------------------------------------------------------


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


# -- encoding and ranking -------------------------------------------------------------------------


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


# -- explaining -----------------------------------------------------------------------------------


class Explainer:
    """Siamese and triplet maps of query-gallery tuples, head-only or on the full model.

    Args:
        setup: model and options.
        encoded: the chosen queries.
        tracker: the ranked gallery (holding the kept ``layer4`` maps on the head-only path).
        gallery_set: the gallery dataset (network inputs for the full-model path).
    """

    def __init__(self, setup: Setup, encoded: EncodedQueries, tracker: MatchTracker, gallery_set: Any) -> None:
        self.setup = setup
        self.encoded = encoded
        self.tracker = tracker
        self.gallery_set = gallery_set

    def _query_inputs(self, queries: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.encoded.inputs[qi] for qi in queries])

    def _gallery_inputs(self, gallery: Sequence[int]) -> torch.Tensor:
        if self.setup.head_path:
            return torch.stack([self.tracker.payload[j] for j in gallery])
        return torch.stack([self.gallery_set[j]["img"] for j in gallery]).to(self.setup.device)

    def pairs(self, queries: Sequence[int], gallery: Sequence[int], same: Sequence[bool]) -> tuple[torch.Tensor, ...]:
        """Raw Siamese maps ``(T, h, w)`` of the queries and of the gallery images."""
        first, second = self._query_inputs(queries), self._gallery_inputs(gallery)
        same_t = torch.tensor(list(same), dtype=torch.bool, device=self.setup.device)
        model = self.setup.model
        with torch.no_grad():
            if self.setup.head_path:
                return explain_pair_features(model.embed_features, first, second, same_t)
            return explain_pair(model, self.setup.layer, first, second, same_t)

    def decompositions(
        self, queries: Sequence[int], gallery: Sequence[int]
    ) -> tuple[Decomposition, Decomposition] | None:
        """The exact splits of each pair's score (:mod:`reid.explain.decomposition`): of the
        squared Euclidean embedding distance (its stripe terms are recorded) and of the dot
        product (its cell maps and cell pairs are what the explorer shows); None when the model's
        score does not split."""
        model = self.setup.model
        stripes = model.explainability.decomposable_stripes
        if not stripes:
            return None
        first, second = self._query_inputs(queries), self._gallery_inputs(gallery)
        with torch.no_grad():
            if not self.setup.head_path:
                first, second = model.forward_features(first), model.forward_features(second)
            first, second = first.float(), second.float()
            return decompose_pair(first, second, stripes, "euclidean"), decompose_pair(first, second, stripes, "dot")

    def attributions(self, queries: Sequence[int], gallery: Sequence[int]) -> "PairAttributions":
        """AVSL attribution of the pairs ``(query, gallery image)`` (full-model path)."""
        return attribute_pairs(self.setup.model, self._query_inputs(queries), self._gallery_inputs(gallery))

    def triplets(
        self, queries: Sequence[int], closer: Sequence[int], farther: Sequence[int]
    ) -> tuple[torch.Tensor, ...]:
        """Raw triplet maps ``(T, h, w)`` of the queries, the closer and the farther images."""
        anchors, a, b = self._query_inputs(queries), self._gallery_inputs(closer), self._gallery_inputs(farther)
        model = self.setup.model
        with torch.no_grad():
            if self.setup.head_path:
                return explain_triplet_features(model.embed_features, anchors, a, b)
            return explain_triplet(model, self.setup.layer, anchors, a, b)


# -- writing --------------------------------------------------------------------------------------


def person_energy(raw_map: torch.Tensor, image_path: str) -> tuple[float | None, float | None]:
    """Energy inside the person mask of a map (:func:`reid.metrics.explanation.energy_inside`),
    and the person's area fraction (what a uniform map would score).

    The raw map is resized bilinearly to the mask's size and clamped non-negative first.

    Args:
        raw_map: ``(h, w)`` raw non-negative map.
        image_path: the image; its ground-truth part mask is looked up beside it (label 0 is
            background).

    Returns:
        ``(energy, area_fraction)``, each None when no mask exists; the energy is None for an
        all-zero map.
    """
    if not os.path.isfile(mask_path(image_path)):
        return None, None
    person = load_mask(image_path) > 0
    resized = resize_maps(raw_map[None].float().cpu(), person.shape).clamp(min=0)
    energy = float(energy_inside(resized, torch.from_numpy(person)[None])[0])
    return (None if np.isnan(energy) else energy), float(person.mean())


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


class ImageCache:
    """RGB images read once per path."""

    def __init__(self) -> None:
        self._images: dict[str, np.ndarray] = {}

    def __call__(self, path: str) -> np.ndarray:
        if path not in self._images:
            self._images[path] = load_image(path)
        return self._images[path]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]


@dataclass
class Dump:
    """What the explanations produce: JSON records and the report's entries."""

    out_dir: str
    pairs: list[dict[str, Any]] = field(default_factory=list)
    triplets: list[dict[str, Any]] = field(default_factory=list)
    matches: dict[int, list[Match]] = field(default_factory=dict)
    extra_panels: dict[int, list[Panel]] = field(default_factory=dict)
    levels: list[str] = field(default_factory=list)
    images: ImageCache = field(default_factory=ImageCache)
    explainers: list[ExplorerExplainer] = field(default_factory=list)
    explorer: dict[int, list[ExplorerMatch]] = field(default_factory=dict)


SA_EXPLAINER = ExplorerExplainer(
    "attention", "similarity attention",
    note="similarity attention of the pair (Siamese form): where the model found the two images alike "
    "(a true match) or different (a wrong one)",
)
DECOMPOSITION_EXPLAINER = ExplorerExplainer(
    "decomposition", "exact decomposition (signed)", signed=True,
    note="the similarity f_q . f_g split exactly over the cells of each image: red cells are evidence for "
    "the match, blue against; hovering a query cell shows the gallery cells it matched (the cell-pair terms)",
)


def dump_pairs(explainer: Explainer, dump: Dump, same_mode: str) -> None:
    """Explains every query's top-K matches and writes one panel per pair."""
    tracker, queries = explainer.tracker, explainer.encoded.queries
    pids, camids, dist = np.concatenate(tracker.pids), np.concatenate(tracker.camids), tracker.distances()
    pairs = [(qi, rank, j) for qi in range(len(queries)) for rank, j in enumerate(tracker.ranked(qi), start=1)]
    bar = explainer.setup.bar(desc="pairs", total=len(pairs))
    dump.explainers = [SA_EXPLAINER]
    for chunk in _chunks(pairs, explainer.setup.batch_size):
        correct = [bool(pids[j] == queries[qi].pid) for qi, _, j in chunk]
        same = correct if same_mode == "truth" else [True] * len(chunk)
        m_query, m_gallery = explainer.pairs([qi for qi, _, _ in chunk], [j for _, _, j in chunk], same)
        split = explainer.decompositions([qi for qi, _, _ in chunk], [j for _, _, j in chunk])
        n_query, n_gallery = normalize_maps(m_query).cpu().numpy(), normalize_maps(m_gallery).cpu().numpy()
        if split is not None:
            dump.explainers = [SA_EXPLAINER, DECOMPOSITION_EXPLAINER]
        for t, (qi, rank, j) in enumerate(chunk):
            query, g_path, distance = queries[qi], tracker.paths[j], float(dist[qi, j])
            panel = f"panels/q{query.index:05d}_r{rank:03d}.png"
            image = pair_panel(
                dump.images(query.path), dump.images(g_path), n_query[t], n_gallery[t], distance, rank, correct[t],
                query.pid, int(pids[j]),
            )
            save_image(os.path.join(dump.out_dir, panel), image)
            q_frac, q_area = person_energy(m_query[t], query.path)
            g_frac, g_area = person_energy(m_gallery[t], g_path)
            terms = None if split is None else [float(v) for v in split[0].stripes[t].cpu()]
            dump.pairs.append({
                "query_index": query.index, "query_path": query.path, "gallery_index": j, "gallery_path": g_path,
                "query_pid": query.pid, "gallery_pid": int(pids[j]),
                "query_camid": query.camid, "gallery_camid": int(camids[j]),
                "distance": distance, "rank": rank, "correct": correct[t], "same": same[t], "panel": panel,
                "query_mask_fraction": q_frac, "gallery_mask_fraction": g_frac,
                "query_mask_area": q_area, "gallery_mask_area": g_area,
                **({} if terms is None else {"stripe_terms": terms}),
            })
            dump.matches.setdefault(qi, []).append(
                Match(g_path, int(pids[j]), distance, rank, correct[t], os.path.join(dump.out_dir, panel))
            )
            maps = {SA_EXPLAINER.key: (n_query[t], n_gallery[t])}
            extra: dict[str, Any] = {}
            if split is not None:
                dot = split[1]
                maps[DECOMPOSITION_EXPLAINER.key] = (dot.query_cells[t].cpu().numpy(), dot.gallery_cells[t].cpu().numpy())
                grid = tuple(dot.query_cells.shape[1:])
                extra = {
                    "contributions": [(f"stripe {s + 1}", v) for s, v in enumerate(terms)],
                    "contributions_label": "squared distance by stripe (top first; the closest marked)",
                    "highlight": int(np.argmin(terms)),
                    "correspondence": dot.pairs[t].cpu().numpy(), "query_grid": grid, "gallery_grid": grid,
                }
            dump.explorer.setdefault(qi, []).append(ExplorerMatch(
                dump.images(g_path), os.path.basename(g_path), int(pids[j]), distance, rank, correct[t], maps,
                panel=panel, **extra,
            ))
        bar.update(len(chunk))
    bar.close()


def dump_triplets(explainer: Explainer, dump: Dump) -> None:
    """For each query: why is the top match A closer than B, the best match of the other kind."""
    tracker, queries = explainer.tracker, explainer.encoded.queries
    pids, dist = np.concatenate(tracker.pids), tracker.distances()
    triples = [
        (qi, tracker.ranked(qi)[0], b)
        for qi in range(len(queries))
        if tracker.ranked(qi) and (b := tracker.contrast(qi)) is not None
    ]
    for chunk in explainer.setup.bar(list(_chunks(triples, explainer.setup.batch_size)), "triplets"):
        maps = explainer.triplets(*([row[k] for row in chunk] for k in range(3)))
        m_anchor, m_a, m_b = (normalize_maps(m).cpu().numpy() for m in maps)
        for t, (qi, a, b) in enumerate(chunk):
            query = queries[qi]
            correct_a, correct_b = bool(pids[a] == query.pid), bool(pids[b] == query.pid)
            d_a, d_b, rank_b = float(dist[qi, a]), float(dist[qi, b]), tracker.rank_of(qi, b)
            panel = f"triplets/q{query.index:05d}.png"
            image = triplet_panel(
                dump.images(query.path), dump.images(tracker.paths[a]), dump.images(tracker.paths[b]),
                m_anchor[t], m_a[t], m_b[t], d_a, d_b, correct_a, correct_b,
            )
            save_image(os.path.join(dump.out_dir, panel), image)
            dump.triplets.append({
                "query_index": query.index, "query_path": query.path, "query_pid": query.pid,
                "a_path": tracker.paths[a], "a_pid": int(pids[a]), "a_rank": 1, "a_distance": d_a,
                "a_correct": correct_a, "b_path": tracker.paths[b], "b_pid": int(pids[b]), "b_rank": rank_b,
                "b_distance": d_b, "b_correct": correct_b, "panel": panel,
            })
            caption = f"why is rank 1 ({'correct' if correct_a else 'wrong'}) closer than rank {rank_b}?"
            dump.extra_panels.setdefault(qi, []).append(Panel(os.path.join(dump.out_dir, panel), caption))


# -- AVSL attribution -----------------------------------------------------------------------------


@dataclass
class PairAttributions:
    """AVSL attribution of B pairs as CPU numpy arrays (see :meth:`reid.models.avsl.AVSL.attribute`).

    Attributes:
        levels: the names of the L levels, bottom-up.
        distance: ``(B,)`` ``d_hat`` from the attribution pass.
        nodes: L arrays ``(B, R)`` ``delta^l``.
        weights: L arrays ``(B, R)`` ``lambda^l``; ``sum_l (weights * nodes).sum(1) == distance``.
        reliabilities: L-1 arrays ``(B, R)`` ``p^l`` of levels ``2..L``.
        rectified: L arrays ``(B, R)`` ``delta_hat^l`` (eq. 8; ``delta_hat^1 = delta^1``).
        edge_weights: L-1 arrays ``(R, R)`` ``W~^l`` of levels ``2..L``.
        cams1: L arrays ``(B, R, h_l, w_l)``: the first images' node CAMs, each min-max normalised.
        cams2: L arrays of the second images' normalised node CAMs.
    """

    levels: list[str]
    distance: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    reliabilities: list[np.ndarray]
    rectified: list[np.ndarray]
    edge_weights: list[np.ndarray]
    cams1: list[np.ndarray]
    cams2: list[np.ndarray]


def _unit_cams(cams: torch.Tensor) -> np.ndarray:
    """``(B, R, h, w)`` -> the same, each map min-max normalised to ``[0, 1]``, numpy float32."""
    return normalize_maps(cams.flatten(0, 1).float()).reshape(cams.shape).cpu().numpy()


@torch.no_grad()
def attribute_pairs(model: nn.Module, first: torch.Tensor, second: torch.Tensor) -> PairAttributions:
    """The model's exact attribution of the pairs (:meth:`reid.models.base.ReidModel.attribute`)
    as CPU numpy arrays.

    Reference: AVSL paper, section 3.3 (eq. 8) and section 3.4 (eq. 11); ``docs/method.md``
    section 5.

    Args:
        model: a model with ``explainability.attribution``, in eval mode.
        first: ``(B, 3, H, W)`` query images.
        second: ``(B, 3, H, W)`` gallery images.
    """
    out = model.attribute(first, second)

    def arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
        return [t.detach().double().cpu().numpy() for t in tensors]

    return PairAttributions(
        levels=list(out["levels"]), distance=out["distance"].detach().double().cpu().numpy(), nodes=arrays(out["nodes"]),
        weights=arrays(out["weights"]), reliabilities=arrays(out["reliabilities"]),
        rectified=arrays(out["rectified"]), edge_weights=arrays(out["edge_weights"]),
        cams1=[_unit_cams(c) for c in out["cams1"]], cams2=[_unit_cams(c) for c in out["cams2"]],
    )


def attribution_explainers(levels: Sequence[str]) -> list[ExplorerExplainer]:
    """One explorer view per AVSL level: the CAM of the level's node that adds most to ``d_hat``."""
    return [
        ExplorerExplainer(
            f"level{k}", f"AVSL {name}: top node",
            note=f"the CAM of the {name} node with the largest contribution lambda * delta to d_hat, on each image",
        )
        for k, name in enumerate(levels)
    ]


def dump_attributions(explainer: Explainer, dump: Dump, top_nodes: int, feeders: int) -> None:
    """Attributes every query's top-K matches (AVSL) and writes one attribution panel per pair.

    The recorded ``distance`` is the engine's (the ranking's); ``attributed_distance`` is the
    attribution pass's ``d_hat``, which the contributions sum to; a warning is logged when the two
    differ by more than a relative ``1e-4``.
    """
    tracker, queries = explainer.tracker, explainer.encoded.queries
    pids, camids, dist = np.concatenate(tracker.pids), np.concatenate(tracker.camids), tracker.distances()
    pairs = [(qi, rank, j) for qi in range(len(queries)) for rank, j in enumerate(tracker.ranked(qi), start=1)]
    bar = explainer.setup.bar(desc="attributions", total=len(pairs))
    for chunk in _chunks(pairs, explainer.setup.batch_size):
        att = explainer.attributions([qi for qi, _, _ in chunk], [j for _, _, j in chunk])
        dump.levels = att.levels
        for t, (qi, rank, j) in enumerate(chunk):
            query, g_path, distance = queries[qi], tracker.paths[j], float(dist[qi, j])
            correct = bool(pids[j] == query.pid)
            summary = summarize_attribution(
                float(att.distance[t]), att.levels, [n[t] for n in att.nodes], [w[t] for w in att.weights],
                [p[t] for p in att.reliabilities], [r[t] for r in att.rectified], att.edge_weights,
                top=top_nodes, feeders=feeders,
            )
            if abs(summary.distance - distance) > _DISTANCE_TOLERANCE * max(1.0, abs(distance)):
                logger.warning(
                    "query %d, gallery %d: attributed d_hat %.6f differs from the ranking's distance %.6f",
                    query.index, j, summary.distance, distance,
                )
            panel = f"attributions/q{query.index:05d}_r{rank:03d}.png"
            image = attribution_panel(
                dump.images(query.path), dump.images(g_path), summary, [c[t] for c in att.cams1],
                [c[t] for c in att.cams2], rank=rank, correct=correct,
            )
            save_image(os.path.join(dump.out_dir, panel), image)
            dump.pairs.append({
                "query_index": query.index, "query_path": query.path, "gallery_index": j, "gallery_path": g_path,
                "query_pid": query.pid, "gallery_pid": int(pids[j]),
                "query_camid": query.camid, "gallery_camid": int(camids[j]),
                "distance": distance, "attributed_distance": summary.distance, "rank": rank, "correct": correct,
                "panel": panel, "attribution": summary.to_dict(),
            })
            caption = f"AVSL attribution: d_hat {summary.distance:.4f} by level and node, and one rectified node"
            dump.explainers = attribution_explainers(att.levels)
            maps, totals = {}, []
            for level, (name, weights, nodes) in enumerate(zip(att.levels, att.weights, att.nodes)):
                contributions = weights[t] * nodes[t]
                top = int(np.argmax(contributions))
                maps[dump.explainers[level].key] = (att.cams1[level][t][top], att.cams2[level][t][top])
                totals.append((name, float(contributions.sum())))
            dump.explorer.setdefault(qi, []).append(ExplorerMatch(
                dump.images(g_path), os.path.basename(g_path), int(pids[j]),
                distance, rank, correct, maps, contributions=totals,
                contributions_label="d_hat by level (exact; the largest marked)",
                highlight=int(np.argmax([v for _, v in totals])), panel=panel,
            ))
            dump.matches.setdefault(qi, []).append(
                Match(g_path, int(pids[j]), distance, rank, correct, None,
                      (Panel(os.path.join(dump.out_dir, panel), caption),))
            )
        bar.update(len(chunk))
    bar.close()


def level_shares(dump: Dump) -> dict[str, float | None]:
    """Mean share of ``d_hat`` per level over the attributed pairs (level total / distance)."""
    shares: dict[str, list[float]] = {}
    for record in dump.pairs:
        total = record["attribution"]["distance"]
        for level in record["attribution"]["levels"]:
            shares.setdefault(level["level"], []).append(level["total"] / total if total > 0 else None)
    return {name: _mean(values) for name, values in shares.items()}


def summarize_dump(dump: Dump) -> dict[str, Any]:
    """Counts, mean mask-mass fractions (both images of each pair pooled) and, for decomposable
    models, how often each stripe was the closest of a wrong top-1 match."""

    def fractions(correct: bool) -> list[float | None]:
        keys = ("query_mask_fraction", "gallery_mask_fraction")
        return [r.get(key) for r in dump.pairs if r["correct"] == correct for key in keys]

    wrong_top1 = [r for r in dump.pairs if r["rank"] == 1 and not r["correct"] and "stripe_terms" in r]
    closest = [int(np.argmin(r["stripe_terms"])) for r in wrong_top1]
    return {
        "num_pairs": len(dump.pairs),
        "num_triplets": len(dump.triplets),
        "rank1_correct": sum(r["correct"] for r in dump.pairs if r["rank"] == 1),
        "mean_mask_fraction_correct": _mean(fractions(True)),
        "mean_mask_fraction_wrong": _mean(fractions(False)),
        "mean_mask_area": _mean(r.get(k) for r in dump.pairs for k in ("query_mask_area", "gallery_mask_area")),
        # wrong top-1 matches: how often each stripe (0 = top) was the impostor's closest
        **({"wrong_top1_closest_stripe": [closest.count(s) for s in range(len(wrong_top1[0]["stripe_terms"]))]}
           if wrong_top1 else {}),
    }


# -- the run's statistics and failures ------------------------------------------------------------

HISTOGRAM_BINS = 40
# Query rows per block of the failure analysis (bounds its temporaries).
_FAILURE_ROWS = 1024


@dataclass
class RunSummary:
    """The run's ranking numbers over the queries it covers.

    Attributes:
        stats: what the explorer draws.
        ap: ``(R,)`` average precision of each covered query (NaN without a true match).
        first_match_rank: ``(R,)`` rank of each covered query's first true match (0: none).
        num_queries: queries covered.
    """

    stats: RunStatistics
    ap: np.ndarray
    first_match_rank: np.ndarray
    num_queries: int


def run_summary(
    distances: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
    source: str, bins: int = HISTOGRAM_BINS,
) -> RunSummary | None:
    """CMC, mAP, mINP and per-query AP (:func:`reid.metrics.evaluate`, equal distances in gallery
    order as the shown ranking), and histograms of the distances of true pairs (same identity,
    other camera) and wrong pairs (other identity) over ``bins`` equal bins; None when no query
    has a true match."""
    if distances.shape[1] == 0:
        return None
    try:
        result = evaluate(
            distances, q_pids, g_pids, q_camids, g_camids, max_rank=min(50, distances.shape[1]), tie_break="stable"
        )
    except NoValidQueryError:
        return None
    same_pid = q_pids[:, None] == g_pids[None, :]
    positive = same_pid & (q_camids[:, None] != g_camids[None, :])
    finite = np.isfinite(distances)
    values = distances[finite]
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    pos_counts, _ = np.histogram(distances[positive & finite], bins=edges)
    neg_counts, _ = np.histogram(distances[~same_pid & finite], bins=edges)
    stats = RunStatistics(
        source=source, cmc=[float(v) for v in result.cmc], mAP=float(result.mAP), mINP=float(result.mINP),
        edges=[float(e) for e in edges], positive_counts=[int(c) for c in pos_counts],
        negative_counts=[int(c) for c in neg_counts],
    )
    return RunSummary(stats, result.ap, result.first_match_rank, len(q_pids))


def failure_analysis(
    distances: np.ndarray, query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor, num_stripes: int,
    q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
) -> dict[str, Any]:
    """Which stripe made the wrong top-1 matches close, over every query whose top-1 is wrong.

    The top-1 match and the best true match follow the evaluation protocol (gallery images of the
    query's identity and camera removed, equal distances in gallery order). For a decomposable
    model the embedding is ``P`` unit stripe vectors, so the squared Euclidean embedding distance
    splits exactly into stripe terms ``||n_qs - n_gs||^2`` (:mod:`reid.explain.decomposition`).

    Returns:
        ``num_wrong_top1``; per stripe (top first): ``closest`` (how often it was the impostor's
        smallest term), ``most_favoured`` (how often it had the largest margin ``term(true) -
        term(impostor)``, i.e. did most to put the impostor ahead of the best true match) and
        ``mean_margin``.
    """
    q_emb = query_embeddings.double().reshape(len(q_pids), num_stripes, -1)
    g_emb = gallery_embeddings.double().reshape(len(g_pids), num_stripes, -1)
    closest, favoured = np.zeros(num_stripes, dtype=np.int64), np.zeros(num_stripes, dtype=np.int64)
    margins = []
    for start in range(0, len(q_pids), _FAILURE_ROWS):
        rows = slice(start, start + _FAILURE_ROWS)
        same_pid = q_pids[rows, None] == g_pids[None, :]
        junk = same_pid & (q_camids[rows, None] == g_camids[None, :])
        kept = np.where(junk, np.inf, distances[rows].astype(np.float64))
        top1 = np.argmin(kept, axis=1)  # the first of equal minima: gallery order
        true_rows = np.where(same_pid & ~junk, kept, np.inf)
        best_true = np.argmin(true_rows, axis=1)
        local = np.arange(kept.shape[0])
        failed = ~same_pid[local, top1] & np.isfinite(true_rows[local, best_true]) & np.isfinite(kept[local, top1])
        for q in np.flatnonzero(failed):
            query = q_emb[start + q]
            impostor = ((query - g_emb[top1[q]]) ** 2).sum(1).numpy()
            truth = ((query - g_emb[best_true[q]]) ** 2).sum(1).numpy()
            closest[int(np.argmin(impostor))] += 1
            favoured[int(np.argmax(truth - impostor))] += 1
            margins.append(truth - impostor)
    mean_margin = np.mean(margins, axis=0) if margins else np.full(num_stripes, np.nan)
    return {
        "num_wrong_top1": len(margins),
        "closest": closest.tolist(),
        "most_favoured": favoured.tolist(),
        "mean_margin": [None if np.isnan(v) else float(v) for v in mean_margin],
    }


def failure_table(failures: dict[str, Any], num_queries: int) -> FailureTable:
    """The explorer's table of :func:`failure_analysis`."""
    rows = [
        (f"stripe {s + 1}", closest, favoured, "n/a" if margin is None else f"{margin:+.4f}")
        for s, (closest, favoured, margin) in enumerate(
            zip(failures["closest"], failures["most_favoured"], failures["mean_margin"])
        )
    ]
    return FailureTable(
        f"Wrong top-1 matches: which stripe made the impostor close ({failures['num_wrong_top1']} of "
        f"{num_queries} queries)",
        ("stripe (top first)", "impostor's closest stripe", "most in the impostor's favour",
         "mean margin term(true) - term(impostor)"),
        rows,
        "Stripe terms of the squared embedding distance (exact: they sum to it). A positive margin means the "
        "stripe is closer to the impostor than to the best true match.",
    )


# -- the whole dump -------------------------------------------------------------------------------


def write_explanations(
    model: nn.Module,
    device: torch.device,
    loaders: dict[str, DataLoader],
    distances_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | np.ndarray],
    out_dir: str,
    options: ExplainOptions,
    title: str = "",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    saved: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Explains the top matches of ``options.num_queries`` queries and writes the dump (module docstring).

    Args:
        model: the model, in eval mode (never changed here).
        device: where it runs.
        loaders: ``{"query": ..., "gallery": ...}`` test loaders (torchreid's dict batches).
        distances_of: ``(N, D), (M, D)`` eval features -> ``(N, M)`` distances (the model's own).
        out_dir: the dump's folder.
        options: what to explain.
        title: the report's title (the dataset's name is a good one).
        autocast: context of the trunk passes (mixed precision); attribution always runs in
            float32 (its eq. 11 identity is checked exactly) and the maps are computed in float32.
        saved: the query and gallery sets' embeddings (e.g. from ``reid test --save-features``), in
            dataset order: the ranking and the run's statistics read them, and the trunk runs only
            on the chosen queries and the gallery images their explanations need.

    Returns:
        The summary (also written to ``explanations.json`` with the pairs and triplets).

    Raises:
        ValueError: triplets or a layer asked of a model explained by attribution.
    """
    attribution = model.explainability.attribution
    if attribution and (options.triplets or options.layer):
        raise ValueError(
            f"triplets and an explicit layer explain with similarity attention, which does not apply to "
            f"{type(model).__name__} (its distance is explained by exact attribution panels)"
        )
    setup = Setup(
        model=model, device=device, head_path=options.layer is None and not attribution,
        layer=options.layer or model.explainability.head_layer, batch_size=options.batch_size,
        progress=options.progress,
    )
    context = contextlib.nullcontext() if attribution else autocast()
    with context:
        wanted = options.query_indices or options.num_queries
        encoded = encode_queries(setup, loaders["query"], wanted, None if saved is None else saved[0])
        tracker, kept = rank_gallery(
            setup, loaders["gallery"], encoded, _as_numpy(distances_of), options.topk, not options.keep_same_camera,
            options.max_matrix_mb, None if saved is None else saved[1],
        )
        explainer = Explainer(setup, encoded, tracker, loaders["gallery"].dataset)
        dump = Dump(out_dir)
        if attribution:
            dump_attributions(explainer, dump, options.top_nodes, options.feeders)
        else:
            dump_pairs(explainer, dump, options.same)
        if options.triplets:
            dump_triplets(explainer, dump)

    results = [
        QueryResult(
            q.path, q.pid, dump.matches.get(qi, []), dump.extra_panels.get(qi, []),
            name=f"{os.path.basename(q.path)} (query {q.index})",
        )
        for qi, q in enumerate(encoded.queries)
    ]
    kind = "AVSL attribution" if attribution else "Similarity attention"
    page_title = f"{kind}: {title}" if title else kind
    panels_page = write_html_report(dump.out_dir, results, title=page_title, file_name=PANELS_PAGE)

    g_pids, g_camids = np.concatenate(tracker.pids), np.concatenate(tracker.camids)
    run, failures = None, None
    if kept.distances is not None:
        run = run_summary(
            kept.distances, encoded.all_pids, encoded.all_camids, g_pids, g_camids,
            f"all {len(encoded.all_pids)} queries",
        )
        stripes = model.explainability.decomposable_stripes
        if stripes and kept.embeddings is not None:
            failures = failure_analysis(
                kept.distances, encoded.all_embeddings, kept.embeddings, stripes, encoded.all_pids,
                encoded.all_camids, g_pids, g_camids,
            )
    chosen_rows = np.arange(len(encoded.queries)) if run is None else encoded.chosen
    if run is None:
        run = run_summary(
            tracker.distances(), tracker.query_pids, tracker.query_camids, g_pids, g_camids,
            f"the {len(encoded.queries)} explained queries only",
        )
    query_records = []
    explorer_queries = []
    for qi, q in enumerate(encoded.queries):
        ap = None if run is None or np.isnan(run.ap[chosen_rows[qi]]) else float(run.ap[chosen_rows[qi]])
        first = 0 if run is None else int(run.first_match_rank[chosen_rows[qi]])
        query_records.append({"query_index": q.index, "query_path": q.path, "query_pid": q.pid, "ap": ap,
                              "first_match_rank": first})
        explorer_queries.append(ExplorerQuery(
            dump.images(q.path), f"{os.path.basename(q.path)} (query {q.index})", q.pid, ap, first,
            dump.explorer.get(qi, []),
            [(os.path.relpath(p.path, dump.out_dir), p.caption) for p in dump.extra_panels.get(qi, [])],
        ))
    removed = "kept" if options.keep_same_camera else "removed"
    notes = [] if attribution else [SAME_NOTES[options.same]]
    notes += [
        f"{len(encoded.queries)} queries explained, sorted by average precision (worst first); each with its top "
        f"{options.topk} gallery images by the model's own distance (gallery images of the query's identity and "
        f"camera {removed}). Panels for papers: {PANELS_PAGE}.",
    ]
    tables = [] if failures is None else [failure_table(failures, len(encoded.all_pids))]
    explorer = write_explorer(
        os.path.join(dump.out_dir, EXPLORER_PAGE), explorer_queries, dump.explainers, title=page_title,
        stats=None if run is None else run.stats, tables=tables, notes=notes,
    )
    if attribution:
        method = {"explained_with": "attribution", "levels": dump.levels, "same": None,
                  "mean_level_share": level_shares(dump)}
    else:
        method = {"explained_with": "head" if setup.head_path else "model", "layer": setup.layer,
                  "same": options.same}
    summary = {
        "dataset": title, **method,
        "num_queries": len(encoded.queries), "num_gallery": tracker.num_gallery, **summarize_dump(dump),
        "run": None if run is None else {
            "queries": run.stats.source, "rank1": run.stats.cmc[0], "mAP": run.stats.mAP, "mINP": run.stats.mINP,
            "cmc": run.stats.cmc[:20],
        },
        **({} if failures is None else {"failures": failures}),
        "report": os.path.abspath(explorer), "panels_page": os.path.abspath(panels_page),
        "json": os.path.abspath(os.path.join(dump.out_dir, "explanations.json")),
    }
    write_json(summary["json"], {
        "summary": summary, "queries": query_records, "pairs": dump.pairs, "triplets": dump.triplets,
    })
    return summary


def _as_numpy(
    distances_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | np.ndarray]
) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    def distances(query: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
        result = distances_of(query, gallery)
        return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)

    return distances
