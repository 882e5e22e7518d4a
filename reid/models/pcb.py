"""PCB: part-based convolutional baseline on a torchvision ResNet.

Reference: Sun et al., "Beyond Part Models: Person Retrieval with Refined Part Pooling",
ECCV 2018, section 3.1; ``docs/method.md`` section 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Explainability, ReidModel
from .registry import register_model
from .trunks import build_trunk, stage_channels, trunk_stages

TEST_FEATURES = ("pooled", "reduced")


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


class PCB(ReidModel):
    """Part-based convolutional baseline.

    Train mode returns :class:`PCBOutput`; eval mode returns the ``(B, D)`` test embedding.

    Args:
        num_classes: number of training identities.
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v2``.
        num_stripes: P, the number of horizontal stripes.
        reduced_dim: R, channels of each reduced stripe feature.
        dropout: dropout probability before each stripe's reduction.
        last_stride: stride of ``layer4`` (1 as in PCB).
        test_feature: ``pooled`` (D = P x C) or ``reduced`` (D = P x R).
        pretrained: load ImageNet weights from local disk when available.
        pretrained_path: explicit weights file (see :func:`reid.models.trunks.find_pretrained_weights`).
        padding_mode: padding of the trunk's convolutions (:func:`reid.models.trunks.set_padding_mode`).
        margin_beta: None, or the initial boundary ``beta`` of Wu et al.'s margin loss
            (``LOSS.METRIC margin``, :mod:`reid.losses.margin`): the model then holds it as the
            learnable parameter ``margin_beta`` ``(1,)``, trained and checkpointed with the other
            weights. It does not enter the test embedding.

    Explainability: the head map is ``layer4`` (:meth:`forward_features`), the explained embedding
    the test embedding (:meth:`embed_features`), and the stripe classifiers give identity logits
    (:meth:`identity_logits`).
    """

    explainability = Explainability(classifier=True)

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
        margin_beta: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if num_stripes < 1:
            raise ValueError(f"num_stripes must be positive, got {num_stripes}")
        if test_feature not in TEST_FEATURES:
            raise ValueError(f"test_feature must be one of {TEST_FEATURES}, got {test_feature!r}")
        trunk = build_trunk(backbone, last_stride, pretrained, pretrained_path, padding_mode)
        self.stem, self.layer1, self.layer2, self.layer3, self.layer4 = trunk_stages(trunk)
        self.num_stripes = num_stripes
        self.test_feature = test_feature
        # the pooled stripes split exactly; the reduced ones pass a ReLU, which does not
        self.explainability = Explainability(
            classifier=True, decomposable_stripes=num_stripes if test_feature == "pooled" else 0
        )
        self.feature_dim = stage_channels(backbone)
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
        self.margin_beta: nn.Parameter | None = None
        if margin_beta is not None:
            self.margin_beta = nn.Parameter(torch.tensor([float(margin_beta)]))

    @property
    def trunk_modules(self) -> list[nn.Module]:
        """The (pretrained) trunk's stem and stages, for a separate learning rate."""
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

    def identity_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Identity logits from a ``layer4`` map: the sum of the P stripe classifiers' logits.

        Runs the stripe pooling, reduction and classifiers in the current mode (eval mode: running
        BatchNorm statistics, no dropout). Summing the stripe logits makes the predicted identity
        the one with the highest mean logit, as PCB's ID loss treats every stripe alike
        (``docs/method.md`` section 1).

        Args:
            feature_map: ``(B, C, h, w)`` ``layer4`` maps.

        Returns:
            ``(B, num_classes)`` logits.
        """
        stripes = self.reduce_stripes(self.pool_stripes(feature_map))
        return torch.stack([cls(stripes[:, i]) for i, cls in enumerate(self.classifiers)]).sum(dim=0)

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
