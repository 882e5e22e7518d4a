"""Train a re-id model: ``reid train --config FILE [--resume | --overwrite] [KEY VALUE ...]``.

An OUTPUT_DIR that holds a run (its checkpoint) is refused unless ``--resume`` continues it or
``--overwrite`` replaces it (the previous run's files are moved to ``OUTPUT_DIR/replaced-<time>``).

Distributed (one process per GPU): start it with ``torchrun``, e.g. on one node with 4 GPUs
``torchrun --nproc_per_node 4 tools/train.py --config FILE`` (or ``torchrun ... -m reid train``). The tool reads ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``, joins the process group (``DIST.BACKEND``: NCCL on GPUs, gloo on the
CPU) and splits ``SAMPLER.BATCH_SIZE_TRAIN`` over the processes; rank 0 logs, evaluates and
writes the checkpoints (see ``reid/engine/distributed.py``).
"""

from __future__ import annotations

import argparse
import logging

from reid.cli.common import (
    check_resume_config, load_checked_config, new_parser, parse_with_overrides, releases_output_dirs,
)
from reid.config import ConfigError, validate_world_size
from reid.io import claim_folder
from reid.builders import build_engine, require_pretrained_weights, resolve_device, setup_logging
from reid.engine.checkpoint import ExistingRunError, prepare_output_dir
from reid.engine.distributed import destroy_distributed, init_distributed, world_from_env

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("train", __doc__)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUTPUT_DIR that holds one (its files are moved aside first)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. OPTIM.MAX_EPOCH 5")
    return parse_with_overrides(parser, argv)


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        cfg = load_checked_config(args.config, args.opts)
        world = world_from_env()
        validate_world_size(cfg, world.world_size)
        if not args.resume:
            require_pretrained_weights(cfg)
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"config error: {exc}") from exc
    # one run per OUTPUT_DIR, also against --overwrite of a running run (before anything moves)
    took_over = claim_folder(cfg.OUTPUT_DIR, "train") if world.is_main else None
    try:
        replaced = prepare_output_dir(cfg.OUTPUT_DIR, args.resume, args.overwrite, world.is_main)
    except ExistingRunError as exc:
        raise SystemExit(f"error: {exc}") from exc
    setup_logging(cfg.OUTPUT_DIR, "train", main_process=world.is_main)
    if took_over:
        logger.warning(took_over)
    if replaced:
        logger.info(replaced)
    logger.info("config:\n%s", cfg.dump())
    # --resume: the checkpoint is read once, here, and restored from memory by the engine (read
    # again there if it was replaced meanwhile: ReadCheckpoint.is_current)
    resume_state = check_resume_config(cfg, logger) if args.resume else None
    if world.is_distributed:
        device = resolve_device(cfg.DEVICE, world.local_rank)
        init_distributed(world, device, backend=cfg.DIST.BACKEND, timeout_min=cfg.DIST.TIMEOUT_MIN)
    try:
        engine = build_engine(cfg, progress=not args.no_progress, dist=world)
        metrics = engine.run(
            max_epoch=cfg.OPTIM.MAX_EPOCH,
            eval_freq=cfg.TEST.EVAL_FREQ,
            checkpoint_freq=cfg.TRAIN.CHECKPOINT_FREQ,
            print_freq=cfg.TRAIN.PRINT_FREQ,
            resume=args.resume,
            resume_state=resume_state,
        )
    finally:
        if world.is_distributed:
            destroy_distributed()
    if not world.is_main:
        return metrics
    summary = ", ".join(f"{k} {metrics[k]:.1%}" for k in ("rank1", "rank5", "mAP", "mINP", "map@r", "r_precision", "nmi") if k in metrics)
    logger.info("final: %s (checkpoint %s)", summary, engine.checkpoint_path)
    return metrics

