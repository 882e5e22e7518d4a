"""Validation of the configuration: the values a key may take and the checks a type alone cannot
make (:func:`validate`), and the split of the training batch over processes
(:func:`validate_world_size`). ``reid.config`` holds the defaults and loads a config through these.

The allowed values of a key are declared by the component that owns them (:func:`allowed_values`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


def allowed_values() -> dict[str, tuple[str, ...]]:
    """``{key: allowed values}`` of the keys that take one of a few names.

    Each component declares its own values; this reads them (imported here, when a config is
    validated, so that importing ``reid.config`` stays light).
    """
    from reid.data.base import ON_BAD_IMAGE_MODES
    from reid.data.folder import FOLDER_LAYOUTS
    from reid.data.samplers import TRAIN_SAMPLERS
    from reid.engine.amp import AMP_MODES
    from reid.engine.distributed import BACKENDS
    from reid.engine.optim import OPTIMIZERS, SCHEDULERS
    from reid.losses import AVSL_LOSSES, BN_MODES, FORMS, OBJECTIVES
    from reid.losses.metric import METRIC_LOSSES
    from reid.metrics import DISTANCE_METRICS
    from reid.models import BACKBONES, PADDING_MODES, list_models
    from reid.models.pcb import TEST_FEATURES
    from reid.models.torchreid_net import TORCHREID_ARCHS

    return {
        "MODEL.NAME": tuple(list_models()),
        "MODEL.BACKBONE": BACKBONES,
        "MODEL.TEST_FEATURE": TEST_FEATURES,
        "MODEL.PADDING_MODE": PADDING_MODES,
        "MODEL.TORCHREID.ARCH": TORCHREID_ARCHS,
        "OPTIM.NAME": OPTIMIZERS,
        "OPTIM.SCHEDULER": SCHEDULERS,
        "TEST.DIST_METRIC": tuple(DISTANCE_METRICS),
        "DATA.ON_BAD_IMAGE": ON_BAD_IMAGE_MODES,
        "DATA.FOLDER.LAYOUT": FOLDER_LAYOUTS,
        "SAMPLER.TRAIN": TRAIN_SAMPLERS,
        "SAM.FORM": tuple(FORMS),
        "SAM.OBJECTIVE": OBJECTIVES,
        "LOSS.METRIC": METRIC_LOSSES,
        "SAM.BN_MODE": BN_MODES,
        "AVSL.LOSS": AVSL_LOSSES,
        "TRAIN.AMP": AMP_MODES,
        "DIST.BACKEND": BACKENDS,
    }


# torchreid's build_transforms (torchreid/reid/data/transforms.py) applies these training
# augmentations, matched in lower case, and silently ignores any other name: DATA.TRANSFORMS is
# checked against them (tests/test_config.py reads the list back from torchreid's source).
TORCHREID_TRANSFORMS = ("random_flip", "random_crop", "random_patch", "color_jitter", "random_erase")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int, note: str = "") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}{note}"


_POSITIVE_INT = _int_at_least(1)
_NON_NEGATIVE_INT = _int_at_least(0)
_POSITIVE = (lambda v: _is_number(v) and v > 0), "a finite number > 0"
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0), "a finite number >= 0"
_PROBABILITY = (lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)"

# The range of every numeric key (the type is checked when the value is merged): key -> (check,
# what is allowed). Sizes are positive, weights and margins non-negative, probabilities and
# momenta in [0, 1). Keys that depend on each other are checked in `validate` below.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "SEED": ((lambda v: _is_int(v) and 0 <= v < 2**32), "an integer in [0, 2**32)"),
    "NUM_THREADS": _int_at_least(0, " (0: torch's default)"),
    "DATA.HEIGHT": _POSITIVE_INT,
    "DATA.WIDTH": _POSITIVE_INT,
    "DATA.WORKERS": _NON_NEGATIVE_INT,
    "DATA.SYNTHETIC.SEED": _NON_NEGATIVE_INT,
    "SAMPLER.NUM_INSTANCES": _POSITIVE_INT,
    "SAMPLER.BATCH_SIZE_TRAIN": _POSITIVE_INT,
    "SAMPLER.BATCH_SIZE_TEST": _POSITIVE_INT,
    "MODEL.NUM_STRIPES": _POSITIVE_INT,
    "MODEL.REDUCED_DIM": _POSITIVE_INT,
    "MODEL.DROPOUT": _PROBABILITY,
    "MODEL.LAST_STRIDE": ((lambda v: v in (1, 2)), "1 or 2"),
    "LOSS.ID_WEIGHT": _NON_NEGATIVE,
    "LOSS.LABEL_SMOOTH": _PROBABILITY,
    "LOSS.TRIPLET_WEIGHT": _NON_NEGATIVE,
    "LOSS.TRIPLET_MARGIN": _NON_NEGATIVE,
    "LOSS.MARGIN_ALPHA": _NON_NEGATIVE,
    "LOSS.MARGIN_BETA": ((lambda v: _is_number(v) and 0 < v <= 2),
                         "a number in (0, 2] (a distance between unit vectors)"),
    "SAM.GAMMA": _NON_NEGATIVE,
    "SAM.OMEGA": _POSITIVE,
    "SAM.SIGMA": ((lambda v: _is_number(v) and 0 <= v <= 1), "a number in [0, 1] (a threshold of the normalised map)"),
    "SAM.MAX_TUPLES": _int_at_least(0, " (0: every mined tuple)"),
    "SAM.START_EPOCH": _int_at_least(0, " (0: similarity mining from the first epoch)"),
    "AVSL.EMBED_DIM": _POSITIVE_INT,
    "AVSL.MOMENTUM": _PROBABILITY,
    "AVSL.MARGIN": _NON_NEGATIVE,
    "AVSL.OVERALL_WEIGHT": _NON_NEGATIVE,
    "AVSL.PROXY_ALPHA": _POSITIVE,
    "AVSL.PROXY_POS_MARGIN": _NON_NEGATIVE,
    "AVSL.PROXY_NEG_MARGIN": _NON_NEGATIVE,
    "AVSL.EVAL_CHUNK_SIZE": _int_at_least(0, " (0: automatic)"),
    "OPTIM.LR": _POSITIVE,
    "OPTIM.TRUNK_LR_MULT": _NON_NEGATIVE,
    "OPTIM.WEIGHT_DECAY": _NON_NEGATIVE,
    "OPTIM.MOMENTUM": _PROBABILITY,
    "OPTIM.GAMMA": ((lambda v: _is_number(v) and 0 < v <= 1), "a number in (0, 1]"),
    "OPTIM.MAX_EPOCH": _NON_NEGATIVE_INT,
    "TEST.EVAL_FREQ": _int_at_least(0, " (0: only after the last epoch)"),
    "TEST.MAX_MATRIX_MB": ((lambda v: _is_number(v) and v >= 0), "a finite number >= 0 (0: always stream)"),
    "TRAIN.PRINT_FREQ": _POSITIVE_INT,
    "TRAIN.CHECKPOINT_FREQ": _POSITIVE_INT,
    "DIST.TIMEOUT_MIN": _POSITIVE_INT,
    "DIST.ID_PASSES": _POSITIVE_INT,
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _get(cfg: CN, key: str) -> Any:
    """The value of a dotted key the defaults hold."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_lists(cfg: CN) -> None:
    """The keys whose value is a list: length, element types and ranges."""
    for key in ("DATA.SOURCES", "DATA.TARGETS"):
        if not all(isinstance(name, str) and name for name in _get(cfg, key)):
            raise ConfigError(f"{key} must be a list of dataset names, got {_get(cfg, key)!r}")
    if not cfg.DATA.SOURCES:
        raise ConfigError("DATA.SOURCES must name at least one dataset")
    transforms = cfg.DATA.TRANSFORMS
    unknown = [t for t in transforms if not isinstance(t, str) or t.lower() not in TORCHREID_TRANSFORMS]
    if unknown:
        raise ConfigError(
            f"DATA.TRANSFORMS: unknown transform(s) {unknown} in {list(transforms)}; torchreid knows "
            f"{list(TORCHREID_TRANSFORMS)} (and would silently skip any other name)"
        )
    if len(cfg.DATA.NORM_MEAN) != 3 or not all(_is_number(v) for v in cfg.DATA.NORM_MEAN):
        raise ConfigError(f"DATA.NORM_MEAN must be 3 finite numbers, got {list(cfg.DATA.NORM_MEAN)}")
    std = cfg.DATA.NORM_STD
    if len(std) != 3 or not all(_is_number(v) and v > 0 for v in std):
        raise ConfigError(f"DATA.NORM_STD must be 3 finite numbers > 0, got {list(std)}")
    betas = cfg.OPTIM.ADAM_BETAS
    if len(betas) != 2 or not all(_is_number(v) and 0 <= v < 1 for v in betas):
        raise ConfigError(f"OPTIM.ADAM_BETAS must be 2 numbers in [0, 1), got {list(betas)}")
    ranks = cfg.TEST.RANKS
    if not ranks or not all(_is_int(r) and r >= 1 for r in ranks):
        raise ConfigError(f"TEST.RANKS must be a non-empty list of integers >= 1, got {list(ranks)}")
    recall_ks = cfg.TEST.RECALL_KS
    if not recall_ks or not all(_is_int(k) and k >= 1 for k in recall_ks):
        raise ConfigError(f"TEST.RECALL_KS must be a non-empty list of integers >= 1, got {list(recall_ks)}")
    weights = cfg.AVSL.LEVEL_WEIGHTS
    if not all(_is_number(w) and w >= 0 for w in weights):
        raise ConfigError(f"AVSL.LEVEL_WEIGHTS must be finite numbers >= 0, got {list(weights)}")
    steps, scheduler = list(cfg.OPTIM.STEPSIZE), cfg.OPTIM.SCHEDULER
    epochs_ok = all(_is_int(s) and s >= 1 for s in steps)
    if scheduler == "single_step" and (len(steps) != 1 or not epochs_ok):
        raise ConfigError(
            f"OPTIM.STEPSIZE must hold one epoch for OPTIM.SCHEDULER single_step, got {steps} (an integer "
            f">= 1: the rate is multiplied by OPTIM.GAMMA every that many epochs; multi_step takes a list)"
        )
    if scheduler == "multi_step" and (not steps or not epochs_ok or steps != sorted(set(steps))):
        raise ConfigError(
            f"OPTIM.STEPSIZE must be increasing epochs >= 1 for OPTIM.SCHEDULER multi_step, got {steps}"
        )


def _check_synthetic(cfg: CN) -> None:
    """The synthetic set's own limits (``SyntheticConfig``), when a dataset of the config is it."""
    if not {"synthetic", "synthetic_retrieval"} & {*cfg.DATA.SOURCES, *cfg.DATA.TARGETS}:
        return
    from reid.data.synthetic import SyntheticConfig

    syn = cfg.DATA.SYNTHETIC
    try:
        SyntheticConfig(
            num_ids=syn.NUM_IDS, num_cams=syn.NUM_CAMS, images_per_id=syn.IMAGES_PER_ID,
            height=syn.IMG_HEIGHT, width=syn.IMG_WIDTH, seed=syn.SEED,
        )
    except ValueError as exc:
        text = str(exc)
        for field_name, key in (("num_ids", "NUM_IDS"), ("num_cams", "NUM_CAMS"), ("images_per_id", "IMAGES_PER_ID")):
            text = text.replace(field_name, f"DATA.SYNTHETIC.{key}")
        if text == str(exc):
            text = f"DATA.SYNTHETIC (IMG_HEIGHT {syn.IMG_HEIGHT}, IMG_WIDTH {syn.IMG_WIDTH}): {text}"
        raise ConfigError(text) from exc


def _check_folder(cfg: CN) -> None:
    """The keys of a dataset folder of the user's (``DATA.FOLDER``): list file names are never
    empty; the folder must be named when a dataset of the config is ``folder``. Whether the folder
    and its files exist is checked when the dataset is built (``reid.data.folder``)."""
    folder = cfg.DATA.FOLDER
    for key in ("TRAIN_LIST", "QUERY_LIST", "GALLERY_LIST"):
        if not folder[key].strip():
            raise ConfigError(f"DATA.FOLDER.{key} must name a list file, got {folder[key]!r}")
    if "folder" in {*cfg.DATA.SOURCES, *cfg.DATA.TARGETS} and not folder.ROOT.strip():
        raise ConfigError(
            f"DATA.FOLDER.ROOT must name your dataset folder when DATA.SOURCES or DATA.TARGETS uses "
            f"'folder', got {folder.ROOT!r}"
        )


def validate(cfg: CN) -> None:
    """Checks values that a type alone does not constrain; raises :class:`ConfigError` naming the
    key, the value and what is allowed.

    What the model itself cannot do (e.g. more PCB stripes than its map has rows) is checked by
    its recipe (``reid.builders.model_recipe``), which every command calls after this.
    """
    for key, choices in allowed_values().items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
    for key, (ok, allowed) in _RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    if not _DEVICE.fullmatch(cfg.DEVICE):
        raise ConfigError(f"DEVICE must be auto, cpu, cuda or cuda:N, got {cfg.DEVICE!r}")
    _check_lists(cfg)
    _check_synthetic(cfg)
    _check_folder(cfg)
    if cfg.SAMPLER.BATCH_SIZE_TRAIN % cfg.SAMPLER.NUM_INSTANCES:
        raise ConfigError(
            f"SAMPLER.BATCH_SIZE_TRAIN ({cfg.SAMPLER.BATCH_SIZE_TRAIN}) must be a multiple of "
            f"SAMPLER.NUM_INSTANCES ({cfg.SAMPLER.NUM_INSTANCES})"
        )
    if cfg.SAM.SECOND_ORDER and not cfg.SAM.MAP_GRADIENT:
        raise ConfigError("SAM.SECOND_ORDER needs SAM.MAP_GRADIENT true (detached maps have no alpha gradient)")
    avsl = cfg.AVSL
    from reid.models.avsl import check_levels

    try:
        check_levels(avsl.LEVELS)
    except ValueError as exc:
        raise ConfigError(f"AVSL.LEVELS: {exc}") from exc
    if len(avsl.LEVEL_WEIGHTS) != len(avsl.LEVELS):
        raise ConfigError(
            f"AVSL.LEVEL_WEIGHTS needs one weight per level ({len(avsl.LEVELS)}), got {avsl.LEVEL_WEIGHTS}"
        )
    if not 1 <= avsl.TOPK <= avsl.EMBED_DIM:
        raise ConfigError(
            f"AVSL.TOPK must be in [1, AVSL.EMBED_DIM]; got TOPK {avsl.TOPK}, EMBED_DIM {avsl.EMBED_DIM}"
        )
    if avsl.PROXY_NEG_MARGIN < avsl.PROXY_POS_MARGIN:
        raise ConfigError(
            f"AVSL.PROXY_NEG_MARGIN ({avsl.PROXY_NEG_MARGIN}) must be >= AVSL.PROXY_POS_MARGIN "
            f"({avsl.PROXY_POS_MARGIN}): negatives are pushed beyond the positives' margin"
        )
    if cfg.TRAIN.AMP == "fp16" and cfg.DEVICE == "cpu":
        raise ConfigError(
            "TRAIN.AMP fp16 needs a CUDA device (float16 autocast with a loss scaler); "
            "use TRAIN.AMP bf16 on the CPU"
        )


def validate_world_size(cfg: CN, world_size: int) -> None:
    """Checks that the training batch splits over ``world_size`` processes into P x K batches.

    Each process loads ``SAMPLER.BATCH_SIZE_TRAIN / world_size`` images per step, and that
    per-process batch must itself be a multiple of ``SAMPLER.NUM_INSTANCES`` (K).

    Raises:
        ConfigError: the batch does not divide.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if world_size == 1:
        return
    batch, k = cfg.SAMPLER.BATCH_SIZE_TRAIN, cfg.SAMPLER.NUM_INSTANCES
    if batch % world_size or (batch // world_size) % k:
        raise ConfigError(
            f"SAMPLER.BATCH_SIZE_TRAIN ({batch}) must split over {world_size} processes into "
            f"per-process batches that are multiples of SAMPLER.NUM_INSTANCES ({k}); "
            f"use a multiple of {world_size * k}"
        )
