"""Explanation dumps of a model's top matches: panels, the explorer and ``explanations.json``.

:func:`write_explanations` does what ``reid explain`` runs, on one query and gallery set. Its
stages live in one file each:

* :mod:`reid.explain.ranking`: which queries are explained (``N`` evenly spread ones, or the ones
  named), their one trunk pass, and the gallery streamed once and ranked for them by the model's
  own distance (evaluation protocol, ties in gallery order), keeping only the maps the
  explanations need;
* :mod:`reid.explain.explainer`: the maps of the chosen pairs and triplets (similarity attention,
  head-only or on the full model), the exact stripe decompositions, and AVSL's attributions;
* :mod:`reid.explain.run_stats`: the run's CMC, mAP, mINP, distance histograms and failure table;
* this module: what is explained (steps 4-5 below), and writing the panels, ``panels.html``, the
  explorer ``index.html`` and ``explanations.json``.

What is explained:

* **Siamese explanation** of each of the top-``K`` pairs. ``same="model"`` (default): every shown
  match is explained as a match, because the model ranks it among its top ``K``: the maps answer
  "why did the model put this image here?", for wrong matches too, whose ground truth the panels
  and the explorer show by colour. ``same="truth"``: ``same`` is the ground truth (query and
  gallery identities equal), so a wrong match is explained as a dissimilar pair ("what differs").
  The explorer's notes say which one is shown. Reference: SAM paper, section 3.1;
  ``docs/method.md`` sections 2 and 4.
* **Triplet explanation** (``triplets=True``): "why is the top match A closer than B", where B is
  the best-ranked gallery image whose correctness differs from A's: the first wrong match when A
  is correct, the first true match when A is wrong (why the model failed). B may rank below
  ``K``; its map was kept while streaming. No triplet when no such B exists.

Everything goes under ``out_dir``:

* ``panels/q<query>_r<rank>.png``: one panel per pair (query, both overlays, gallery, distance,
  rank, correct or wrong);
* ``triplets/q<query>.png``: triplet panels;
* ``index.html``: the explorer (one self-contained page, :mod:`reid.vis.explorer`);
* ``panels.html``: the report over the panels (query and gallery images are copied under
  ``images/``);
* ``explanations.json``: per pair the query and gallery paths and identities, distance, rank,
  correct (identity equality), the ``same`` used for the weights, the panel path relative to
  the report, and, where a ground-truth person mask exists beside the image (the synthetic set),
  the energy of each map inside the person mask (``query_mask_fraction``,
  ``gallery_mask_fraction``: :func:`person_energy`) and the person's area; the triplets; a summary.

**Models with exact attribution** (``model.explainability.attribution``, e.g. AVSL) are not
explained with similarity attention (their eval features are not an embedding; the distance is
``d_hat``). The queries and the ranking are the same; the trunk pass is the full model's; the
Siamese and triplet explanations are replaced by one **attribution panel** per pair (triplets and
an explicit layer are refused by the caller, ``same`` is ignored), from the model's
:meth:`~reid.models.base.ReidModel.attribute` (:meth:`reid.explain.explainer.Explainer.attributions`)
and :mod:`reid.vis.attribution`:

* the overall distance ``d_hat`` and its split over the levels, ``sum_i lambda^l_i delta^l_i``
  (exact: AVSL paper, section 3.4, eq. 11);
* per level, the ``top_nodes`` nodes with the largest contribution ``lambda^l_i delta^l_i``, each
  with its node CAM overlaid on the query and on the gallery image;
* one rectified node: among the ``top_nodes`` top-level nodes with the largest rectified value
  ``delta_hat^L_i`` (the terms of ``d_hat``), the least reliable one (lowest ``p``), with its raw
  ``delta``, ``p``, ``delta_hat = p delta + (1 - p) sum_j W~_ij delta_hat^(L-1)_j`` (eq. 8) and the
  ``feeders`` lower-level nodes ``j`` with the largest ``W~_ij delta_hat^(L-1)_j`` (their edge
  weights and CAMs).

Panels go to ``attributions/q<query>_r<rank>.png`` and join ``panels.html`` as each match's panel;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reid.data.synthetic import load_mask, mask_path
from reid.metrics.explanation import energy_inside
from reid.io import write_json
from reid.vis import Match, Panel, QueryResult, load_image, pair_panel, save_image, triplet_panel
from reid.vis import attribution_panel, summarize_attribution, write_html_report
from reid.vis.explorer import ExplorerExplainer, ExplorerMatch, ExplorerQuery, write_explorer

from .common import chunks, mean_of
from .explainer import Explainer
from .postprocess import normalize_maps, resize_maps
from .ranking import Setup, encode_queries, numpy_distances, rank_gallery
from .run_stats import failure_analysis, failure_table, run_summary

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


# -- writing ---------------------------------------------------------------------------------------


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


class ImageCache:
    """RGB images read once per path."""

    def __init__(self) -> None:
        self._images: dict[str, np.ndarray] = {}

    def __call__(self, path: str) -> np.ndarray:
        if path not in self._images:
            self._images[path] = load_image(path)
        return self._images[path]


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
    for chunk in chunks(pairs, explainer.setup.batch_size):
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
    for chunk in explainer.setup.bar(list(chunks(triples, explainer.setup.batch_size)), "triplets"):
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
    for chunk in chunks(pairs, explainer.setup.batch_size):
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
    return {name: mean_of(values) for name, values in shares.items()}


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
        "mean_mask_fraction_correct": mean_of(fractions(True)),
        "mean_mask_fraction_wrong": mean_of(fractions(False)),
        "mean_mask_area": mean_of(r.get(k) for r in dump.pairs for k in ("query_mask_area", "gallery_mask_area")),
        # wrong top-1 matches: how often each stripe (0 = top) was the impostor's closest
        **({"wrong_top1_closest_stripe": [closest.count(s) for s in range(len(wrong_top1[0]["stripe_terms"]))]}
           if wrong_top1 else {}),
    }


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
            setup, loaders["gallery"], encoded, numpy_distances(distances_of), options.topk, not options.keep_same_camera,
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
