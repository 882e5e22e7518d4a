"""Explain a model's top matches and dump panels, an HTML report and ``explanations.json``.

Usage::

    reid explain --config FILE --weights CKPT [--num-queries N | --queries I,J,...] [--topk K] [--triplets]
        [--same model|truth] [--layer NAME] [--keep-same-camera] [--batch-size B] [--no-progress]
        [--top-nodes T] [--feeders F] [--max-matrix-mb M] [--features DIR] [KEY VALUE ...]

On the first target dataset of the config (``DATA.TARGETS``, else ``DATA.SOURCES``): ``N``
queries evenly spread over the query set (or the ones ``--queries`` names), each with its
top-``K`` gallery matches by the model's own distance (same identity and camera removed as in the evaluation; ``--keep-same-camera`` keeps
them; ``TEST.RERANK`` is ignored), explained with similarity attention (a Siamese map pair per
match, ``--same`` picking the weights: ``model``, the default, explains each shown match as the
model's match, ``truth`` by ground truth; ``--triplets`` adds "why is the top match closer than the
best match of the other kind") or, for a model with exact attribution (AVSL), with attribution
panels (``--top-nodes`` per level, ``--feeders`` of the rectified node; ``--triplets`` and
``--layer`` are refused). The layer is ``--layer``, else ``TEST.EXPLAIN_LAYER``; when both are
empty the model's head map is explained through the head only (one trunk pass per image).

Everything goes under ``OUTPUT_DIR/explanations/``: ``index.html``, the explorer (one
self-contained interactive page: the run's CMC, mAP and distance histograms over all queries,
the explained queries worst AP first, a switch between explainers, hover correspondences,
per-stripe bars, a failure table); ``panels.html`` over the PNG panels for papers (``panels/``,
``triplets/``, ``attributions/``); and ``explanations.json`` (per pair the paths, identities,
distance, rank, correctness, the map energy inside the person mask where the dataset has masks;
per query its AP; a summary). The run's statistics need every query's distances to the gallery
(float32); above ``--max-matrix-mb`` (default ``TEST.MAX_MATRIX_MB``) they cover the explained
queries only. ``--features DIR`` reads the embeddings ``reid test --save-features DIR`` wrote
instead of embedding the query and gallery sets again: the trunk then runs only on the chosen
queries and the gallery images their explanations need. What each step does precisely: :mod:`reid.explain.dump`; ``docs/method.md``
sections 2, 4 and 5.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from reid.cli.common import (
    config_or_exit, engine_with_weights, layer_or_exit, new_parser, parse_with_overrides, releases_output_dirs,
)
from reid.explain.dump import EXPLANATIONS_DIR, SAME_MODES, ExplainOptions, write_explanations

logger = logging.getLogger("explain")


def query_indices(text: str) -> tuple[int, ...]:
    """``"3,17,42"`` -> ``(3, 17, 42)``; an argparse type (a bad list is a usage error)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated query indices, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative query indices, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("explain", __doc__, weights=True)
    parser.add_argument("--num-queries", type=int, default=10, help="queries explained, evenly spread (N)")
    parser.add_argument(
        "--queries", type=query_indices, default=(), metavar="I,J,...",
        help="explain these queries (indices into the query set, as query_index in explanations.json) "
        "instead of --num-queries spread ones",
    )
    parser.add_argument("--topk", type=int, default=5, help="matches explained per query (K)")
    parser.add_argument("--triplets", action="store_true", help="also explain 'why is A closer than B'")
    parser.add_argument(
        "--same", choices=SAME_MODES, default="model",
        help="Siamese weights: model (default) explains every shown match as a match (why the model put it "
        "there); truth uses ground-truth identity equality (a wrong match explained as a dissimilar pair)",
    )
    parser.add_argument(
        "--layer", default=None,
        help="explain this layer on the full model (default: TEST.EXPLAIN_LAYER; when that is empty, the "
        "model's head map through the head-only path)",
    )
    parser.add_argument(
        "--keep-same-camera", action="store_true",
        help="keep gallery images of the query's identity and camera (removed by the evaluation protocol)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="pairs per explanation batch (0: SAMPLER.BATCH_SIZE_TEST)"
    )
    parser.add_argument(
        "--top-nodes", type=int, default=3, help="attribution: nodes shown per level (and rectification candidates)"
    )
    parser.add_argument("--feeders", type=int, default=3, help="attribution: lower-level nodes shown for the rectified node")
    parser.add_argument(
        "--max-matrix-mb", type=float, default=None,
        help="largest all-queries x gallery distance matrix (MB) kept for the run's statistics (above: explained "
        "queries only; default: TEST.MAX_MATRIX_MB)",
    )
    parser.add_argument("--features", metavar="DIR", default=None,
                        help="rank from the features reid test --save-features wrote to DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. OUTPUT_DIR out")
    args = parse_with_overrides(parser, argv)
    if args.num_queries < 1 or args.topk < 1:
        parser.error("--num-queries and --topk must be positive")
    if args.top_nodes < 1 or args.feeders < 1:
        parser.error("--top-nodes and --feeders must be positive")
    if args.max_matrix_mb is not None and args.max_matrix_mb < 0:
        parser.error("--max-matrix-mb must be non-negative")
    if args.batch_size < 0:
        parser.error("--batch-size must be positive (or 0: SAMPLER.BATCH_SIZE_TEST)")
    return args


def saved_features(folder: str, target: str, loaders: dict[str, Any]) -> tuple[Any, Any]:
    """The saved query and gallery embeddings of ``target``, checked against the dataset's images."""
    from reid.engine.evaluation import features_file, load_features

    try:
        query, gallery = load_features(features_file(folder, target), target)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"reid explain --features: {exc}") from exc
    for split, saved in (("query", query), ("gallery", gallery)):
        paths = [item[0] for item in loaders[split].dataset.data]
        if list(saved.paths) != paths:
            raise SystemExit(
                f"reid explain --features: the saved {split} features are not of this dataset's {len(paths)} "
                f"{split} images in order (the file has {len(saved.paths)}): save them again with reid test "
                "--save-features and the same config"
            )
    return query.features, gallery.features


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    engine = engine_with_weights(cfg, args.weights, "explain", progress=not args.no_progress)
    if cfg.TEST.RERANK:
        logger.warning("TEST.RERANK is ignored: the explanations rank by the model's own distance")
    model = engine.model
    model.eval()
    attribution = model.explainability.attribution
    if attribution and (args.triplets or args.layer):
        raise SystemExit(
            f"--triplets and --layer explain with similarity attention, which does not apply to "
            f"{type(model).__name__} (MODEL.NAME {cfg.MODEL.NAME}); its explanations are attribution panels: "
            "drop these options"
        )
    layer = args.layer or (None if attribution else cfg.TEST.EXPLAIN_LAYER or None)
    if layer is not None:
        layer_or_exit(model, layer, "--layer / TEST.EXPLAIN_LAYER")
    options = ExplainOptions(
        num_queries=args.num_queries, query_indices=args.queries, topk=args.topk, triplets=args.triplets, same=args.same, layer=layer,
        keep_same_camera=args.keep_same_camera, batch_size=args.batch_size or cfg.SAMPLER.BATCH_SIZE_TEST,
        top_nodes=args.top_nodes, feeders=args.feeders, max_matrix_mb=cfg.TEST.MAX_MATRIX_MB if args.max_matrix_mb is None else args.max_matrix_mb,
        progress=not args.no_progress,
    )
    dataset_name = next(iter(engine.test_loader))
    if attribution:
        how = "exact attribution"
    elif layer is None:
        how = "the head-only path (one trunk pass per image)"
    else:
        how = f"the full model at {layer!r}"
    logger.info("explaining %s with %s", dataset_name, how)
    num_query = len(engine.test_loader[dataset_name]["query"].dataset)
    if args.queries and max(args.queries) >= num_query:
        raise SystemExit(
            f"--queries: {[i for i in args.queries if i >= num_query]} outside the query set of {dataset_name} "
            f"(indices 0 to {num_query - 1})"
        )
    saved = None if args.features is None else saved_features(args.features, dataset_name, engine.test_loader[dataset_name])
    summary = write_explanations(
        model, engine.device, engine.test_loader[dataset_name], engine.distance_matrix,
        os.path.join(cfg.OUTPUT_DIR, EXPLANATIONS_DIR), options, title=dataset_name, autocast=engine.autocast,
        saved=saved,
    )
    if attribution:
        logger.info(
            "mean share of d_hat per level: %s",
            ", ".join(f"{name} {_fmt(share)}" for name, share in summary["mean_level_share"].items()),
        )
    else:
        logger.info(
            "mean fraction of map mass inside the person mask: correct matches %s, wrong matches %s "
            "(a uniform map would give the person's area fraction, %s)",
            _fmt(summary["mean_mask_fraction_correct"]), _fmt(summary["mean_mask_fraction_wrong"]),
            _fmt(summary["mean_mask_area"]),
        )
    run = summary["run"]
    if run is not None:
        logger.info(
            "%s: rank-1 %.1f%%, mAP %.1f%%, mINP %.1f%%", run["queries"], 100 * run["rank1"], 100 * run["mAP"],
            100 * run["mINP"],
        )
    failures = summary.get("failures")
    if failures and failures["num_wrong_top1"]:
        logger.info(
            "%d wrong top-1 matches; the stripe most in the impostor's favour (top first): %s",
            failures["num_wrong_top1"], failures["most_favoured"],
        )
    logger.info(
        "explained %d pairs and %d triplets of %d queries: open %s (PNG panels: %s)",
        summary["num_pairs"], summary["num_triplets"], summary["num_queries"], summary["report"],
        summary["panels_page"],
    )
    return summary
