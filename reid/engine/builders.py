"""Builders from the config: the only place in the library that reads it.

Tools call these; everything they build takes plain keyword arguments.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch import nn
from torchreid.reid.data import ImageDataManager
from yacs.config import CfgNode

import reid.data  # noqa: F401  (registers our datasets with torchreid)
from reid.data.base import register_variant
from reid.models import create_model

logger = logging.getLogger(__name__)


def setup_logging(output_dir: str, name: str) -> None:
    """Tools' logging: INFO to the console and to ``output_dir/<name>.log``."""
    os.makedirs(output_dir, exist_ok=True)
    handlers = [logging.StreamHandler(), logging.FileHandler(os.path.join(output_dir, f"{name}.log"))]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers, force=True,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE is {name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_options(cfg: CfgNode, name: str) -> dict:
    """Keyword arguments our dataset ``name`` takes from the config."""
    if name == "synthetic":
        syn = cfg.DATA.SYNTHETIC
        return {
            "num_ids": syn.NUM_IDS,
            "num_cams": syn.NUM_CAMS,
            "images_per_id": syn.IMAGES_PER_ID,
            "height": syn.IMG_HEIGHT,
            "width": syn.IMG_WIDTH,
            "seed": syn.SEED,
        }
    if name.startswith(("cuhk03_np", "dukemtmc")):
        return {"on_bad_image": cfg.DATA.ON_BAD_IMAGE}
    return {}


def dataset_names(cfg: CfgNode, names: list[str]) -> list[str]:
    """torchreid dataset names with the config's options bound (see ``register_variant``)."""
    return [register_variant(name, dataset_options(cfg, name)) for name in names]


def check_data_root(root: str) -> None:
    """Fails with the path when the data root cannot be used."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"DATA.ROOT is not a folder: {root}")


def build_datamanager(cfg: CfgNode, device: torch.device) -> ImageDataManager:
    """torchreid's ``ImageDataManager`` over the configured sources and targets."""
    check_data_root(cfg.DATA.ROOT)
    sources = dataset_names(cfg, list(cfg.DATA.SOURCES))
    targets = dataset_names(cfg, list(cfg.DATA.TARGETS or cfg.DATA.SOURCES))
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


def build_model(cfg: CfgNode, num_classes: int) -> nn.Module:
    """The configured model (see ``reid.models``)."""
    if cfg.MODEL.NAME == "avsl":
        return create_model(
            "avsl",
            num_classes=num_classes,
            backbone=cfg.MODEL.BACKBONE,
            levels=tuple(cfg.AVSL.LEVELS),
            embed_dim=cfg.AVSL.EMBED_DIM,
            topk=cfg.AVSL.TOPK,
            momentum=cfg.AVSL.MOMENTUM,
            last_stride=cfg.MODEL.LAST_STRIDE,
            proxies=cfg.AVSL.LOSS == "proxy_anchor",
            pretrained=cfg.MODEL.PRETRAINED,
            pretrained_path=cfg.MODEL.PRETRAINED_PATH,
        )
    return create_model(
        cfg.MODEL.NAME,
        num_classes=num_classes,
        backbone=cfg.MODEL.BACKBONE,
        num_stripes=cfg.MODEL.NUM_STRIPES,
        reduced_dim=cfg.MODEL.REDUCED_DIM,
        dropout=cfg.MODEL.DROPOUT,
        last_stride=cfg.MODEL.LAST_STRIDE,
        test_feature=cfg.MODEL.TEST_FEATURE,
        pretrained=cfg.MODEL.PRETRAINED,
        pretrained_path=cfg.MODEL.PRETRAINED_PATH,
    )


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam with ``OPTIM.TRUNK_LR_MULT`` x LR on the trunk's parameters."""
    trunk_ids = {id(p) for m in getattr(model, "trunk_modules", []) for p in m.parameters()}
    trunk = [p for p in model.parameters() if id(p) in trunk_ids]
    new = [p for p in model.parameters() if id(p) not in trunk_ids]
    lr = cfg.OPTIM.LR
    groups = [{"params": new, "lr": lr}]
    if trunk:
        groups.insert(0, {"params": trunk, "lr": lr * cfg.OPTIM.TRUNK_LR_MULT})
    if cfg.OPTIM.NAME == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.OPTIM.MOMENTUM, weight_decay=cfg.OPTIM.WEIGHT_DECAY,
            nesterov=cfg.OPTIM.MOMENTUM > 0,
        )
    return torch.optim.Adam(
        groups, lr=lr, betas=tuple(cfg.OPTIM.ADAM_BETAS), weight_decay=cfg.OPTIM.WEIGHT_DECAY
    )


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured learning-rate schedule, stepped once per epoch."""
    name = cfg.OPTIM.SCHEDULER
    if name == "single_step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.OPTIM.STEPSIZE[0], gamma=cfg.OPTIM.GAMMA)
    if name == "multi_step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.OPTIM.STEPSIZE), gamma=cfg.OPTIM.GAMMA
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.OPTIM.MAX_EPOCH, 1))


def build_engine(cfg: CfgNode, progress: bool = True):
    """Data manager, model, optimiser, scheduler and engine for ``cfg``."""
    from reid.config import config_to_dict

    from .base import EvalOptions
    from .pcb import PCBEngine

    if cfg.NUM_THREADS > 0:
        torch.set_num_threads(cfg.NUM_THREADS)
    device = resolve_device(cfg.DEVICE)
    seed_everything(cfg.SEED)
    datamanager = build_datamanager(cfg, device)
    model = build_model(cfg, datamanager.num_train_pids)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    eval_options = EvalOptions(
        dist_metric=cfg.TEST.DIST_METRIC,
        normalize_feature=cfg.TEST.NORMALIZE_FEATURE,
        ranks=tuple(cfg.TEST.RANKS),
        use_metric_cuhk03=cfg.TEST.METRIC_CUHK03,
        rerank=cfg.TEST.RERANK,
    )
    base = dict(eval_options=eval_options, config=config_to_dict(cfg), progress=progress)
    if cfg.MODEL.NAME == "avsl":
        from .avsl import AVSLEngine

        avsl = cfg.AVSL
        return AVSLEngine(
            datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **base,
            loss=avsl.LOSS, margin=avsl.MARGIN, level_weights=list(avsl.LEVEL_WEIGHTS),
            overall_weight=avsl.OVERALL_WEIGHT, proxy_alpha=avsl.PROXY_ALPHA,
            proxy_pos_margin=avsl.PROXY_POS_MARGIN, proxy_neg_margin=avsl.PROXY_NEG_MARGIN,
            chunk_size=avsl.EVAL_CHUNK_SIZE or None,
        )
    common = dict(
        **base,
        id_weight=cfg.LOSS.ID_WEIGHT, triplet_weight=cfg.LOSS.TRIPLET_WEIGHT,
        margin=cfg.LOSS.TRIPLET_MARGIN, label_smoothing=cfg.LOSS.LABEL_SMOOTH,
    )
    if cfg.SAM.ENABLED:
        from .sam import SAMEngine

        return SAMEngine(
            datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **common,
            form=cfg.SAM.FORM, gamma=cfg.SAM.GAMMA, omega=cfg.SAM.OMEGA, sigma=cfg.SAM.SIGMA,
            layer=cfg.SAM.LAYER, bn_mode=cfg.SAM.BN_MODE, second_order=cfg.SAM.SECOND_ORDER,
            max_tuples=cfg.SAM.MAX_TUPLES,
        )
    return PCBEngine(datamanager, model, optimizer, scheduler, device, cfg.OUTPUT_DIR, **common)
