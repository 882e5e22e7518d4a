"""Default configuration: every key with a comment.

YAML files under ``configs/`` override these defaults and the command line overrides the YAML
(``KEY VALUE`` pairs, e.g. ``OPTIM.MAX_EPOCH 5``). The config is frozen before use. Only the
commands (``reid.cli``) and the builders (``reid/builders.py``) read it; the engine and the library
classes take plain keyword arguments. The checks of the values (:func:`validate`, the allowed
values each component declares: :func:`allowed_values`) live in :mod:`reid.config.checks`, and
are importable from here too.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN

# the validation lives beside (reid/config/checks.py); its names are this module's too
from reid.config.checks import (  # noqa: F401
    TORCHREID_TRANSFORMS, ConfigError, allowed_values, validate, validate_world_size,
)


_C = CN()

# Folder for everything a run writes: checkpoints, TensorBoard logs, metrics.json, explanations.
_C.OUTPUT_DIR = "output/default"
# Seed of Python, NumPy and torch RNGs (data sampling, augmentation, initialisation).
_C.SEED = 0
# "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
_C.DEVICE = "auto"
# Threads torch may use on the CPU; 0 keeps torch's default.
_C.NUM_THREADS = 0

# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
# Root folder of the datasets (each dataset documents its sub-folder layout).
_C.DATA.ROOT = "reid-data"
# Training dataset names registered with torchreid (ours: synthetic, cuhk03_np_labeled, ...,
# folder (DATA.FOLDER); for image retrieval cub200, cars196, sop, synthetic_retrieval; or a name
# that a module given with --plugin registered).
_C.DATA.SOURCES = ["synthetic"]
# Test dataset names; empty means the same as SOURCES.
_C.DATA.TARGETS = []
# Input height and width in pixels (the paper recipe uses 384 x 128).
_C.DATA.HEIGHT = 256
_C.DATA.WIDTH = 128
# Training augmentations from torchreid's build_transforms (random_flip, random_crop,
# random_patch, color_jitter, random_erase).
_C.DATA.TRANSFORMS = ["random_flip"]
# Normalisation mean and std (ImageNet's by default).
_C.DATA.NORM_MEAN = [0.485, 0.456, 0.406]
_C.DATA.NORM_STD = [0.229, 0.224, 0.225]
# DataLoader worker processes (0 loads in the main process).
_C.DATA.WORKERS = 2
# Train on train + query + gallery of the sources (torchreid's combineall).
_C.DATA.COMBINEALL = False
# What to do with an unreadable or truncated image: "error" stops with its path, "skip" drops
# it from the split and logs how many were dropped.
_C.DATA.ON_BAD_IMAGE = "error"

# Synthetic dataset (reid/data/synthetic.py): generated once under ROOT/synthetic/<variant>.
_C.DATA.SYNTHETIC = CN()
# Number of identities (half train, half test).
_C.DATA.SYNTHETIC.NUM_IDS = 300
# Number of cameras.
_C.DATA.SYNTHETIC.NUM_CAMS = 6
# Images per identity (spread over the cameras).
_C.DATA.SYNTHETIC.IMAGES_PER_ID = 20
# Rendered image height and width in pixels.
_C.DATA.SYNTHETIC.IMG_HEIGHT = 128
_C.DATA.SYNTHETIC.IMG_WIDTH = 64
# Seed of the generator (identities, cameras, images).
_C.DATA.SYNTHETIC.SEED = 0

# A dataset folder of your own (reid/data/folder.py), used by naming "folder" in SOURCES/TARGETS.
_C.DATA.FOLDER = CN()
# The folder: an absolute path as it is, a relative one under DATA.ROOT ("~" expanded). Required
# when a dataset of the config is "folder".
_C.DATA.FOLDER.ROOT = ""
# "market1501": bounding_box_train/, query/ and bounding_box_test/ with Market-1501 file names;
# "lists": the three list files below, one "path identity camera" line per image.
_C.DATA.FOLDER.LAYOUT = "market1501"
# The list files of the "lists" layout (relative to DATA.FOLDER.ROOT, or absolute).
_C.DATA.FOLDER.TRAIN_LIST = "train.txt"
_C.DATA.FOLDER.QUERY_LIST = "query.txt"
_C.DATA.FOLDER.GALLERY_LIST = "gallery.txt"

# ---------------------------------------------------------------------------------------------
_C.SAMPLER = CN()
# torchreid train sampler: RandomIdentitySampler (P x K batches, needed by the triplet loss) or
# RandomSampler.
_C.SAMPLER.TRAIN = "RandomIdentitySampler"
# K: images per identity in a training batch.
_C.SAMPLER.NUM_INSTANCES = 4
# Training batch size (P x K).
_C.SAMPLER.BATCH_SIZE_TRAIN = 32
# Batch size for feature extraction at test time.
_C.SAMPLER.BATCH_SIZE_TEST = 64

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Registered model name (reid.models.create_model).
_C.MODEL.NAME = "pcb"
# Trunk: resnet18, resnet34, resnet50 or mobilenet_v2 (width 1.0; its ImageNet weights install
# with `reid weights fetch mobilenet_v2`). Every trunk names its stages layer1..layer4 (strides 4,
# 8, 16, 32; docs/method.md section 1).
_C.MODEL.BACKBONE = "resnet50"
# Number of horizontal stripes P.
_C.MODEL.NUM_STRIPES = 6
# Channels of each reduced stripe feature (1x1 conv + BN + ReLU).
_C.MODEL.REDUCED_DIM = 256
# Dropout before each stripe's reduction.
_C.MODEL.DROPOUT = 0.5
# Stride of layer4's first block (1 doubles the map's resolution, as PCB does).
_C.MODEL.LAST_STRIDE = 1
# Test embedding: "pooled" (normalised pooled layer4 stripes, P x C) or "reduced"
# (normalised reduced stripes, P x REDUCED_DIM).
_C.MODEL.TEST_FEATURE = "pooled"
# Local file of ImageNet weights for the trunk (a torchvision state dict). Empty: look in the
# torchvision cache ($TORCH_HOME/hub/checkpoints/<backbone>-*.pth). Never downloaded: with
# PRETRAINED true and no file, `reid train` refuses to start and says how to get one.
_C.MODEL.PRETRAINED_PATH = ""
# Use ImageNet weights at all (False: random initialisation, the explicit way to train from
# scratch).
_C.MODEL.PRETRAINED = True
# Padding of the trunk's convolutions: "zeros" (torchvision's ResNet), "reflect" or "replicate"
# (no zero-padding cue to where the image border is; the weights are the same, so ImageNet weights
# still load). "reflect" needs every padded map to be larger than its padding (e.g. >= 2 px).
_C.MODEL.PADDING_MODE = "zeros"

# A network of torchreid's model zoo, explained and trained as it is (MODEL.NAME torchreid;
# docs/own-data-and-models.md). ARCH: a name of torchreid.reid.models' registry (osnet_x1_0,
# resnet50, mobilenetv2_x1_0, pcb_p6, ...; `reid explain --help` and docs/explanations.md list
# which families expose which layer). MODEL.PRETRAINED_PATH, when set, is an ImageNet or torchreid
# weights file loaded as torchreid's load_pretrained_weights does (matching keys and shapes);
# MODEL.BACKBONE, NUM_STRIPES, REDUCED_DIM, DROPOUT, LAST_STRIDE, TEST_FEATURE and PADDING_MODE do
# not apply to it (the arch fixes them).
_C.MODEL.TORCHREID = CN()
_C.MODEL.TORCHREID.ARCH = "osnet_x0_25"

# ---------------------------------------------------------------------------------------------
_C.LOSS = CN()
# Weight of the ID loss (mean over stripes of cross-entropy).
_C.LOSS.ID_WEIGHT = 1.0
# Label smoothing epsilon of the ID loss (0 disables).
_C.LOSS.LABEL_SMOOTH = 0.0
# The metric loss of PCB models: "triplet" (batch hard), "contrastive" or "quadruplet" (the SAM
# paper's Siamese / triplet / quadruplet networks; reid/losses/metric.py), or "margin" (Wu et al.
# 2017, with distance-weighted sampling; reid/losses/margin.py; its margin and boundary are
# MARGIN_ALPHA and MARGIN_BETA below). TRIPLET_WEIGHT is its weight whichever it is, and
# TRIPLET_MARGIN the margin of the first three.
_C.LOSS.METRIC = "triplet"
# Weight of the metric loss (batch-hard triplet by default) on the concatenated stripe features.
_C.LOSS.TRIPLET_WEIGHT = 1.0
# Margin of the metric loss (triplet, contrastive, quadruplet).
_C.LOSS.TRIPLET_MARGIN = 0.3
# The margin loss of Wu et al. ("Sampling matters in deep embedding learning", ICCV 2017), used by
# LOSS.METRIC margin (PCB) and AVSL.LOSS margin: max(0, alpha + y (D - beta)) on Euclidean
# distances D of unit embeddings, y = +1 for positive and -1 for negative pairs (docs/method.md
# section 13). In Wu et al.'s names: MARGIN_ALPHA is the margin alpha (0.2); MARGIN_BETA the
# initial value of the learnable boundary beta (1.2), a parameter of the model (margin_beta),
# trained with it and kept in its checkpoints. The AVSL paper (section 4.2) writes "alpha and beta
# to 1.2 and 0.2": its names are swapped, its values these.
_C.LOSS.MARGIN_ALPHA = 0.2
_C.LOSS.MARGIN_BETA = 1.2

# ---------------------------------------------------------------------------------------------
# Similarity mining (SAM paper, sections 3.2-3.3; docs/method.md section 3).
_C.SAM = CN()
# Add the similarity-mining objective: L = L_ml + GAMMA * L_sm.
_C.SAM.ENABLED = False
# Tuple form of the mining loss: siamese (positive pairs), triplet or quadruplet.
_C.SAM.FORM = "triplet"
# gamma, the weight of L_sm.
_C.SAM.GAMMA = 0.2
# omega and sigma of the soft mask x * (1 - sigmoid(omega * (M - sigma))).
_C.SAM.OMEGA = 10.0
_C.SAM.SIGMA = 0.5
# Explained layer whose map gives the attention (PCB: layer4, the map the embedding pools).
_C.SAM.LAYER = "layer4"
# BatchNorm during the masked images' pass: "eval" (frozen running statistics, not updated) or
# "train" (batch statistics, running statistics updated).
_C.SAM.BN_MODE = "eval"
# Second-order gradients: back-propagate through alpha as well (create_graph=True).
_C.SAM.SECOND_ORDER = False
# Tuples per step in L_sm: 0 uses every mined tuple (the method as published); n > 0 draws n
# of them at random each step (an unbiased estimate of the same mean, bounding the masked pass
# to n tuples' images: a cost knob, see benchmarks/sam_overhead.py).
_C.SAM.MAX_TUPLES = 0
# L_sm reaches the first pass through the maps (A in M = ReLU(sum alpha_k A_k)), as published.
# False detaches the maps: the masks are constants and L_sm trains through the masked pass only.
_C.SAM.MAP_GRADIENT = True
# Direction of L_sm (docs/method.md section 3): "erase" (minimising L_sm makes the masked tuple
# fail its similarity condition, as the paper's text and Siamese form argue; triplet
# ||f*a - f*n|| - ||f*a - f*p||) or "printed" (eq. 2 as printed, ||f*a - f*p|| - ||f*a - f*n||:
# the ablation). The Siamese form -||f*1 - f*2|| is the same under both.
_C.SAM.OBJECTIVE = "erase"
# First epoch (0-based) trained with similarity mining: the epochs before it are plain PCB
# epochs (no maps, no masked pass, no L_sm). 0: from the start.
_C.SAM.START_EPOCH = 0

# ---------------------------------------------------------------------------------------------
# AVSL similarity head (AVSL paper; docs/method.md section 5). Used when MODEL.NAME is avsl;
# MODEL.BACKBONE, MODEL.LAST_STRIDE, MODEL.PRETRAINED(_PATH) choose its trunk.
_C.AVSL = CN()
# Trunk stages giving the levels of the similarity graph, bottom-up.
_C.AVSL.LEVELS = ["layer2", "layer3", "layer4"]
# R: nodes (embedding dimensions) per level.
_C.AVSL.EMBED_DIM = 512
# k: lower-level nodes that rectify each node (top-k edges; the paper uses 128).
_C.AVSL.TOPK = 128
# gamma of the edge update: omega <- MOMENTUM * omega + (1 - MOMENTUM) * omega_hat.
_C.AVSL.MOMENTUM = 0.5
# Metric loss of each level and of the overall distance: triplet (batch hard, for P x K
# batches), proxy_anchor (the paper's ProxyAnchor; learns one proxy per identity and level) or
# margin (the paper's other base loss, Wu et al.'s margin loss with distance-weighted sampling;
# LOSS.MARGIN_ALPHA and LOSS.MARGIN_BETA; learns one boundary per level and one for d_hat).
_C.AVSL.LOSS = "triplet"
# Triplet margin, in squared-distance units.
_C.AVSL.MARGIN = 0.3
# Weight of each level's metric loss (one per level).
_C.AVSL.LEVEL_WEIGHTS = [1.0, 1.0, 1.0]
# Weight of the overall loss on the rectified distance (trains only the reliability parameters).
_C.AVSL.OVERALL_WEIGHT = 1.0
# ProxyAnchor scale alpha and its positive / negative distance margins.
_C.AVSL.PROXY_ALPHA = 16.0
_C.AVSL.PROXY_POS_MARGIN = 1.8
_C.AVSL.PROXY_NEG_MARGIN = 2.2
# Queries per chunk of the test distance matrix (0: automatic, bounded memory).
_C.AVSL.EVAL_CHUNK_SIZE = 0

# ---------------------------------------------------------------------------------------------
_C.OPTIM = CN()
# Optimiser: sgd or adam.
_C.OPTIM.NAME = "sgd"
# Learning rate of the new layers (stripe reductions and classifiers).
_C.OPTIM.LR = 0.1
# Multiplier of LR for the pretrained trunk (PCB: 0.1).
_C.OPTIM.TRUNK_LR_MULT = 0.1
# Weight decay.
_C.OPTIM.WEIGHT_DECAY = 5e-4
# SGD momentum.
_C.OPTIM.MOMENTUM = 0.9
# Adam betas.
_C.OPTIM.ADAM_BETAS = [0.9, 0.999]
# Learning-rate schedule: "single_step", "multi_step" or "cosine".
_C.OPTIM.SCHEDULER = "single_step"
# Epochs at which the step schedules multiply the rate by GAMMA.
_C.OPTIM.STEPSIZE = [40]
# Factor of the step schedules.
_C.OPTIM.GAMMA = 0.1
# Number of training epochs.
_C.OPTIM.MAX_EPOCH = 60

# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Evaluate every N epochs during training (0: only after the last epoch).
_C.TEST.EVAL_FREQ = 0
# Distance between test embeddings: "euclidean" (squared, as torchreid) or "cosine".
_C.TEST.DIST_METRIC = "euclidean"
# L2-normalise the test embeddings before computing distances.
_C.TEST.NORMALIZE_FEATURE = False
# CMC ranks reported in the log and in metrics.json.
_C.TEST.RANKS = [1, 5, 10, 20]
# CUHK03 single-gallery-shot metric instead of the Market-1501 protocol.
_C.TEST.METRIC_CUHK03 = False
# Apply k-reciprocal re-ranking (Zhong et al., CVPR 2017) to the distance matrix.
_C.TEST.RERANK = False
# Largest query x gallery float32 distance matrix (MB) built whole. Above it the evaluation ranks
# blocks of rows computed from the features (same numbers, bounded memory; docs/evaluation.md,
# "Large galleries"), and reid explain keeps its run statistics to the explained queries.
_C.TEST.MAX_MATRIX_MB = 2048.0
# Recall@K reported on retrieval targets (cub200, cars196, sop, synthetic_retrieval): CUB and
# Cars196 use 1, 2, 4, 8; Stanford Online Products 1, 10, 100, 1000.
_C.TEST.RECALL_KS = [1, 2, 4, 8]
# Layer that tools/explain.py explains (its --layer overrides this). Empty: the layer the
# embedding is pooled from (layer4), through the cheap head-only path where the model has one
# (docs/method.md section 2). A name (e.g. "layer1"): that layer, on the full model.
_C.TEST.EXPLAIN_LAYER = ""

# ---------------------------------------------------------------------------------------------
_C.TRAIN = CN()
# Log the running losses every N iterations.
_C.TRAIN.PRINT_FREQ = 10
# Write a checkpoint every N epochs (the last epoch is always written).
_C.TRAIN.CHECKPOINT_FREQ = 1
# Mixed precision (torch.autocast) of training, feature extraction and explanation: "off"
# (float32), "bf16" (bfloat16, CPU or CUDA, no loss scaling) or "fp16" (float16 with a dynamic
# loss scaler, CUDA only). Losses, similarity weights and the attention maps' alpha and weighted
# sum stay float32.
_C.TRAIN.AMP = "off"
# Store the model's weights and the input images in channels_last memory format (faster
# convolutions on recent GPUs, notably with AMP; often slower on the CPU). Same results up to
# floating-point rounding, except that dropout draws its mask in memory order, so the masks
# (not their distribution) differ.
_C.TRAIN.CHANNELS_LAST = False
# Run training and evaluation with torch's deterministic algorithms on the CPU, so that the same
# seed gives the same run (without it, some CPU kernels of the similarity-mining step accumulate in
# a thread-dependent order and two same-seed PCB+SAM runs drift apart; about 5% slower per
# PCB+SAM step on the CPU). Not applied on CUDA (there it needs CUBLAS_WORKSPACE_CONFIG set first).
_C.TRAIN.DETERMINISTIC = True

# ---------------------------------------------------------------------------------------------
# Distributed training, one process per GPU, started with torchrun (which sets WORLD_SIZE, RANK
# and LOCAL_RANK). With W processes each one loads SAMPLER.BATCH_SIZE_TRAIN / W images per step,
# so the global batch stays SAMPLER.BATCH_SIZE_TRAIN; see reid/engine/distributed.py.
_C.DIST = CN()
# Process-group backend: "auto" (nccl on GPUs, gloo on the CPU), "nccl" or "gloo".
_C.DIST.BACKEND = "auto"
# Minutes a collective (e.g. the barrier while rank 0 evaluates) may wait before failing.
_C.DIST.TIMEOUT_MIN = 60
# Passes over the training identities per epoch with the distributed identity sampler (each
# identity once per pass, K images each). 1 makes an epoch shorter than torchreid's
# RandomIdentitySampler epoch by about images-per-identity / K; the training log prints the
# value that matches it (to keep OPTIM.MAX_EPOCH and OPTIM.STEPSIZE meaning the same).
_C.DIST.ID_PASSES = 1

# ---------------------------------------------------------------------------------------------
# What may differ from a checkpoint's config (the checkpoint stores it under "config"; see
# config_differences and model_differences below, and docs/configuration.md).
#
# `reid train --resume`: the checkpoint's config is the run's config. These keys may change (each
# change is logged), because they change neither the model nor the optimisation state (weights,
# optimiser and schedule state, what is trained on and how): where the run reads, writes and
# runs, how often it logs, evaluates and checkpoints, how it evaluates, and how long it runs
# (OPTIM.MAX_EPOCH, except with the cosine schedule, which anneals over the first MAX_EPOCH and
# keeps that length in its restored state). MODEL.PRETRAINED(_PATH) only choose the initial
# weights, which the checkpoint replaces. A name without a dot stands for its whole group. Every
# other differing key is refused, with the list of differences.
RESUME_SAFE_KEYS = (
    "OUTPUT_DIR", "DEVICE", "NUM_THREADS",
    "DATA.ROOT", "DATA.TARGETS", "DATA.WORKERS", "DATA.ON_BAD_IMAGE",
    "SAMPLER.BATCH_SIZE_TEST",
    "MODEL.PRETRAINED", "MODEL.PRETRAINED_PATH",
    "AVSL.EVAL_CHUNK_SIZE",
    "OPTIM.MAX_EPOCH",
    "TEST",
    "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "TRAIN.CHANNELS_LAST",
    "DIST.BACKEND", "DIST.TIMEOUT_MIN",
)
# `reid test`, `explain`, `eval-explanations` and `export` with --weights: the model keys of the
# model's recipe (reid/builders.py, ModelRecipe.model_keys: the keys its weights depend on) and
# these input keys (the images the weights were trained on) must equal the checkpoint's; every
# other difference (evaluation, data, output, MODEL.TEST_FEATURE, ...) is allowed and logged.
WEIGHTS_INPUT_KEYS = ("DATA.HEIGHT", "DATA.WIDTH", "DATA.NORM_MEAN", "DATA.NORM_STD")


def get_default_config() -> CN:
    """Returns a fresh, unfrozen copy of the defaults."""
    return _C.clone()


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, CN):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_key_error(key: str, cfg: CN, source: str) -> ConfigError:
    valid = _all_keys(cfg)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _lookup(cfg: CN, key: str, source: str) -> tuple[CN, str]:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, CN):
            raise _unknown_key_error(key, cfg, source)
        node = child
    if parts[-1] not in node:
        raise _unknown_key_error(key, cfg, source)
    return node, parts[-1]


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Converts ``value`` to the type of ``default`` where that is unambiguous."""
    if isinstance(default, CN):
        raise ConfigError(f"'{key}' in {source} is a section, not a value")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"'{key}' in {source} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' in {source} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"'{key}' in {source} must be a number, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"'{key}' in {source} must be a list, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' in {source} must be a string, got {value!r}")
    return value


def _flatten(mapping: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _set(cfg: CN, key: str, value: Any, source: str) -> None:
    node, leaf = _lookup(cfg, key, source)
    node[leaf] = _coerce(value, node[leaf], key, source)


def merge_from_file(cfg: CN, path: str) -> None:
    """Merges a YAML file into ``cfg``; unknown keys raise :class:`ConfigError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    for key, value in _flatten(data):
        _set(cfg, key, value, path)


def _parse_literal(text: str) -> Any:
    """Parses a command-line value: Python/YAML literal where possible, else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge_from_list(cfg: CN, opts: Sequence[str]) -> None:
    """Merges ``KEY VALUE`` pairs from the command line into ``cfg``."""
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    for key, text in zip(opts[0::2], opts[1::2]):
        node, leaf = _lookup(cfg, key, "the command line")
        value = _parse_literal(text)
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text
        node[leaf] = _coerce(value, node[leaf], key, "the command line")


def load_config(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Builds the frozen config: defaults, then ``config_file``, then ``opts``.

    Args:
        config_file: YAML file of overrides, or None.
        opts: flat ``[KEY, VALUE, KEY, VALUE, ...]`` command-line overrides.

    Raises:
        ConfigError: unknown key (naming the closest valid key), wrong type or bad value.
    """
    cfg = get_default_config()
    if config_file:
        merge_from_file(cfg, config_file)
    merge_from_list(cfg, opts)
    validate(cfg)
    cfg.freeze()
    return cfg


def config_to_dict(cfg: CN) -> dict:
    """Plain nested dict of ``cfg`` (for metrics.json and checkpoints)."""
    return {k: config_to_dict(v) if isinstance(v, CN) else v for k, v in cfg.items()}


class _Absent:
    """The value of a key that one of two compared configs does not have."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


NOT_IN_CHECKPOINT = _Absent("(not in the checkpoint's config)")
NO_LONGER_A_KEY = _Absent("(no longer a config key)")


@dataclass(frozen=True)
class Difference:
    """One key whose value differs between a checkpoint's config (``old``) and the run's (``new``);
    ``str()`` gives ``KEY old -> new`` (and why, when there is a note)."""

    key: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.key} {self.old!r} -> {self.new!r}"
        return f"{text} ({self.note})" if self.note else text


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _all_differences(saved: dict, cfg: CN) -> list[Difference]:
    """Every key whose value differs between ``saved`` (a checkpoint's plain config dict) and
    ``cfg``, sorted by key; a key only one of them has is a difference too."""
    old = {key: _plain(value) for key, value in _flatten(saved)}
    new = {key: _plain(value) for key, value in _flatten(config_to_dict(cfg))}
    differences = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, NOT_IN_CHECKPOINT), new.get(key, NO_LONGER_A_KEY)
        if before != after:
            differences.append(Difference(key, before, after))
    return differences


def _matches(key: str, names: Iterable[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def config_differences(saved: dict, cfg: CN) -> tuple[list[Difference], list[Difference]]:
    """``(refused, allowed)``: how ``cfg`` differs from a checkpoint's config ``saved`` when a run
    resumes from it (``reid train --resume``).

    Allowed: the keys of :data:`RESUME_SAFE_KEYS` (``OPTIM.MAX_EPOCH`` not with the cosine
    schedule), and keys that only one of the two configs has (a key added or removed since the
    checkpoint was written: nothing to compare). Refused: every other difference, as it changes the
    model or the optimisation state.
    """
    refused, allowed = [], []
    for difference in _all_differences(saved, cfg):
        key = difference.key
        absent = isinstance(difference.old, _Absent) or isinstance(difference.new, _Absent)
        if key == "OPTIM.MAX_EPOCH" and cfg.OPTIM.SCHEDULER == "cosine":
            refused.append(Difference(
                key, difference.old, difference.new,
                "the cosine schedule anneals over OPTIM.MAX_EPOCH epochs, and the restored schedule keeps "
                "the checkpoint's length",
            ))
        elif absent or _matches(key, RESUME_SAFE_KEYS):
            allowed.append(difference)
        else:
            refused.append(difference)
    return refused, allowed


def model_differences(
    saved: dict, cfg: CN, model_keys: Iterable[str]
) -> tuple[list[Difference], list[Difference]]:
    """``(refused, allowed)``: how ``cfg`` differs from a checkpoint's config ``saved`` when its
    weights are loaded into the configured model (``reid test``, ``explain``,
    ``eval-explanations``, ``export``).

    Refused: a key of ``model_keys`` (the model recipe's, see ``reid.builders.ModelRecipe``) or
    of :data:`WEIGHTS_INPUT_KEYS` that both configs have with different values. Allowed: every
    other difference.
    """
    keys = {*model_keys, *WEIGHTS_INPUT_KEYS}
    refused, allowed = [], []
    for difference in _all_differences(saved, cfg):
        absent = isinstance(difference.old, _Absent) or isinstance(difference.new, _Absent)
        (refused if difference.key in keys and not absent else allowed).append(difference)
    return refused, allowed
