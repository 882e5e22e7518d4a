"""PCB: part-based convolutional baseline on a torchvision ResNet.

Reference: Sun et al., "Beyond Part Models: Person Retrieval with Refined Part Pooling",
ECCV 2018, section 3.1; ``docs/method.md`` section 1.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .registry import register_model

logger = logging.getLogger(__name__)

_TRUNKS = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}


@dataclass
class PCBOutput:
    """What PCB returns in train mode.

    Attributes:
        logits: P tensors ``(B, num_classes)``, one per stripe.
        features: reduced stripe features ``(B, P, R)`` (input of the metric loss).
        feature_map: the ``layer4`` map ``(B, C, h, w)`` (explained by similarity attention).
    """

    logits: list[torch.Tensor]
    features: torch.Tensor
    feature_map: torch.Tensor


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
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    found = sorted(glob.glob(os.path.join(cache, f"{backbone}-*.pth")))
    return found[-1] if found else None


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


def _build_trunk(backbone: str, last_stride: int, pretrained: bool, path: str, padding_mode: str = "zeros") -> nn.Module:
    if backbone not in _TRUNKS:
        raise ValueError(f"unknown backbone '{backbone}'; choose one of {sorted(_TRUNKS)}")
    factory, _ = _TRUNKS[backbone]
    trunk = factory(weights=None)
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
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = trunk.load_state_dict(state, strict=False)
            unexpected = [k for k in unexpected if not k.startswith("fc.")]
            if unexpected or [k for k in missing if not k.startswith("fc.")]:
                raise ValueError(
                    f"{weights} does not hold {backbone} weights "
                    f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            logger.info("loaded ImageNet weights for %s from %s", backbone, weights)
    else:
        logger.info("%s trunk starts from random weights (pretrained disabled)", backbone)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    block = trunk.layer4[0]
    conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    conv.stride = (last_stride, last_stride)
    if block.downsample is not None:
        block.downsample[0].stride = (last_stride, last_stride)
    set_padding_mode(trunk, padding_mode)
    return trunk


class PCB(nn.Module):
    """Part-based convolutional baseline.

    Train mode returns :class:`PCBOutput`; eval mode returns the ``(B, D)`` test embedding.

    Args:
        num_classes: number of training identities.
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        num_stripes: P, the number of horizontal stripes.
        reduced_dim: R, channels of each reduced stripe feature.
        dropout: dropout probability before each stripe's reduction.
        last_stride: stride of ``layer4`` (1 as in PCB).
        test_feature: ``pooled`` (D = P x C) or ``reduced`` (D = P x R).
        pretrained: load ImageNet weights from local disk when available.
        pretrained_path: explicit weights file (see :func:`find_pretrained_weights`).
        padding_mode: padding of the trunk's convolutions (:func:`set_padding_mode`).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        num_stripes: int = 6,
        reduced_dim: int = 256,
        dropout: float = 0.5,
        last_stride: int = 1,
        test_feature: str = "pooled",
        pretrained: bool = True,
        pretrained_path: str = "",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if num_stripes < 1:
            raise ValueError(f"num_stripes must be positive, got {num_stripes}")
        if test_feature not in ("pooled", "reduced"):
            raise ValueError(f"test_feature must be 'pooled' or 'reduced', got {test_feature!r}")
        trunk = _build_trunk(backbone, last_stride, pretrained, pretrained_path, padding_mode)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        self.num_stripes = num_stripes
        self.test_feature = test_feature
        self.feature_dim = _TRUNKS[backbone][1]
        self.dropout = nn.Dropout(p=dropout)
        self.reductions = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(self.feature_dim, reduced_dim, 1, bias=False),
                nn.BatchNorm2d(reduced_dim),
                nn.ReLU(inplace=True),
            )
            for _ in range(num_stripes)
        )
        self.classifiers = nn.ModuleList(nn.Linear(reduced_dim, num_classes) for _ in range(num_stripes))
        for module in list(self.reductions.modules()) + list(self.classifiers.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)

    @property
    def trunk_modules(self) -> list[nn.Module]:
        """The (pretrained) ResNet stages, for a separate learning rate."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    @property
    def embedding_dim(self) -> int:
        """D, the size of the test embedding."""
        per_stripe = self.feature_dim if self.test_feature == "pooled" else self.reductions[0][0].out_channels
        return self.num_stripes * per_stripe

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, C, h, w)`` ``layer4`` map."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def pool_stripes(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, P, 1)`` stripe averages."""
        return F.adaptive_avg_pool2d(feature_map, (self.num_stripes, 1))

    def reduce_stripes(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, C, P, 1)`` pooled stripes -> ``(B, P, R)`` reduced stripe features."""
        pooled = self.dropout(pooled)
        stripes = [red(pooled[:, :, i : i + 1, :]).flatten(1) for i, red in enumerate(self.reductions)]
        return torch.stack(stripes, dim=1)

    def embed_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Test embedding from a ``layer4`` map: ``(B, C, h, w)`` -> ``(B, D)``.

        Each stripe vector is L2-normalised, then the P stripes are concatenated. A cheap function
        of the map, so explanations can take gradients through it without re-running the trunk.
        """
        pooled = self.pool_stripes(feature_map)
        if self.test_feature == "pooled":
            stripes = pooled.flatten(2).transpose(1, 2)  # (B, P, C)
        else:
            stripes = self.reduce_stripes(pooled)
        return F.normalize(stripes, dim=2).flatten(1)

    def forward(self, x: torch.Tensor) -> PCBOutput | torch.Tensor:
        """Train mode: :class:`PCBOutput`; eval mode: ``(B, D)`` embedding."""
        feature_map = self.forward_features(x)
        if not self.training:
            return self.embed_features(feature_map)
        features = self.reduce_stripes(self.pool_stripes(feature_map))
        logits = [cls(features[:, i]) for i, cls in enumerate(self.classifiers)]
        return PCBOutput(logits=logits, features=features, feature_map=feature_map)


@register_model("pcb")
def pcb(num_classes: int, **kwargs) -> PCB:
    """PCB with P stripes (see :class:`PCB` for the keyword arguments)."""
    return PCB(num_classes=num_classes, **kwargs)
