"""Evaluate a checkpoint: ``reid test --config FILE --weights CKPT [KEY VALUE ...]``.

Writes ``OUTPUT_DIR/test_metrics.json`` (same keys as the training run's ``metrics.json``) and the
CMC plot ``OUTPUT_DIR/test_cmc.png``. ``TEST.RERANK True`` applies k-reciprocal re-ranking;
``TRAIN.AMP bf16`` (or ``fp16`` on CUDA) extracts the features under autocast. Evaluates
checkpoints of single-process and distributed (``torchrun``) runs alike; it runs as one process.
"""

from __future__ import annotations

import argparse
import logging
import os

from reid.cli.common import new_parser, config_or_exit, engine_with_weights, parse_with_overrides
from reid.config import config_to_dict
from reid.io import write_json

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("test", __doc__, weights=True)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. TEST.RERANK True")
    return parse_with_overrides(parser, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise SystemExit(
            "reid test evaluates in one process; run it with python, not torchrun "
            f"(WORLD_SIZE is {os.environ['WORLD_SIZE']})"
        )
    engine = engine_with_weights(cfg, args.weights, "test", progress=not args.no_progress)
    results = engine.evaluate()
    first = next(iter(results.values()))
    content = {
        **first,
        "targets": results,
        "cmc": dict(engine.cmc_curves),
        "weights": os.path.abspath(args.weights),
        "config": config_to_dict(cfg),
    }
    path = os.path.join(cfg.OUTPUT_DIR, "test_metrics.json")
    write_json(path, content)
    logger.info("metrics written to %s", path)
    engine.plot_cmc(os.path.join(cfg.OUTPUT_DIR, "test_cmc.png"))
    return content

