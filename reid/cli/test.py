"""Evaluate a checkpoint: ``reid test --config FILE --weights CKPT [--save-features DIR |
--features DIR] [KEY VALUE ...]``.

Writes ``OUTPUT_DIR/test_metrics.json`` (same keys as the training run's ``metrics.json``) and the
CMC plot ``OUTPUT_DIR/test_cmc.png``. ``--save-features DIR`` also writes each target's query and
gallery features with their identities, cameras and image paths to ``DIR/<target>.npz``;
``--features DIR`` evaluates from those files instead of running the model on the images (the
weights still give the model's own distance), so a large gallery is embedded once. Above
``TEST.MAX_MATRIX_MB`` the query x gallery matrix is never built whole: blocks of rows are ranked
as they are computed, with the same numbers. ``TEST.RERANK True`` applies k-reciprocal re-ranking;
``TRAIN.AMP bf16`` (or ``fp16`` on CUDA) extracts the features under autocast. Evaluates
checkpoints of single-process and distributed (``torchrun``) runs alike; it runs as one process.
"""

from __future__ import annotations

import argparse
import logging
import os

from reid.cli.common import (
    config_or_exit, engine_with_weights, new_parser, parse_with_overrides, releases_output_dirs,
)
from reid.config import config_to_dict
from reid.engine.evaluation import FeatureFiles
from reid.io import write_json

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("test", __doc__, weights=True)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    saved = parser.add_mutually_exclusive_group()
    saved.add_argument("--save-features", metavar="DIR", help="also write each target's features to DIR/<target>.npz")
    saved.add_argument("--features", metavar="DIR", help="evaluate from DIR/<target>.npz instead of the images")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. TEST.RERANK True")
    args = parse_with_overrides(parser, argv)
    if args.features and not os.path.isdir(args.features):
        parser.error(f"--features: no such folder: {args.features}")
    return args


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise SystemExit(
            "reid test evaluates in one process; run it with python, not torchrun "
            f"(WORLD_SIZE is {os.environ['WORLD_SIZE']})"
        )
    engine = engine_with_weights(cfg, args.weights, "test", progress=not args.no_progress)
    if args.save_features or args.features:
        engine.feature_files = FeatureFiles(args.save_features or args.features, "save" if args.save_features else "load")
    try:
        results = engine.evaluate()
    except MemoryError as exc:  # a re-ranking refused before it starts
        raise SystemExit(f"reid test: {exc}") from exc
    except ValueError as exc:
        if not args.features:
            raise
        raise SystemExit(f"reid test --features: {exc}") from exc
    first = next(iter(results.values()))
    content = {
        **first,
        "targets": results,
        "cmc": dict(engine.cmc_curves),
        "weights": os.path.abspath(args.weights),
        **({"features": os.path.abspath(args.features)} if args.features else {}),
        "config": config_to_dict(cfg),
    }
    path = os.path.join(cfg.OUTPUT_DIR, "test_metrics.json")
    write_json(path, content)
    logger.info("metrics written to %s", path)
    engine.plot_cmc(os.path.join(cfg.OUTPUT_DIR, "test_cmc.png"))
    return content

