"""Builders from the config: the only place besides the commands that reads it.

The commands (``reid.cli``) call these; everything they build (datasets, models, optimisers,
engines) takes plain keyword arguments. :data:`MODEL_RECIPES` is the model registry of the
builders: the one place that knows which ``MODEL.NAME`` is built how, trains with what engine and
supports what (similarity mining, export); nothing else branches on the model's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchreid.reid.data import ImageDataManager
from yacs.config import CfgNode

import reid.data  # noqa: F401  (registers our datasets with torchreid)
from reid.data.base import register_variant
from reid.io import claim_folder
from reid.data.samplers import DistributedIdentitySampler
from reid.models import create_model

from reid.engine.distributed import DistributedContext
from reid.engine.optim import make_optimizer, make_scheduler

logger = logging.getLogger(__name__)


def setup_logging(output_dir: str, name: str, main_process: bool = True) -> None:
    """Tools' logging: INFO to the console and to ``output_dir/<name>.log``, after taking the
    folder's lock (:func:`reid.io.claim_folder`: a second command writing into the same folder
    is refused, naming the process that holds it).

    In a distributed job only rank 0 (``main_process``) logs that way; the other processes log
    warnings and errors to the console only, prefixed by their rank.
    """
    if not main_process:
        rank = os.environ.get("RANK", "?")
        logging.basicConfig(
            level=logging.WARNING, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s",
            handlers=[logging.StreamHandler()], force=True,
        )
        return
    took_over = claim_folder(output_dir, name.replace("_", "-"))  # one run per OUTPUT_DIR
    handlers = [logging.StreamHandler(), logging.FileHandler(os.path.join(output_dir, f"{name}.log"))]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers, force=True,
    )
    if took_over:
        logger.warning(took_over)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: in a distributed job, this process's rank on its node: ``auto`` and
            ``cuda`` then mean ``cuda:local_rank`` (one GPU per process).

    Raises:
        ConfigError: CUDA asked for but absent, fewer GPUs than processes on the node, or
            ``cuda:N`` in a distributed job (every process would use GPU N): the ``DEVICE`` key
            does not fit this machine, a one-line user error of the commands.
    """
    from reid.config import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"DEVICE is {name!r} but CUDA is not available on this machine")
    if local_rank is None or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            f"DEVICE {name!r} names one GPU, but a distributed job uses one GPU per process "
            "(cuda:LOCAL_RANK); set DEVICE auto or cuda"
        )
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): start at "
            "most one process per GPU (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_options(cfg: CfgNode, name: str) -> dict:
    """Keyword arguments dataset ``name`` takes from the config.

    Every dataset gets ``on_bad_image`` (``DATA.ON_BAD_IMAGE``): ours read their images when
    built, and ``register_variant`` wraps the others (torchreid's built-ins) so that they do too.
    The synthetic set also gets its size; a dataset folder of the user's (``folder``) its folder,
    layout and list files (``DATA.FOLDER``).
    """
    options = {"on_bad_image": cfg.DATA.ON_BAD_IMAGE}
    if name == "folder":
        folder = cfg.DATA.FOLDER
        options.update(
            folder=folder.ROOT,
            layout=folder.LAYOUT,
            train_list=folder.TRAIN_LIST,
            query_list=folder.QUERY_LIST,
            gallery_list=folder.GALLERY_LIST,
        )
    if name in ("synthetic", "synthetic_retrieval"):
        syn = cfg.DATA.SYNTHETIC
        options.update(
            num_ids=syn.NUM_IDS,
            num_cams=syn.NUM_CAMS,
            images_per_id=syn.IMAGES_PER_ID,
            height=syn.IMG_HEIGHT,
            width=syn.IMG_WIDTH,
            seed=syn.SEED,
        )
    return options


def check_dataset_names(names: list[str], key: str) -> None:
    """Fails unless every name of ``names`` is a dataset registered with torchreid: ours, torchreid's
    built-ins, or one that a module given with ``--plugin`` registered (imported before the config
    was loaded).

    Raises:
        ConfigError: naming ``key``, the unknown names and the registered ones.
    """
    from reid.config import ConfigError
    from reid.data.base import registered_image_datasets

    registry = registered_image_datasets()
    unknown = [name for name in names if name not in registry]
    if unknown:
        known = sorted(name for name in registry if "[" not in name)  # not the variants of register_variant
        raise ConfigError(
            f"{key}: unknown dataset(s) {unknown}; registered datasets: {known} (a module given with "
            "--plugin can register more)"
        )


def dataset_names(cfg: CfgNode, names: list[str], key: str = "DATA.SOURCES") -> list[str]:
    """torchreid dataset names with the config's options bound (see ``register_variant``).

    Raises:
        ConfigError: a name is not a registered dataset (:func:`check_dataset_names`; ``key`` is
            the config key the names come from).
    """
    check_dataset_names(names, key)
    return [register_variant(name, dataset_options(cfg, name)) for name in names]


def check_data_root(root: str) -> None:
    """Fails with the path when the data root cannot be used."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"DATA.ROOT is not a folder: {root}")


def check_training_batches(data_source: list, batch_size: int, num_instances: int, sampler: str) -> None:
    """Refuses a training set too small for the configured batches, naming the numbers that clash
    and what to change (torchreid's samplers would fail with a bare assertion, or train no step).

    ``RandomIdentitySampler`` draws ``P = BATCH_SIZE_TRAIN / NUM_INSTANCES`` identities per batch,
    so the set needs at least ``P`` identities; an identity with fewer than ``NUM_INSTANCES``
    images is drawn with repeats (logged). The other samplers drop the last incomplete batch, so
    the set needs at least ``BATCH_SIZE_TRAIN`` images.

    Raises:
        ConfigError: the clash, in one line.
    """
    from reid.config import ConfigError

    if sampler == "RandomIdentitySampler":
        counts: dict[int, int] = {}
        for item in data_source:
            counts[item[1]] = counts.get(item[1], 0) + 1
        per_batch = batch_size // num_instances
        if len(counts) < per_batch:
            raise ConfigError(
                f"the training set has {len(counts)} identities, but SAMPLER.BATCH_SIZE_TRAIN {batch_size} / "
                f"SAMPLER.NUM_INSTANCES {num_instances} = {per_batch} identities per batch: lower "
                f"SAMPLER.BATCH_SIZE_TRAIN to at most {len(counts) * num_instances} (a multiple of "
                f"SAMPLER.NUM_INSTANCES), or train on more identities"
            )
        few = sum(1 for n in counts.values() if n < num_instances)
        if few:
            logger.warning(
                "%d of %d training identities have fewer than SAMPLER.NUM_INSTANCES %d images: their images "
                "repeat within a batch", few, len(counts), num_instances,
            )
    elif len(data_source) < batch_size:
        raise ConfigError(
            f"the training set has {len(data_source)} images, fewer than SAMPLER.BATCH_SIZE_TRAIN {batch_size}: "
            f"no full batch, so no training step; lower SAMPLER.BATCH_SIZE_TRAIN to at most {len(data_source)}"
        )


@contextlib.contextmanager
def _checked_training_batches():
    """While torchreid's data manager is built: its training sampler is built only after
    :func:`check_training_batches` accepted the training set (which exists only then)."""
    import torchreid.reid.data.datamanager as torchreid_datamanager

    original = torchreid_datamanager.build_train_sampler

    def checked(data_source, train_sampler, batch_size=32, num_instances=4, **kwargs):
        check_training_batches(data_source, batch_size, num_instances, train_sampler)
        return original(data_source, train_sampler, batch_size=batch_size, num_instances=num_instances, **kwargs)

    torchreid_datamanager.build_train_sampler = checked
    try:
        yield
    finally:
        torchreid_datamanager.build_train_sampler = original


def build_datamanager(cfg: CfgNode, device: torch.device) -> ImageDataManager:
    """torchreid's ``ImageDataManager`` over the configured sources and targets; a training set
    too small for the batches is refused when it is built (:func:`check_training_batches`)."""
    check_data_root(cfg.DATA.ROOT)
    sources = dataset_names(cfg, list(cfg.DATA.SOURCES), "DATA.SOURCES")
    targets = dataset_names(
        cfg, list(cfg.DATA.TARGETS or cfg.DATA.SOURCES), "DATA.TARGETS" if cfg.DATA.TARGETS else "DATA.SOURCES"
    )
    with _checked_training_batches():
        return _image_data_manager(cfg, device, sources, targets)


def _image_data_manager(cfg: CfgNode, device: torch.device, sources: list[str], targets: list[str]) -> ImageDataManager:
    return ImageDataManager(
        root=cfg.DATA.ROOT,
        sources=sources,
        targets=targets,
        height=cfg.DATA.HEIGHT,
        width=cfg.DATA.WIDTH,
        transforms=list(cfg.DATA.TRANSFORMS),
        norm_mean=list(cfg.DATA.NORM_MEAN),
        norm_std=list(cfg.DATA.NORM_STD),
        use_gpu=device.type == "cuda",
        combineall=cfg.DATA.COMBINEALL,
        batch_size_train=cfg.SAMPLER.BATCH_SIZE_TRAIN,
        batch_size_test=cfg.SAMPLER.BATCH_SIZE_TEST,
        workers=cfg.DATA.WORKERS,
        num_instances=cfg.SAMPLER.NUM_INSTANCES,
        train_sampler=cfg.SAMPLER.TRAIN,
    )


def distributed_train_loader(
    cfg: CfgNode, datamanager: ImageDataManager, dist: DistributedContext
) -> torch.utils.data.DataLoader:
    """The training loader of one process of a distributed job.

    Each process loads ``SAMPLER.BATCH_SIZE_TRAIN / world_size`` images per step (the global
    batch stays ``SAMPLER.BATCH_SIZE_TRAIN``), drawn by :class:`DistributedIdentitySampler`
    (``RandomIdentitySampler``: P x K per process, each identity once per pass across the
    processes, ``DIST.ID_PASSES`` passes per epoch) or by torch's ``DistributedSampler``
    (``RandomSampler``), both seeded by ``SEED + epoch``. Same dataset, transforms and workers
    as the data manager's loader.
    """
    from reid.config import validate_world_size

    validate_world_size(cfg, dist.world_size)
    base = datamanager.train_loader
    batch_size = cfg.SAMPLER.BATCH_SIZE_TRAIN // dist.world_size
    dataset = base.dataset
    if cfg.SAMPLER.TRAIN == "RandomIdentitySampler":
        sampler = DistributedIdentitySampler(
            dataset.train, batch_size=batch_size, num_instances=cfg.SAMPLER.NUM_INSTANCES,
            num_replicas=dist.world_size, rank=dist.rank, seed=cfg.SEED, passes=cfg.DIST.ID_PASSES,
        )
        single = len(base)  # steps of torchreid's RandomIdentitySampler over the global batch
        logger.info(
            "distributed identity sampler: %d steps per epoch (DIST.ID_PASSES %d); one process with "
            "torchreid's RandomIdentitySampler takes %d, which DIST.ID_PASSES %d about matches",
            len(sampler) // batch_size, cfg.DIST.ID_PASSES, single,
            max(1, round(single / sampler.batches_per_pass)),
        )
    else:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.SEED,
            drop_last=True,
        )
    logger.info(
        "distributed training: %d processes x %d images per step (%s)",
        dist.world_size, batch_size, type(sampler).__name__,
    )
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, shuffle=False, num_workers=base.num_workers,
        pin_memory=base.pin_memory, drop_last=True,
    )


# -- the model registry of the builders: how the config builds each MODEL.NAME ---------------------


@dataclass(frozen=True)
class ModelRecipe:
    """How the config builds one ``MODEL.NAME``: the only place that knows which model is which.

    Attributes:
        model_options: config -> keyword arguments of the registered model factory
            (:func:`reid.models.create_model`) besides ``num_classes``.
        engine: ``(cfg, datamanager, model, optimizer, scheduler, device, base)`` -> the training
            and evaluation engine; ``base`` holds the keyword arguments every engine takes.
        num_classes_in_state: a model state dict -> the number of training identities it was
            built for (raises ValueError naming what is missing when the state is not this model's).
        similarity_mining: the model trains with ``SAM.ENABLED`` (similarity mining needs an
            embedding whose head map it can explain).
        export_refusal: why the model cannot be exported as an embedding network (empty: it can).
        check_config: config -> None; raises ConfigError for values the model cannot work with
            (the input size against its feature maps, ...); called by :func:`model_recipe`.
        model_keys: the config keys the model's weights depend on (its architecture and what its
            weights compute); weights are loaded only under a config whose values of these keys
            (and of ``reid.config.WEIGHTS_INPUT_KEYS``) equal those of the checkpoint's config.
        missing_weights: config -> why ``reid train`` cannot start from the ImageNet (or other
            initial) weights the config asks for, with how to get them; None when nothing is missing.
        fit_state: ``(model, state)`` -> None; adapts the model to weights about to be loaded
            strictly where they may legitimately differ (a torchreid checkpoint's classifier sized
            for its training identities).
        describe: config -> the model in a few words, for messages about weights that do not fit.
        weights_of: a state dict that does not fit -> the model it is of, in the words of
            ``describe`` (empty when unknown).
    """

    model_options: Callable[[CfgNode], dict]
    engine: Callable[..., Any]
    num_classes_in_state: Callable[[dict], int]
    similarity_mining: bool = False
    export_refusal: str = ""
    check_config: Callable[[CfgNode], None] = lambda cfg: None
    model_keys: tuple[str, ...] = ("MODEL.NAME",)
    missing_weights: Callable[[CfgNode], str | None] = lambda cfg: _trunk_weights_missing(cfg)
    fit_state: Callable[[nn.Module, dict], None] = lambda model, state: None
    describe: Callable[[CfgNode], str] = lambda cfg: f"MODEL.NAME {cfg.MODEL.NAME}, MODEL.BACKBONE {cfg.MODEL.BACKBONE}"
    weights_of: Callable[[dict], str] = lambda state: ""


def _trunk_weights_missing(cfg: CfgNode) -> str | None:
    from reid.models.trunks import missing_weights_message

    return missing_weights_message(cfg.MODEL.BACKBONE, cfg.MODEL.PRETRAINED_PATH)


def _check_padding(cfg: CfgNode, stage: str) -> tuple[int, int]:
    """The trunk's map at ``stage`` (the deepest one the model runs) for the configured input;
    ConfigError when reflect padding cannot pad it (a padded map must be larger than the padding)."""
    from reid.config import ConfigError
    from reid.models.trunks import feature_map_size

    rows, cols = feature_map_size(cfg.DATA.HEIGHT, cfg.DATA.WIDTH, cfg.MODEL.LAST_STRIDE, stage)
    if cfg.MODEL.PADDING_MODE == "reflect" and min(rows, cols) < 2:
        raise ConfigError(
            f"MODEL.PADDING_MODE reflect needs a {stage} map of at least 2 x 2, but DATA.HEIGHT "
            f"{cfg.DATA.HEIGHT} x DATA.WIDTH {cfg.DATA.WIDTH} with MODEL.LAST_STRIDE {cfg.MODEL.LAST_STRIDE} gives "
            f"{rows} x {cols}; use a larger input, MODEL.LAST_STRIDE 1 or another padding mode"
        )
    return rows, cols


def _pcb_options(cfg: CfgNode) -> dict:
    return dict(
        backbone=cfg.MODEL.BACKBONE, num_stripes=cfg.MODEL.NUM_STRIPES, reduced_dim=cfg.MODEL.REDUCED_DIM,
        dropout=cfg.MODEL.DROPOUT, last_stride=cfg.MODEL.LAST_STRIDE, test_feature=cfg.MODEL.TEST_FEATURE,
        pretrained=cfg.MODEL.PRETRAINED, pretrained_path=cfg.MODEL.PRETRAINED_PATH,
        padding_mode=cfg.MODEL.PADDING_MODE,
        margin_beta=cfg.LOSS.MARGIN_BETA if cfg.LOSS.METRIC == "margin" else None,
    )


def _fit_margin_beta(model: nn.Module, state: dict) -> None:
    """The margin loss's boundary (``margin_beta``) is in the model when the weights have it: it
    only trains (the test embedding does not use it), so a checkpoint trained with
    ``LOSS.METRIC margin`` loads under another ``LOSS.METRIC`` and the other way round."""
    if "margin_beta" in state and getattr(model, "margin_beta", None) is None:
        model.margin_beta = nn.Parameter(torch.zeros_like(state["margin_beta"]))
    elif "margin_beta" not in state and getattr(model, "margin_beta", None) is not None:
        model.margin_beta = None


def _pcb_check(cfg: CfgNode) -> None:
    from reid.config import ConfigError

    rows, _ = _check_padding(cfg, "layer4")
    if cfg.MODEL.NUM_STRIPES > rows:
        raise ConfigError(
            f"MODEL.NUM_STRIPES {cfg.MODEL.NUM_STRIPES} needs at least {cfg.MODEL.NUM_STRIPES} rows in the layer4 "
            f"map, which has {rows} (DATA.HEIGHT {cfg.DATA.HEIGHT}, MODEL.LAST_STRIDE {cfg.MODEL.LAST_STRIDE}: "
            f"ceil(HEIGHT / {16 * cfg.MODEL.LAST_STRIDE}) rows); the stripe pooling would repeat rows. Use at most "
            f"{rows} stripes or a taller input"
        )


def _pcb_engine(cfg: CfgNode, datamanager, model, optimizer, scheduler, device, base: dict):
    from reid.engine.pcb import PCBEngine

    common = dict(
        **base,
        id_weight=cfg.LOSS.ID_WEIGHT, triplet_weight=cfg.LOSS.TRIPLET_WEIGHT,
        margin=cfg.LOSS.TRIPLET_MARGIN, label_smoothing=cfg.LOSS.LABEL_SMOOTH, metric=cfg.LOSS.METRIC,
        margin_alpha=cfg.LOSS.MARGIN_ALPHA,
    )
    if not cfg.SAM.ENABLED:
        return PCBEngine(datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **common)
    from reid.config import ConfigError
    from reid.engine.sam import SAMEngine

    try:
        return SAMEngine(
            datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **common,
            form=cfg.SAM.FORM, gamma=cfg.SAM.GAMMA, omega=cfg.SAM.OMEGA, sigma=cfg.SAM.SIGMA,
            layer=cfg.SAM.LAYER, bn_mode=cfg.SAM.BN_MODE, second_order=cfg.SAM.SECOND_ORDER,
            max_tuples=cfg.SAM.MAX_TUPLES, map_gradient=cfg.SAM.MAP_GRADIENT,
            objective=cfg.SAM.OBJECTIVE, mining_start_epoch=cfg.SAM.START_EPOCH,
        )
    except ValueError as exc:  # SAM.LAYER names no module of the model (checked once it exists)
        raise ConfigError(f"SAM.LAYER {cfg.SAM.LAYER!r}: {exc}") from exc


def _pcb_classes(state: dict) -> int:
    key = "classifiers.0.weight"
    if key not in state:
        raise ValueError(f"the weights hold no {key!r}: not a PCB checkpoint (keys such as {sorted(state)[:3]})")
    return int(state[key].shape[0])


def _avsl_options(cfg: CfgNode) -> dict:
    return dict(
        backbone=cfg.MODEL.BACKBONE, levels=tuple(cfg.AVSL.LEVELS), embed_dim=cfg.AVSL.EMBED_DIM,
        topk=cfg.AVSL.TOPK, momentum=cfg.AVSL.MOMENTUM, last_stride=cfg.MODEL.LAST_STRIDE,
        proxies=cfg.AVSL.LOSS == "proxy_anchor",
        margin_beta=cfg.LOSS.MARGIN_BETA if cfg.AVSL.LOSS == "margin" else None, pretrained=cfg.MODEL.PRETRAINED,
        pretrained_path=cfg.MODEL.PRETRAINED_PATH, padding_mode=cfg.MODEL.PADDING_MODE,
    )


def _avsl_check(cfg: CfgNode) -> None:
    _check_padding(cfg, cfg.AVSL.LEVELS[-1])  # the trunk runs up to the top level only


def _avsl_engine(cfg: CfgNode, datamanager, model, optimizer, scheduler, device, base: dict):
    from reid.engine.avsl import AVSLEngine

    avsl = cfg.AVSL
    return AVSLEngine(
        datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **base,
        loss=avsl.LOSS, margin=avsl.MARGIN, level_weights=list(avsl.LEVEL_WEIGHTS),
        overall_weight=avsl.OVERALL_WEIGHT, proxy_alpha=avsl.PROXY_ALPHA,
        proxy_pos_margin=avsl.PROXY_POS_MARGIN, proxy_neg_margin=avsl.PROXY_NEG_MARGIN,
        margin_alpha=cfg.LOSS.MARGIN_ALPHA, chunk_size=avsl.EVAL_CHUNK_SIZE or None,
    )


def _avsl_classes(state: dict) -> int:
    proxies = state.get("proxies.0")
    return int(proxies.shape[0]) if proxies is not None else 1


def _torchreid_options(cfg: CfgNode) -> dict:
    return dict(
        arch=cfg.MODEL.TORCHREID.ARCH, pretrained=cfg.MODEL.PRETRAINED, pretrained_path=cfg.MODEL.PRETRAINED_PATH,
        test_normalized=bool(cfg.TEST.NORMALIZE_FEATURE or cfg.TEST.DIST_METRIC == "cosine"),
    )


def _torchreid_check(cfg: CfgNode) -> None:
    from reid.config import ConfigError
    from reid.models.torchreid_net import check_arch

    try:
        check_arch(cfg.MODEL.TORCHREID.ARCH, cfg.DATA.HEIGHT, cfg.DATA.WIDTH)
    except ValueError as exc:
        raise ConfigError(f"MODEL.TORCHREID.ARCH: {exc}") from exc
    if cfg.LOSS.METRIC == "margin":
        raise ConfigError(
            "LOSS.METRIC margin learns its boundary beta as a parameter of the model, which a torchreid "
            "network does not hold: use MODEL.NAME pcb, or another LOSS.METRIC"
        )


def _torchreid_weights_missing(cfg: CfgNode) -> str | None:
    path = cfg.MODEL.PRETRAINED_PATH
    if path and os.path.isfile(path):
        return None
    if path:
        return f"MODEL.PRETRAINED_PATH {path} does not exist"
    return (
        f"MODEL.NAME torchreid starts from MODEL.PRETRAINED_PATH (ImageNet or re-id weights of "
        f"{cfg.MODEL.TORCHREID.ARCH}, loaded as torchreid's load_pretrained_weights does; nothing is downloaded): "
        "set it, or set MODEL.PRETRAINED False to train from torchreid's random initialisation"
    )


def _torchreid_classes(state: dict) -> int:
    from reid.models.torchreid_net import classifier_classes

    return classifier_classes(state)


def _torchreid_weights_of(state: dict) -> str:
    from reid.models.torchreid_net import archs_of_state

    archs = archs_of_state(state)
    return f"MODEL.TORCHREID.ARCH {' or '.join(archs)}" if archs else ""


def _torchreid_fit_state(model: nn.Module, state: dict) -> None:
    from reid.models.torchreid_net import classifier_classes, resize_classifier

    try:
        classes = classifier_classes(state)
    except ValueError:
        return  # the strict load names what is missing
    if classes != model.classifier_classes():
        resize_classifier(model, classes)


# The model keys of every trunk: the architecture and the padding its weights were trained with.
_TRUNK_KEYS = ("MODEL.NAME", "MODEL.BACKBONE", "MODEL.LAST_STRIDE", "MODEL.PADDING_MODE")

MODEL_RECIPES: dict[str, ModelRecipe] = {
    "pcb": ModelRecipe(
        _pcb_options, _pcb_engine, _pcb_classes, similarity_mining=True, check_config=_pcb_check,
        model_keys=(*_TRUNK_KEYS, "MODEL.NUM_STRIPES", "MODEL.REDUCED_DIM"), fit_state=_fit_margin_beta,
    ),
    "avsl": ModelRecipe(
        _avsl_options, _avsl_engine, _avsl_classes, check_config=_avsl_check,
        # AVSL.LOSS: proxy_anchor adds the proxies to the weights, margin the boundaries margin_beta
        model_keys=(*_TRUNK_KEYS, "AVSL.LEVELS", "AVSL.EMBED_DIM", "AVSL.TOPK", "AVSL.LOSS"),
        export_refusal=(
            "its test distance d_hat is computed by the model's similarity graph from pairs of images "
            "(reliabilities and top-down rectification), not by a distance between per-image embeddings, "
            "so an embedding network alone cannot rank a gallery"
        ),
    ),
    "torchreid": ModelRecipe(
        _torchreid_options, _pcb_engine, _torchreid_classes,
        similarity_mining=True, check_config=_torchreid_check, model_keys=("MODEL.NAME", "MODEL.TORCHREID.ARCH"),
        missing_weights=_torchreid_weights_missing, fit_state=_torchreid_fit_state,
        describe=lambda cfg: f"MODEL.NAME torchreid, MODEL.TORCHREID.ARCH {cfg.MODEL.TORCHREID.ARCH}",
        weights_of=_torchreid_weights_of,
    ),
}


def model_recipe(cfg: CfgNode) -> ModelRecipe:
    """The recipe of ``MODEL.NAME``; ConfigError when the config asks what the model cannot do."""
    from reid.config import ConfigError

    name = cfg.MODEL.NAME
    if name not in MODEL_RECIPES:
        raise ConfigError(f"MODEL.NAME must be one of {sorted(MODEL_RECIPES)}, got {name!r}")
    recipe = MODEL_RECIPES[name]
    if cfg.SAM.ENABLED and not recipe.similarity_mining:
        trains = sorted(n for n, r in MODEL_RECIPES.items() if r.similarity_mining)
        raise ConfigError(f"SAM.ENABLED needs MODEL.NAME {' or '.join(trains)}, got {name!r}")
    recipe.check_config(cfg)
    return recipe


def require_pretrained_weights(cfg: CfgNode) -> None:
    """Refuses (ConfigError, one line saying how to get them) a training run whose config asks for
    ImageNet weights (``MODEL.PRETRAINED`` true) that are not on disk: nothing trains from random
    weights where pretrained ones were expected. ``MODEL.PRETRAINED False`` is the explicit way to
    train from scratch. A resumed run takes every weight from its checkpoint and is not checked."""
    from reid.config import ConfigError

    if not cfg.MODEL.PRETRAINED:
        return
    message = model_recipe(cfg).missing_weights(cfg)
    if message is not None:
        raise ConfigError(message)


def build_model(cfg: CfgNode, num_classes: int) -> nn.Module:
    """The configured model (see ``reid.models``)."""
    return create_model(cfg.MODEL.NAME, num_classes=num_classes, **model_recipe(cfg).model_options(cfg))


def build_model_for_state(cfg: CfgNode, state: dict) -> nn.Module:
    """The configured model sized for the weights ``state`` (identities), with them loaded strictly,
    in eval mode, on the CPU; no ImageNet weights are looked up (the state provides every weight).

    Raises:
        ValueError: the state is not one of this model's (names what is missing).
    """
    recipe = model_recipe(cfg)
    options = {**recipe.model_options(cfg), "pretrained": False}
    model = create_model(cfg.MODEL.NAME, num_classes=recipe.num_classes_in_state(state), **options)
    recipe.fit_state(model, state)
    load_state_strict(model, state)
    return model.eval()


def load_state_strict(model: nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` (strict); ValueError with torch's reasons (missing and
    unexpected keys, shape mismatches) shortened to a line when the state does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip()[:300] for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"the weights do not fit {type(model).__name__}: {' | '.join(lines[:4])}") from exc


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The ``OPTIM`` optimiser, ``OPTIM.TRUNK_LR_MULT`` x LR on the trunk (:func:`reid.engine.optim.make_optimizer`)."""
    o = cfg.OPTIM
    return make_optimizer(
        model, o.NAME, o.LR, trunk_lr_mult=o.TRUNK_LR_MULT, weight_decay=o.WEIGHT_DECAY, momentum=o.MOMENTUM,
        adam_betas=o.ADAM_BETAS,
    )


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``OPTIM`` learning-rate schedule, stepped once per epoch (:func:`reid.engine.optim.make_scheduler`)."""
    o = cfg.OPTIM
    return make_scheduler(optimizer, o.SCHEDULER, stepsize=o.STEPSIZE, gamma=o.GAMMA, max_epoch=o.MAX_EPOCH)


def build_engine(cfg: CfgNode, progress: bool = True, dist: DistributedContext | None = None):
    """Data manager, model, optimiser, scheduler and engine for ``cfg``.

    Args:
        cfg: the frozen config.
        progress: show progress bars (rank 0 only in a distributed job).
        dist: this process's place in a ``torchrun`` job (its process group already joined,
            see :func:`reid.engine.distributed.init_distributed`); None: one process.
    """
    from reid.config import config_to_dict

    from reid.engine.base import EvalOptions

    dist = dist or DistributedContext()
    if cfg.NUM_THREADS > 0:
        torch.set_num_threads(cfg.NUM_THREADS)
    device = resolve_device(cfg.DEVICE, dist.local_rank if dist.is_distributed else None)
    seed_everything(cfg.SEED)
    datamanager = build_datamanager(cfg, device)
    model = build_model(cfg, datamanager.num_train_pids)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    if dist.is_distributed:
        datamanager.train_loader = distributed_train_loader(cfg, datamanager, dist)
        # Same initial weights everywhere (seeded above), then one random stream per process
        # (augmentation, dropout).
        seed_everything(cfg.SEED + dist.rank)
        progress = progress and dist.is_main
    eval_options = EvalOptions(
        dist_metric=cfg.TEST.DIST_METRIC,
        normalize_feature=cfg.TEST.NORMALIZE_FEATURE,
        ranks=tuple(cfg.TEST.RANKS),
        use_metric_cuhk03=cfg.TEST.METRIC_CUHK03,
        rerank=cfg.TEST.RERANK,
        max_matrix_mb=cfg.TEST.MAX_MATRIX_MB,
        recall_ks=tuple(cfg.TEST.RECALL_KS),
    )
    base = dict(
        eval_options=eval_options, config=config_to_dict(cfg), progress=progress,
        amp=cfg.TRAIN.AMP, channels_last=cfg.TRAIN.CHANNELS_LAST, deterministic=cfg.TRAIN.DETERMINISTIC, dist=dist,
    )
    return model_recipe(cfg).engine(cfg, datamanager, model, optimizer, scheduler, device, base)
