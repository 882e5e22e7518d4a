"""Measure explanation quality on controlled synthetic triplets (pointing game, deletion, insertion).

Usage::

    reid eval-explanations --config FILE --weights CKPT [--num-triplets N] [--seed S]
        [--num-curves M] [--steps K] [--tolerance T] [--baseline mean|blur] [--batch-size B]
        [--no-progress] [KEY VALUE ...]

The first target dataset of the config (``DATA.TARGETS``, else ``DATA.SOURCES``) must be the
synthetic set: each triplet is an anchor, a positive of its identity and the anchor re-rendered
with one attribute changed, whose part region is the ground truth. Every explainer that applies to
the model (similarity attention, classifier and dot-product Grad-CAM, activation maps, AVSL node
maps, the centre and random floors; with ``TEST.EXPLAIN_LAYER`` also similarity attention at that
layer) is scored by the pointing game and energy inside on the negative pair and by deletion and
insertion AUCs on the positive pair. What each step does precisely: :mod:`reid.explain.quality`.

Writes ``OUTPUT_DIR/explanation_quality.json`` (settings, the table, per-attribute pointing game,
the triplets) and prints the table: explainer x (pointing game, energy inside, deletion AUC,
insertion AUC), with the floors' expected values (the region's area fractions) below it.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from tqdm import tqdm

from reid.cli.common import (
    config_or_exit, engine_with_weights, layer_or_exit, new_parser, parse_with_overrides, releases_output_dirs,
)
from reid.config import config_to_dict
from reid.explain.quality import (
    BASELINES,
    RESULT_FILE,
    QualityOptions,
    check_synthetic_folder,
    evaluate_explanations,
    format_table,
)
from reid.io import write_json

logger = logging.getLogger("eval_explanations")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("eval-explanations", __doc__, weights=True)
    parser.add_argument("--num-triplets", type=int, default=200, help="controlled triplets (N)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the triplets and the random floor")
    parser.add_argument(
        "--num-curves", type=int, default=48,
        help="triplets whose positive pair gets deletion/insertion curves (M, the first M; 0: all)",
    )
    parser.add_argument("--steps", type=int, default=8, help="deletion/insertion steps (K)")
    parser.add_argument("--tolerance", type=int, default=3, help="pointing-game band in image pixels")
    parser.add_argument("--baseline", choices=BASELINES, default="mean", help="value of removed pixels")
    parser.add_argument("--top-nodes", type=int, default=8, help="attribution nodes summed in avsl_nodes")
    parser.add_argument("--batch-size", type=int, default=32, help="triplets per batch")
    parser.add_argument("--sanity-triplets", type=int, default=16,
                        help="triplets of the cascading-randomisation sanity check (0: off)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. OUTPUT_DIR out")
    args = parse_with_overrides(parser, argv)
    if args.num_triplets < 1 or args.steps < 1 or args.batch_size < 1 or args.num_curves < 0:
        parser.error("--num-triplets, --steps and --batch-size must be positive, --num-curves >= 0")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    if args.sanity_triplets < 0:
        parser.error("--sanity-triplets must be >= 0")
    if args.top_nodes < 1:
        parser.error("--top-nodes must be positive")
    return args


def synthetic_dir(engine: Any) -> tuple[str, str]:
    """The first target dataset's name and folder; exits unless it is the synthetic set."""
    name = next(iter(engine.test_loader))
    try:
        return name, check_synthetic_folder(name, engine.test_loader[name]["query"].dataset)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    engine = engine_with_weights(cfg, args.weights, "eval_explanations", progress=not args.no_progress)
    model = engine.model
    model.eval()
    layer = None if model.explainability.attribution else (cfg.TEST.EXPLAIN_LAYER or None)
    if layer:
        layer_or_exit(model, layer, "TEST.EXPLAIN_LAYER")
    dataset_name, folder = synthetic_dir(engine)
    options = QualityOptions(
        num_triplets=args.num_triplets, seed=args.seed, num_curves=args.num_curves, steps=args.steps,
        tolerance=args.tolerance, baseline=args.baseline, top_nodes=args.top_nodes,
        batch_size=args.batch_size, layer=layer, sanity_triplets=args.sanity_triplets,
    )

    def bar(items: Any, desc: str = "", total: int | None = None) -> Any:
        return tqdm(items, desc=desc, total=total, disable=args.no_progress, leave=False)

    logger.info("explanation quality of %s on %s", cfg.MODEL.NAME, dataset_name)
    try:
        measured = evaluate_explanations(model, engine.device, engine.datamanager.transform_te, folder, options, bar)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    result = {
        "dataset": dataset_name, "weights": os.path.abspath(args.weights), "model": cfg.MODEL.NAME,
        "sam_enabled": bool(cfg.SAM.ENABLED),
        "settings": {
            "num_triplets": len(measured["triplets"]), "seed": args.seed, "num_curves": measured["num_curves"],
            "steps": args.steps, "tolerance": args.tolerance, "baseline": args.baseline,
            "top_nodes": args.top_nodes, "input_size": [cfg.DATA.HEIGHT, cfg.DATA.WIDTH],
            "image_size": measured["image_size"],
        },
        **{key: measured[key] for key in ("explainers", "table", "sanity", "values", "floors", "positive_pairs",
                                          "pointing_game_by_attribute", "pointing_game_by_part", "triplets")},
        "config": config_to_dict(cfg),
    }
    path = os.path.join(cfg.OUTPUT_DIR, RESULT_FILE)
    write_json(path, result)
    floors, pairs = result["floors"], result["positive_pairs"]
    print(format_table(result["table"]))
    print(
        f"floors: region area {floors['region_area']:.3f} (expected energy inside of a random map), "
        f"dilated by {args.tolerance} px {floors['dilated_region_area']:.3f} (expected pointing game of a "
        f"random map); positive pairs: similarity {pairs.get('full_similarity', float('nan')):.3f} intact, "
        f"{pairs.get('baseline_similarity', float('nan')):.3f} on the {args.baseline} baseline"
    )
    logger.info("explanation quality written to %s", path)
    return result
