#!/usr/bin/env python
"""Measure explanation quality on controlled synthetic triplets (pointing game, deletion, insertion).

Usage::

    python tools/eval_explanations.py --config FILE --weights CKPT [--num-triplets N] [--seed S]
        [--num-curves M] [--steps K] [--tolerance T] [--baseline mean|blur] [--batch-size B]
        [--no-progress] [KEY VALUE ...]

The first target dataset of the config (``DATA.TARGETS``, else ``DATA.SOURCES``) must be the
synthetic set. What it does:

1. **Triplets** (:func:`reid.data.controlled.build_controlled_triplets`): ``N`` anchors of test
   identities in a seeded random order, a positive of the same identity, and a negative that is
   the anchor re-rendered with exactly one attribute changed. The changed attribute's part region
   is the ground truth for "why is the negative dissimilar".
2. **Explainers**, on the same pairs (PCB models; ``MODEL.NAME avsl`` in brackets):
   ``sam_siamese`` (similarity attention, Siamese weights: ``|fa - fn|`` for the negative pair,
   ``1 - |fa - fp|`` for the positive pair), ``sam_triplet`` (triplet weights, one map per image
   of ``(a, p, n)``), ``id_gradcam`` (Grad-CAM of the PCB identity classifier for its predicted
   identity; not for AVSL), ``dot_gradcam`` (Grad-CAM of ``f1 . f2``), ``actmap`` (torchreid's
   ``visualize_actmap``: sum of squared ``layer4`` channels), [``avsl_nodes``: contribution-
   weighted CAMs of the top highest-level nodes], and the floors ``centre`` (Gaussian centre
   prior) and ``random`` (uniform noise). For AVSL the similarity-attention and dot-product maps
   explain the top-level embedding ``e^L`` computed from ``layer4``. All maps come from one trunk
   pass per image (head-only gradients), at ``layer4``'s resolution. When the config sets
   ``TEST.EXPLAIN_LAYER`` (PCB; the layer ``tools/explain.py`` shows), ``sam_siamese@<layer>`` and
   ``sam_triplet@<layer>`` add the same two explanations at that layer, on the full model.
3. **Pointing game and energy inside** (:mod:`reid.metrics.explanation`) on the negative pair:
   the anchor's and the negative's maps, bilinearly resized to the stored image size, against the
   region (pointing game with a ``--tolerance`` pixel band); pooled over both images.
4. **Deletion and insertion** on the positive pair of the first ``M`` triplets: the positive's
   map, resized to the network input, orders its pixels; ``--steps`` steps remove (deletion) or
   reveal (insertion) them, replaced by the ``--baseline`` (``mean``: zero input, i.e. the
   normalisation mean colour; ``blur``: a Gaussian blur, sigma 5 px). The quantity is the pair's
   similarity: cosine of the normalised embeddings (PCB), ``-d_hat`` (AVSL). Area over ``[0, 1]``:
   lower deletion AUC and higher insertion AUC are better.

Writes ``OUTPUT_DIR/explanation_quality.json`` (settings, the table, per-attribute pointing game,
the triplets) and prints the table: explainer x (pointing game, energy inside, deletion AUC,
insertion AUC), with the floors' expected values (the region's area fractions) below it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import config_or_exit, engine_with_weights, layer_or_exit, parse_with_overrides  # noqa: E402
from reid.config import config_to_dict  # noqa: E402
from reid.data.controlled import ControlledTriplet, build_controlled_triplets  # noqa: E402
from reid.data.synthetic import is_complete  # noqa: E402
from reid.io import write_json  # noqa: E402
from reid.explain import (  # noqa: E402
    explain_pair,
    explain_pair_features,
    explain_triplet,
    explain_triplet_features,
    resize_maps,
)
from reid.explain.baselines import (  # noqa: E402
    activation_maps,
    avsl_node_maps,
    centre_prior,
    classifier_grad_cam_features,
    dot_product_maps_features,
    pcb_identity_logits,
    random_maps,
)
from reid.metrics.explanation import (  # noqa: E402
    baseline_images,
    curve_auc,
    deletion_curve,
    dilate_regions,
    energy_inside,
    insertion_curve,
    pointing_game,
)

logger = logging.getLogger("eval_explanations")

RESULT_FILE = "explanation_quality.json"
PCB_EXPLAINERS = ("sam_siamese", "sam_triplet", "id_gradcam", "dot_gradcam", "actmap", "centre", "random")
AVSL_EXPLAINERS = ("avsl_nodes", "sam_siamese", "sam_triplet", "dot_gradcam", "actmap", "centre", "random")
COLUMNS = ("pointing_game", "energy_inside", "deletion_auc", "insertion_auc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--weights", required=True, help="checkpoint (ours) or a model state dict")
    parser.add_argument("--num-triplets", type=int, default=200, help="controlled triplets (N)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the triplets and the random floor")
    parser.add_argument(
        "--num-curves", type=int, default=48,
        help="triplets whose positive pair gets deletion/insertion curves (M, the first M; 0: all)",
    )
    parser.add_argument("--steps", type=int, default=8, help="deletion/insertion steps (K)")
    parser.add_argument("--tolerance", type=int, default=3, help="pointing-game band in image pixels")
    parser.add_argument("--baseline", choices=("mean", "blur"), default="mean", help="value of removed pixels")
    parser.add_argument("--top-nodes", type=int, default=8, help="AVSL nodes summed in avsl_nodes")
    parser.add_argument("--batch-size", type=int, default=32, help="triplets per batch")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. OUTPUT_DIR out")
    args = parse_with_overrides(parser, argv)
    if args.num_triplets < 1 or args.steps < 1 or args.batch_size < 1 or args.num_curves < 0:
        parser.error("--num-triplets, --steps and --batch-size must be positive, --num-curves >= 0")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    return args


# -- the model under test -------------------------------------------------------------------------


class ModelAdapter:
    """What the evaluation needs from a model: ``layer4`` maps, a head, the pair similarity.

    PCB: ``forward_features`` / ``embed_features``, cosine similarity of the eval embeddings.
    AVSL: ``layer4`` is the top level's map; the head is the top-level embedding ``e^L``; the
    similarity is ``-d_hat``.
    """

    def __init__(self, model: torch.nn.Module, is_avsl: bool) -> None:
        self.model = model
        self.is_avsl = is_avsl

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, h, w)`` ``layer4`` maps (no gradient)."""
        with torch.no_grad():
            maps = self.model.forward_features(images)
        return maps[-1] if self.is_avsl else maps

    def head(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """``layer4`` maps -> embeddings explained by similarity attention and dot-product Grad-CAM."""
        if self.is_avsl:
            from reid.models.avsl import pooled_embedding

            return pooled_embedding(feature_maps, self.model.projections[-1])
        return self.model.embed_features(feature_maps)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Eval outputs used by :meth:`similarity` (no gradient)."""
        with torch.no_grad():
            out = self.model(images)
        return out if self.is_avsl else F.normalize(out, dim=1)

    def similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``(B,)`` similarity of paired rows of :meth:`encode` outputs (cosine, or ``-d_hat``)."""
        if not self.is_avsl:
            return (first * second).sum(dim=1)
        a, b = self.model.split_features(first), self.model.split_features(second)
        with torch.no_grad():
            return -self.model.rectified_distance(a.embeddings, a.cam_stds, b.embeddings, b.cam_stds)


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


def explain_batch(adapter: ModelAdapter, xa: torch.Tensor, xp: torch.Tensor, xn: torch.Tensor,
                  top_nodes: int, layer: str | None = None) -> BatchMaps:
    """Every explainer's raw maps for a batch of triplets (one trunk pass per image, plus full-model
    passes for the explainers at ``layer``)."""
    count = xa.shape[0]
    feats = adapter.feature_maps(torch.cat([xa, xp, xn]))
    fa, fp, fn = feats.split(count)
    out = BatchMaps()
    with torch.no_grad():
        ma, mn = explain_pair_features(adapter.head, fa, fn, same=False)
        _, mp = explain_pair_features(adapter.head, fa, fp, same=True)
        out.put("sam_siamese", ma, mn, mp)
        ma, mp, mn = explain_triplet_features(adapter.head, fa, fp, fn)
        out.put("sam_triplet", ma, mn, mp)
        ma, mn = dot_product_maps_features(adapter.head, fa, fn)
        _, mp = dot_product_maps_features(adapter.head, fa, fp)
        out.put("dot_gradcam", ma, mn, mp)
    if adapter.is_avsl:
        with torch.no_grad():
            negative_pair = adapter.model.attribute(xa, xn)
            positive_pair = adapter.model.attribute(xa, xp)
        ma, mn = avsl_node_maps(negative_pair, same=False, top_k=top_nodes)
        _, mp = avsl_node_maps(positive_pair, same=True, top_k=top_nodes)
        out.put("avsl_nodes", ma, mn, mp)
    else:
        maps, _ = classifier_grad_cam_features(lambda a: pcb_identity_logits(adapter.model, a), feats)
        ma, mp, mn = maps.split(count)
        out.put("id_gradcam", ma, mn, mp)
    if layer:
        siamese, triplet = layer_explainers(layer)
        with torch.no_grad():
            ma, mn = explain_pair(adapter.model, layer, xa, xn, same=False)
            _, mp = explain_pair(adapter.model, layer, xa, xp, same=True)
            out.put(siamese, ma, mn, mp)
            ma, mp, mn = explain_triplet(adapter.model, layer, xa, xp, xn)
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


def _nanmean(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else None


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


def score_curves(adapter: ModelAdapter, maps: BatchMaps, names: Sequence[str], xa: torch.Tensor,
                 xp: torch.Tensor, steps: int, baseline_kind: str, generator: torch.Generator,
                 scores: Scores) -> None:
    """Deletion and insertion AUCs of the positive pair, the positive's pixels ordered by its map."""
    anchor = adapter.encode(xa)
    baseline = baseline_images(xp, baseline_kind)
    full = adapter.similarity(anchor, adapter.encode(xp))
    empty = adapter.similarity(anchor, adapter.encode(baseline))
    scores.add("_pairs", "full_similarity", full.cpu())
    scores.add("_pairs", "baseline_similarity", empty.cpu())

    def similarity_to_anchor(images: torch.Tensor) -> torch.Tensor:
        return adapter.similarity(anchor, adapter.encode(images))

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


def summarize(scores: Scores, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Means per explainer (``None`` where nothing was measured)."""
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        values = scores.values[name]
        row = {key: _nanmean(values.get(key, [])) for key in (*COLUMNS, "pointing_game_anchor", "pointing_game_negative")}
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
    """One plain-text table over several models' tables (model column unless the only key is None)."""
    with_model = list(tables) != [None]
    header = [*(["model"] if with_model else []), "explainer", "pointing game", "energy inside",
              "deletion AUC (low)", "insertion AUC (high)"]
    rows = [
        [*([str(model)] if with_model else []), name,
         *("n/a" if row[key] is None else f"{row[key]:.3f}" for key in COLUMNS)]
        for model, table in tables.items() for name, row in table.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the tool ---------------------------------------------------------------------------------------


def load_engine(args: argparse.Namespace) -> tuple[Any, Any]:
    """Config, engine and weights, as ``tools/test.py`` loads them."""
    cfg = config_or_exit(args)
    engine = engine_with_weights(cfg, args.weights, "eval_explanations", progress=not args.no_progress)
    return cfg, engine


def synthetic_dir(engine: Any) -> tuple[str, str]:
    """The first target dataset's name and folder; it must be the synthetic set."""
    name = next(iter(engine.test_loader))
    dataset = engine.test_loader[name]["query"].dataset
    folder = getattr(dataset, "dataset_dir", "")
    if not (isinstance(folder, str) and folder and is_complete(folder) and os.path.isfile(os.path.join(folder, "metadata.json"))):
        raise SystemExit(
            f"eval_explanations needs the synthetic set as the first target dataset (ground-truth "
            f"regions come from re-rendering it); {name!r} is not. Set DATA.TARGETS [synthetic]."
        )
    return name, folder


def _chunks(items: Sequence[Any], size: int) -> Iterable[tuple[int, Sequence[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg, engine = load_engine(args)
    model = engine.model
    model.eval()
    is_avsl = cfg.MODEL.NAME == "avsl"
    adapter = ModelAdapter(model, is_avsl)
    layer = None if is_avsl else (cfg.TEST.EXPLAIN_LAYER or None)
    if layer:
        layer_or_exit(model, layer, "TEST.EXPLAIN_LAYER")
    names = AVSL_EXPLAINERS if is_avsl else (*PCB_EXPLAINERS, *layer_explainers(layer))
    dataset_name, folder = synthetic_dir(engine)

    def bar(items: Any, desc: str, total: int | None = None) -> Any:
        return tqdm(items, desc=desc, total=total, disable=args.no_progress, leave=False)

    triplets = build_controlled_triplets(folder, args.num_triplets, seed=args.seed, progress=bar)
    if not triplets:
        raise SystemExit(f"no controlled triplet could be built from {folder}")
    num_curves = len(triplets) if args.num_curves == 0 else min(args.num_curves, len(triplets))
    logger.info(
        "evaluating %d explainers on %d controlled triplets of %s (%d with deletion/insertion curves)",
        len(names), len(triplets), dataset_name, num_curves,
    )
    generator = torch.Generator().manual_seed(args.seed)
    transform = engine.datamanager.transform_te
    scores = Scores()
    batches = list(_chunks(triplets, args.batch_size))
    for start, chunk in bar(batches, "explanation quality"):
        xa, xp, xn = load_inputs(transform, chunk, engine.device)
        maps = explain_batch(adapter, xa, xp, xn, args.top_nodes, layer)
        score_localisation(maps, names, chunk, args.tolerance, generator, scores)
        curved = max(0, min(len(chunk), num_curves - start))
        if curved:
            head = BatchMaps(
                {}, {}, {n: (None if m is None else m[:curved]) for n, m in maps.positive.items()}
            )
            score_curves(adapter, head, names, xa[:curved], xp[:curved], args.steps, args.baseline, generator, scores)

    table = summarize(scores, names)
    regions = torch.from_numpy(np.stack([t.region for t in triplets]))
    floors = {
        "region_area": float(regions.double().mean()),
        "dilated_region_area": float(dilate_regions(regions, args.tolerance).double().mean()),
    }
    pairs = {key: _nanmean(v) for key, v in scores.values["_pairs"].items()}
    by_attribute = {
        name: {attr: float(np.mean(v)) for attr, v in sorted(scores.by_attribute[name].items())} for name in names
    }
    result = {
        "dataset": dataset_name, "weights": os.path.abspath(args.weights), "model": cfg.MODEL.NAME,
        "sam_enabled": bool(cfg.SAM.ENABLED),
        "settings": {
            "num_triplets": len(triplets), "seed": args.seed, "num_curves": num_curves, "steps": args.steps,
            "tolerance": args.tolerance, "baseline": args.baseline, "top_nodes": args.top_nodes,
            "input_size": [cfg.DATA.HEIGHT, cfg.DATA.WIDTH], "image_size": list(triplets[0].region.shape),
        },
        "explainers": list(names), "table": table, "floors": floors, "positive_pairs": pairs,
        "pointing_game_by_attribute": by_attribute,
        "triplets": [t.to_record() for t in triplets],
        "config": config_to_dict(cfg),
    }
    path = os.path.join(cfg.OUTPUT_DIR, RESULT_FILE)
    write_json(path, result)
    text = format_table(table)
    print(text)
    print(
        f"floors: region area {floors['region_area']:.3f} (expected energy inside of a random map), "
        f"dilated by {args.tolerance} px {floors['dilated_region_area']:.3f} (expected pointing game of a "
        f"random map); positive pairs: similarity {pairs.get('full_similarity', float('nan')):.3f} intact, "
        f"{pairs.get('baseline_similarity', float('nan')):.3f} on the {args.baseline} baseline"
    )
    logger.info("explanation quality written to %s", path)
    return result


if __name__ == "__main__":
    main()
