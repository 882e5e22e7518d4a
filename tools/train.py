#!/usr/bin/env python
"""Train a re-id model: ``python tools/train.py --config FILE [--resume] [KEY VALUE ...]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import parse_with_overrides  # noqa: E402
from reid.config import ConfigError, load_config  # noqa: E402
from reid.engine.builders import build_engine, setup_logging  # noqa: E402

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file (overrides reid/config.py)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. OPTIM.MAX_EPOCH 5")
    return parse_with_overrides(parser, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.opts)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from exc
    setup_logging(cfg.OUTPUT_DIR, "train")
    logger.info("config:\n%s", cfg.dump())
    engine = build_engine(cfg, progress=not args.no_progress)
    metrics = engine.run(
        max_epoch=cfg.OPTIM.MAX_EPOCH,
        eval_freq=cfg.TEST.EVAL_FREQ,
        checkpoint_freq=cfg.TRAIN.CHECKPOINT_FREQ,
        print_freq=cfg.TRAIN.PRINT_FREQ,
        resume=args.resume,
    )
    summary = ", ".join(f"{k} {metrics[k]:.1%}" for k in ("rank1", "rank5", "mAP", "mINP") if k in metrics)
    logger.info("final: %s (checkpoint %s)", summary, engine.checkpoint_path)
    return metrics


if __name__ == "__main__":
    main()
