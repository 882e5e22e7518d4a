"""Explanation quality on controlled synthetic triplets: pointing game, energy inside, deletion, insertion.

:func:`evaluate_explanations` does what ``reid eval-explanations`` runs:

1. **Triplets** (:func:`reid.data.controlled.build_controlled_triplets`): ``N`` anchors of test
   identities in a seeded random order, a positive of the same identity, and a negative that is
   the anchor re-rendered with exactly one attribute changed. The changed attribute's part region
   is the ground truth for "why is the negative dissimilar".
2. **Explainers** (:func:`explainer_names`), on the same pairs: ``sam_siamese`` (similarity
   attention, Siamese weights: ``|fa - fn|`` for the negative pair, ``1 - |fa - fp|`` for the
   positive pair), ``sam_triplet`` (triplet weights, one map per image of ``(a, p, n)``),
   ``id_gradcam`` (Grad-CAM of the identity classifier for its predicted identity; models with
   ``explainability.classifier``, e.g. PCB), ``dot_gradcam`` (Grad-CAM of ``f1 . f2``),
   ``decomposition`` (models with ``explainability.decomposable_stripes``, e.g. PCB with pooled
   features: the exact cell maps of :mod:`reid.explain.decomposition`; for the negative pair each
   image's share of the squared Euclidean distance, for the positive pair the positive's share of
   the cosine similarity; the metrics keep the positive part), ``actmap``
   (torchreid's ``visualize_actmap``: sum of squared head-map channels), ``avsl_nodes``
   (contribution-weighted CAMs of the top highest-level nodes; models with
   ``explainability.attribution``, i.e. AVSL), and the floors ``centre`` (Gaussian centre prior)
   and ``random`` (uniform noise). For AVSL the similarity-attention and dot-product maps explain
   the top-level embedding ``e^L`` computed from ``layer4``. All maps come from one trunk pass per
   image (head-only gradients), at the head map's resolution. With a ``layer`` (the config's
   ``TEST.EXPLAIN_LAYER``, the layer ``reid explain`` shows; not for attribution models),
   ``sam_siamese@<layer>`` and ``sam_triplet@<layer>`` add the same two explanations at that
   layer, on the full model.
3. **Pointing game and energy inside** (:mod:`reid.metrics.explanation`) on the negative pair:
   the anchor's and the negative's maps, bilinearly resized to the stored image size, against the
   region (pointing game with a ``tolerance`` pixel band); pooled over both images.
4. **Deletion and insertion** on the positive pair of the first ``M`` triplets: the positive's
   map, resized to the network input, orders its pixels; ``steps`` steps remove (deletion) or
   reveal (insertion) them, replaced by the ``baseline`` (``mean``: zero input, i.e. the
   normalisation mean colour; ``blur``: a Gaussian blur, sigma 5 px). The quantity is the pair's
   similarity (:meth:`reid.models.base.ReidModel.pair_similarity`: cosine of the embeddings for
   PCB, ``-d_hat`` for AVSL). Area over ``[0, 1]``: lower deletion AUC and higher insertion AUC
   are better.

5. **Sanity check** (Adebayo et al., NeurIPS 2018) on the first ``sanity_triplets`` triplets:
   the model's blocks are re-initialised in cascade from the top (:mod:`reid.explain.sanity`:
   the head, then the trunk stages last to first) and each explainer's anchor and negative maps
   are compared with the trained model's by Spearman rank correlation
   (:func:`reid.metrics.explanation.rank_correlation`). ``sanity_top`` is the correlation once the
   top two blocks are random (the head and the last stage); above ``sanity_threshold`` (0.5) the
   explainer is flagged: its maps barely depend on the weights that make the decision.

The result (settings, the table, per-attribute pointing game, the triplets) is what
``explanation_quality.json`` holds; :func:`format_tables` prints the table.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from reid.data.controlled import ATTRIBUTE_PARTS, ControlledTriplet, build_controlled_triplets
from reid.data.synthetic import is_complete
from reid.metrics.explanation import baseline_images, curve_auc, deletion_curve, dilate_regions
from reid.metrics.explanation import energy_inside, insertion_curve, pointing_game, rank_correlation
from reid.metrics.stats import bootstrap_interval

from .baselines import (
    activation_maps,
    avsl_node_maps,
    centre_prior,
    classifier_grad_cam_features,
    dot_product_maps_features,
    random_maps,
)
from .common import chunks, mean_of
from .decomposition import decompose_pair
from .postprocess import resize_maps
from .sanity import cascade_blocks, randomized_copy
from .tuples import explain_pair, explain_pair_features, explain_triplet, explain_triplet_features

logger = logging.getLogger(__name__)

RESULT_FILE = "explanation_quality.json"
COLUMNS = ("pointing_game", "energy_inside", "deletion_auc", "insertion_auc")
BASELINES = ("mean", "blur")


def explainer_names(explainability: Any, layer: str | None = None) -> tuple[str, ...]:
    """The explainers that apply to a model with this :class:`~reid.models.base.Explainability`,
    in table order (plus the similarity-attention explainers at ``layer`` when given)."""
    return (
        *(("avsl_nodes",) if explainability.attribution else ()),
        "sam_siamese", "sam_triplet",
        *(("id_gradcam",) if explainability.classifier else ()),
        "dot_gradcam",
        *(("decomposition",) if explainability.decomposable_stripes else ()),
        "actmap", "centre", "random",
        *layer_explainers(layer),
    )


@dataclass(frozen=True)
class QualityOptions:
    """Settings of :func:`evaluate_explanations` (see the module docstring).

    Attributes:
        num_triplets: ``N`` controlled triplets.
        seed: seeds the triplets and the random floor.
        num_curves: triplets whose positive pair gets deletion/insertion curves (the first ``M``;
            0: all).
        layer: also explain this layer on the full model (None: no).
        steps: deletion/insertion steps.
        tolerance: pointing-game band in image pixels.
        baseline: value of removed pixels, ``mean`` or ``blur``.
        top_nodes: attribution nodes summed in ``avsl_nodes``.
        batch_size: triplets per batch.
        sanity_triplets: the first triplets whose maps are compared with the maps of the model
            randomised in cascade (0: no sanity check).
        sanity_threshold: an explainer whose rank correlation after randomising the top two
            blocks is above this is flagged.
    """

    num_triplets: int = 200
    seed: int = 0
    num_curves: int = 48
    layer: str | None = None
    steps: int = 8
    tolerance: int = 3
    baseline: str = "mean"
    top_nodes: int = 8
    batch_size: int = 32
    sanity_triplets: int = 16
    sanity_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.sanity_triplets < 0:
            raise ValueError(f"sanity_triplets must be >= 0, got {self.sanity_triplets}")
        if min(self.num_triplets, self.steps, self.batch_size, self.top_nodes) < 1 or self.num_curves < 0:
            raise ValueError(
                "num_triplets, steps, batch_size and top_nodes must be positive and num_curves >= 0, got "
                f"{self.num_triplets}, {self.steps}, {self.batch_size}, {self.top_nodes}, {self.num_curves}"
            )
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")


def check_synthetic_folder(name: str, dataset: Any) -> str:
    """The folder of the query set's dataset ``name``; ValueError unless it is a complete synthetic
    set (ground-truth regions come from re-rendering it)."""
    folder = getattr(dataset, "dataset_dir", "")
    if not (isinstance(folder, str) and folder and is_complete(folder)
            and os.path.isfile(os.path.join(folder, "metadata.json"))):
        raise ValueError(
            f"eval_explanations needs the synthetic set as the first target dataset (ground-truth "
            f"regions come from re-rendering it); {name!r} is not. Set DATA.TARGETS [synthetic]."
        )
    return folder


# -- maps -------------------------------------------------------------------------------------------


@dataclass
class BatchMaps:
    """Raw maps of one batch: per explainer, the anchor and negative maps (negative pair) and the
    positive's map (positive pair). ``None`` marks the floors, drawn at the metric's resolution."""

    anchor: dict[str, torch.Tensor | None] = field(default_factory=dict)
    negative: dict[str, torch.Tensor | None] = field(default_factory=dict)
    positive: dict[str, torch.Tensor | None] = field(default_factory=dict)

    def put(self, name: str, anchor: Any, negative: Any, positive: Any) -> None:
        self.anchor[name], self.negative[name], self.positive[name] = anchor, negative, positive


def layer_explainers(layer: str | None) -> tuple[str, ...]:
    """Names of the similarity-attention explainers at ``TEST.EXPLAIN_LAYER`` (none when empty)."""
    return (f"sam_siamese@{layer}", f"sam_triplet@{layer}") if layer else ()


def explain_batch(model: nn.Module, xa: torch.Tensor, xp: torch.Tensor, xn: torch.Tensor,
                  top_nodes: int, layer: str | None = None) -> BatchMaps:
    """Every explainer's raw maps for a batch of triplets (one trunk pass per image, plus full-model
    passes for the explainers at ``layer``).

    Uses the model interface only (:class:`reid.models.base.ReidModel`): the head map
    (``forward_features``) and the explained embedding (``embed_features``) for similarity
    attention, dot-product Grad-CAM and the activation maps; ``identity_logits`` for classifier
    Grad-CAM where ``explainability.classifier``; ``attribute`` for the node maps where
    ``explainability.attribution``.
    """
    count = xa.shape[0]
    with torch.no_grad():
        feats = model.forward_features(torch.cat([xa, xp, xn]))
    fa, fp, fn = feats.split(count)
    head = model.embed_features
    out = BatchMaps()
    with torch.no_grad():
        ma, mn = explain_pair_features(head, fa, fn, same=False)
        _, mp = explain_pair_features(head, fa, fp, same=True)
        out.put("sam_siamese", ma, mn, mp)
        ma, mp, mn = explain_triplet_features(head, fa, fp, fn)
        out.put("sam_triplet", ma, mn, mp)
        ma, mn = dot_product_maps_features(head, fa, fn)
        _, mp = dot_product_maps_features(head, fa, fp)
        out.put("dot_gradcam", ma, mn, mp)
    if model.explainability.attribution:
        with torch.no_grad():
            negative_pair = model.attribute(xa, xn)
            positive_pair = model.attribute(xa, xp)
        ma, mn = avsl_node_maps(negative_pair, same=False, top_k=top_nodes)
        _, mp = avsl_node_maps(positive_pair, same=True, top_k=top_nodes)
        out.put("avsl_nodes", ma, mn, mp)
    stripes = model.explainability.decomposable_stripes
    if stripes:
        apart = decompose_pair(fa, fn, stripes, "euclidean")
        together = decompose_pair(fa, fp, stripes, "cosine")
        out.put("decomposition", apart.query_cells, apart.gallery_cells, together.gallery_cells)
    if model.explainability.classifier:
        maps, _ = classifier_grad_cam_features(model.identity_logits, feats)
        ma, mp, mn = maps.split(count)
        out.put("id_gradcam", ma, mn, mp)
    if layer:
        siamese, triplet = layer_explainers(layer)
        with torch.no_grad():
            ma, mn = explain_pair(model, layer, xa, xn, same=False)
            _, mp = explain_pair(model, layer, xa, xp, same=True)
            out.put(siamese, ma, mn, mp)
            ma, mp, mn = explain_triplet(model, layer, xa, xp, xn)
            out.put(triplet, ma, mn, mp)
    ma, mp, mn = activation_maps(feats).split(count)
    out.put("actmap", ma, mn, mp)
    out.put("centre", None, None, None)
    out.put("random", None, None, None)
    return out


def floor_maps(name: str, batch: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """The floors at the metric's resolution: uniform noise or the centre prior."""
    if name == "random":
        return random_maps(batch, *size, generator=generator)
    return centre_prior(*size).expand(batch, *size).clone()


def at_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw maps resized bilinearly to ``size``, clamped non-negative, on the CPU."""
    return resize_maps(maps.float().cpu(), size).clamp(min=0)


def maps_for_metric(maps: torch.Tensor | None, name: str, batch: int, size: tuple[int, int],
                    generator: torch.Generator) -> torch.Tensor:
    """An explainer's maps at the metric's resolution (the floors are drawn there)."""
    return floor_maps(name, batch, size, generator) if maps is None else at_size(maps, size)


# -- accumulating ----------------------------------------------------------------------------------


@dataclass
class Scores:
    """Per-image values of each explainer, pooled over the batches."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    by_attribute: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def add(self, name: str, key: str, values: Iterable[float]) -> None:
        self.values[name][key].extend(float(v) for v in values)


def score_localisation(maps: BatchMaps, names: Sequence[str], triplets: Sequence[ControlledTriplet],
                       tolerance: int, generator: torch.Generator, scores: Scores) -> None:
    """Pointing game and energy inside of the anchor's and negative's maps against the region."""
    regions = torch.from_numpy(np.stack([t.region for t in triplets]))
    size = tuple(regions.shape[-2:])
    for name in names:
        for role, raw in (("anchor", maps.anchor[name]), ("negative", maps.negative[name])):
            resized = maps_for_metric(raw, name, len(triplets), size, generator)
            hits = pointing_game(resized, regions, tolerance)
            energy = energy_inside(resized, regions)
            empty = resized.flatten(1).amax(dim=1) == resized.flatten(1).amin(dim=1)
            scores.add(name, "pointing_game", hits.double())
            scores.add(name, f"pointing_game_{role}", hits.double())
            scores.add(name, "energy_inside", energy)
            scores.add(name, "constant_maps", empty.double())
            for t, hit in zip(triplets, hits.tolist()):
                scores.by_attribute[name][t.attribute].append(float(hit))


def score_curves(model: nn.Module, maps: BatchMaps, names: Sequence[str], xa: torch.Tensor,
                 xp: torch.Tensor, steps: int, baseline_kind: str, generator: torch.Generator,
                 scores: Scores) -> None:
    """Deletion and insertion AUCs of the positive pair, the positive's pixels ordered by its map.

    The tracked quantity is the model's :meth:`~reid.models.base.ReidModel.pair_similarity` of
    the eval features (cosine of the embeddings; ``-d_hat`` for AVSL).
    """

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(images)

    def similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.pair_similarity(first, second)

    anchor = encode(xa)
    baseline = baseline_images(xp, baseline_kind)
    full = similarity(anchor, encode(xp))
    empty = similarity(anchor, encode(baseline))
    scores.add("_pairs", "full_similarity", full.cpu())
    scores.add("_pairs", "baseline_similarity", empty.cpu())

    def similarity_to_anchor(images: torch.Tensor) -> torch.Tensor:
        return similarity(anchor, encode(images))

    size = tuple(xp.shape[-2:])
    for name in names:
        raw = maps.positive[name]
        ordered = maps_for_metric(raw, name, xp.shape[0], size, generator)
        ordered = ordered.to(xp.device)
        known = dict(full_score=full, baseline_score=empty)
        deletion = deletion_curve(similarity_to_anchor, xp, ordered, baseline, steps, **known)
        insertion = insertion_curve(similarity_to_anchor, xp, ordered, baseline, steps, **known)
        scores.add(name, "deletion_auc", curve_auc(deletion))
        scores.add(name, "insertion_auc", curve_auc(insertion))


def summarize_scores(scores: Scores, names: Sequence[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Means per explainer (``None`` where nothing was measured), and for each of the four columns
    its 95% percentile bootstrap interval over the scored images (``<column>_interval``, seeded by
    ``seed``; None where nothing was measured)."""
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        values = scores.values[name]
        row = {key: mean_of(values.get(key, [])) for key in (*COLUMNS, "pointing_game_anchor", "pointing_game_negative")}
        for key in COLUMNS:
            kept = [v for v in values.get(key, []) if not np.isnan(v)]
            row[f"{key}_interval"] = list(bootstrap_interval(kept, seed=seed)) if kept else None
        row["energy_undefined"] = int(sum(np.isnan(v) for v in values.get("energy_inside", [])))
        row["constant_maps"] = int(sum(values.get("constant_maps", [])))
        row["num_localised"] = len(values.get("pointing_game", []))
        row["num_curves"] = len(values.get("deletion_auc", []))
        table[name] = row
    return table


def format_table(table: dict[str, dict[str, Any]], model: str | None = None) -> str:
    """A plain-text table: one row per explainer, the four columns (a model column if named)."""
    return format_tables({model: table})


def format_tables(tables: dict[str | None, dict[str, dict[str, Any]]]) -> str:
    """One plain-text table over several models' tables (model column unless the only key is None);
    each mean is followed by its bootstrap interval where the row has one."""
    with_model = list(tables) != [None]
    sanity = any("sanity_top" in row for table in tables.values() for row in table.values())
    header = [*(["model"] if with_model else []), "explainer", "pointing game", "energy inside",
              "deletion AUC (low)", "insertion AUC (high)",
              *(["sanity: rank corr. after top randomised (low)"] if sanity else [])]
    def sanity_cell(row: dict[str, Any]) -> str:
        value = row.get("sanity_top")
        return "n/a" if value is None else f"{value:.3f}" + (" FLAGGED" if row.get("sanity_flagged") else "")

    def cell(row: dict[str, Any], key: str) -> str:
        if row[key] is None:
            return "n/a"
        interval = row.get(f"{key}_interval")
        return f"{row[key]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    rows = [
        [*([str(model)] if with_model else []), name, *(cell(row, key) for key in COLUMNS),
         *([sanity_cell(row)] if sanity else [])]
        for model, table in tables.items() for name, row in table.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_inputs(transform: Callable[[Image.Image], torch.Tensor], triplets: Sequence[ControlledTriplet],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network inputs of the anchors, positives and negatives (the test transform)."""

    def read(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))

    xa = torch.stack([read(t.anchor_path) for t in triplets])
    xp = torch.stack([read(t.positive_path) for t in triplets])
    xn = torch.stack([transform(Image.fromarray(t.negative)) for t in triplets])
    return xa.to(device), xp.to(device), xn.to(device)


def sanity_check(model: nn.Module, names: Sequence[str], xa: torch.Tensor, xp: torch.Tensor, xn: torch.Tensor,
                 top_nodes: int, layer: str | None, seed: int) -> dict[str, Any]:
    """Cascading randomisation (:mod:`reid.explain.sanity`): each explainer's anchor and negative
    maps on the trained model against its maps on the model with its top 1, 2, ... blocks
    re-initialised; the mean rank correlation per depth. The ``centre`` floor does not depend on
    the model (correlation 1 by construction); the ``random`` floor is two independent draws."""
    blocks = [name for name, _ in cascade_blocks(model)]
    size = tuple(xa.shape[-2:])
    generator = torch.Generator().manual_seed(seed)

    def maps_of(source: nn.Module) -> dict[str, torch.Tensor]:
        batch = explain_batch(source, xa, xp, xn, top_nodes, layer)
        return {name: torch.cat([maps_for_metric(batch.anchor[name], name, len(xa), size, generator),
                                 maps_for_metric(batch.negative[name], name, len(xa), size, generator)])
                for name in names}

    trained = maps_of(model)
    curves: dict[str, list[float | None]] = {name: [] for name in names}
    for depth in range(1, len(blocks) + 1):
        randomised = randomized_copy(model, depth, seed=seed + depth).eval()
        maps = maps_of(randomised)
        for name in names:
            curves[name].append(mean_of(rank_correlation(trained[name], maps[name]).tolist()))
    return {"blocks": blocks, "correlation": curves}


def pointing_game_by_part(values: dict[str, list[float]], triplets: Sequence[ControlledTriplet]) -> dict[str, list[float]]:
    """Changed part (``head``, ``torso``, ``legs``, ``shoes``, ``bag``: the parts of
    :data:`~reid.data.controlled.ATTRIBUTE_PARTS`) -> each of its triplets' pointing game, the mean
    of the anchor's and the negative's hit (``values`` holds them per triplet, in order, under
    ``pointing_game_anchor`` and ``pointing_game_negative``)."""
    anchor, negative = values["pointing_game_anchor"], values["pointing_game_negative"]
    if not len(anchor) == len(negative) == len(triplets):
        raise ValueError(f"{len(anchor)} anchor and {len(negative)} negative hits for {len(triplets)} triplets")
    parts: dict[str, list[float]] = defaultdict(list)
    for t, a, n in zip(triplets, anchor, negative):
        parts["+".join(ATTRIBUTE_PARTS[t.attribute])].append((float(a) + float(n)) / 2)
    return dict(sorted(parts.items()))


def evaluate_explanations(
    model: nn.Module,
    device: torch.device,
    transform: Callable[[Image.Image], torch.Tensor],
    folder: str,
    options: QualityOptions,
    bar: Callable[..., Any] = lambda items, desc="", total=None: items,
) -> dict[str, Any]:
    """Scores every applicable explainer of ``model`` (eval mode) on controlled triplets of the
    synthetic set in ``folder`` (module docstring).

    Args:
        model: a :class:`~reid.models.base.ReidModel` in eval mode.
        device: where it runs.
        transform: the test transform (PIL image -> network input).
        folder: the synthetic set's folder.
        options: the settings.
        bar: wraps an iterable in a progress bar (``bar(items, desc, total=None)``).

    Returns:
        ``explainers``, ``table`` (means with bootstrap intervals, and ``sanity_top`` /
        ``sanity_flagged`` when the sanity check ran), ``sanity`` (the cascade: ``blocks`` and
        each explainer's mean rank correlation per depth; None when off), ``values`` (every scored
        image's value per explainer and column, NaN where energy inside is undefined),
        ``floors``, ``positive_pairs``, ``pointing_game_by_attribute``, ``pointing_game_by_part``
        (:func:`pointing_game_by_part`), ``triplets`` (records),
        ``num_curves`` and ``image_size``.

    Raises:
        ValueError: no controlled triplet could be built.
    """
    layer = None if model.explainability.attribution else options.layer
    names = explainer_names(model.explainability, layer)
    triplets = build_controlled_triplets(folder, options.num_triplets, seed=options.seed, progress=bar)
    if not triplets:
        raise ValueError(f"no controlled triplet could be built from {folder}")
    num_curves = len(triplets) if options.num_curves == 0 else min(options.num_curves, len(triplets))
    logger.info(
        "evaluating %d explainers on %d controlled triplets (%d with deletion/insertion curves)",
        len(names), len(triplets), num_curves,
    )
    generator = torch.Generator().manual_seed(options.seed)
    scores = Scores()
    batches = list(chunks(triplets, options.batch_size))
    for index, chunk in enumerate(bar(batches, "explanation quality")):
        start = index * options.batch_size
        xa, xp, xn = load_inputs(transform, chunk, device)
        maps = explain_batch(model, xa, xp, xn, options.top_nodes, layer)
        score_localisation(maps, names, chunk, options.tolerance, generator, scores)
        curved = max(0, min(len(chunk), num_curves - start))
        if curved:
            head = BatchMaps(
                {}, {}, {n: (None if m is None else m[:curved]) for n, m in maps.positive.items()}
            )
            score_curves(model, head, names, xa[:curved], xp[:curved], options.steps, options.baseline,
                         generator, scores)

    table = summarize_scores(scores, names, options.seed)
    sanity = None
    if options.sanity_triplets:
        chunk = triplets[: options.sanity_triplets]
        xa, xp, xn = load_inputs(transform, chunk, device)
        sanity = sanity_check(model, names, xa, xp, xn, options.top_nodes, layer, options.seed)
        top = min(2, len(sanity["blocks"])) - 1
        for name in names:
            value = sanity["correlation"][name][top]
            table[name]["sanity_top"] = value
            table[name]["sanity_flagged"] = value is not None and value > options.sanity_threshold
        sanity.update(num_triplets=len(chunk), threshold=options.sanity_threshold,
                      top_blocks=sanity["blocks"][: top + 1])
    regions = torch.from_numpy(np.stack([t.region for t in triplets]))
    return {
        "explainers": list(names),
        "table": table,
        "sanity": sanity,
        "values": {name: {key: list(scores.values[name].get(key, [])) for key in COLUMNS} for name in names},
        "floors": {
            "region_area": float(regions.double().mean()),
            "dilated_region_area": float(dilate_regions(regions, options.tolerance).double().mean()),
        },
        "positive_pairs": {key: mean_of(v) for key, v in scores.values["_pairs"].items()},
        "pointing_game_by_attribute": {
            name: {attr: float(np.mean(v)) for attr, v in sorted(scores.by_attribute[name].items())}
            for name in names
        },
        "pointing_game_by_part": {
            name: pointing_game_by_part(scores.values[name], triplets) for name in names
        },
        "triplets": [t.to_record() for t in triplets],
        "num_curves": num_curves,
        "image_size": list(triplets[0].region.shape),
    }
