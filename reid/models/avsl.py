"""AVSL: attributable visual similarity learning on a torchvision ResNet.

Embeddings are taken at several trunk stages (levels ``l = 1..L``, by default ``layer2``,
``layer3``, ``layer4``). Two images are compared node by node, ``delta^l_i = (e^l_i - e'^l_i)^2``;
unreliable high-level nodes are rectified top-down by their most correlated lower-level nodes,
and the distance ``d_hat`` is the sum of the rectified top-level nodes. Because the rectification
is linear in the nodes, ``d_hat = sum_l sum_i lambda^l_i delta^l_i`` exactly (the attribution).

Reference: Zhang et al., "Attributable Visual Similarity Learning", CVPR 2022, section 3;
``docs/method.md`` section 5.

Choices the paper leaves open (documented where they are made):

- the 1x1 convolutions have no bias, so a node CAM is exactly eq. 2 (``u_i = sum_j a_ij z_j``)
  and the spatial mean of a CAM is the (unnormalised) embedding of the average pooled map;
- the reliability statistic (eq. 5) is the standard deviation of the CAM shifted to a zero
  minimum and divided by its spatial mean (a distribution scaled to mean one, so ``eta`` is of
  order one whatever the map size; the authors' code L1-normalises and multiplies by 10);
- negative edges are clamped to zero before the top-k selection (eq. 7-8 need ``omega >= 0``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Explainability, ReidModel
from .registry import register_model
from .trunks import STAGES, build_trunk, check_backbone, stage_channels, trunk_stages

logger = logging.getLogger(__name__)

_EPS = 1e-12
# Default bound on the elements of one (queries, gallery, R) node tensor in pairwise_distance.
_CHUNK_ELEMENTS = 2**25


# -- pure functions of tensors -------------------------------------------------------------------


def pooled_embedding(feature_map: torch.Tensor, projection: nn.Conv2d) -> torch.Tensor:
    """Normalised embedding of one level: ``(B, C, h, w)`` map -> ``(B, R)`` unit vectors.

    Reference: AVSL paper, section 3.2 (pooling ``g^l``, projection ``h^l``, normalised ``e~^l``
    of eq. 1); average + max pooling as the authors' code.
    """
    pooled = F.adaptive_avg_pool2d(feature_map, 1) + F.adaptive_max_pool2d(feature_map, 1)
    return F.normalize(projection(pooled).flatten(1), dim=1)


def node_cams(feature_map: torch.Tensor, projection: nn.Conv2d) -> torch.Tensor:
    """Node CAMs: the projection applied to the detached map, ``(B, C, h, w)`` -> ``(B, R, h, w)``.

    Reference: AVSL paper, section 3.2, eq. 2 (``u_i = sum_j a_ij z_j``).
    """
    return projection(feature_map.detach())


def cam_spatial_std(cams: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each spatially normalised CAM: ``(B, R, h, w)`` -> ``(B, R)``.

    Each map is shifted to a zero minimum and divided by its spatial mean (a constant map gives
    0); the population standard deviation of the result is returned. Invariant to adding a
    constant to a map and to scaling it by a positive factor.

    Reference: AVSL paper, section 3.3, eq. 5 (``std(u_hat_i)``).
    """
    flat = cams.flatten(2)
    shifted = flat - flat.amin(dim=2, keepdim=True)
    normalised = shifted / shifted.mean(dim=2, keepdim=True).clamp_min(_EPS)
    return normalised.std(dim=2, correction=0)


def edge_estimate(low_cams: torch.Tensor, high_cams: torch.Tensor) -> torch.Tensor:
    """Batch estimate of the edges between a level and the level below.

    Both CAM sets are average-pooled to the common size ``min(h) x min(w)`` (in a ResNet the
    low level is pooled to the high level's size), L2-normalised over space, and
    ``omega_hat_ij = mean_b <u^l_i, u^(l-1)_j>``.

    Reference: AVSL paper, section 3.2, eq. 3.

    Args:
        low_cams: ``(B, R_low, h_low, w_low)`` CAMs of level ``l - 1``.
        high_cams: ``(B, R_high, h_high, w_high)`` CAMs of level ``l``.

    Returns:
        ``(R_high, R_low)``: row ``i`` holds the correlations of high node ``i``.
    """
    size = (min(low_cams.shape[-2], high_cams.shape[-2]), min(low_cams.shape[-1], high_cams.shape[-1]))
    low = low_cams if tuple(low_cams.shape[-2:]) == size else F.adaptive_avg_pool2d(low_cams, size)
    high = high_cams if tuple(high_cams.shape[-2:]) == size else F.adaptive_avg_pool2d(high_cams, size)
    low = F.normalize(low.flatten(2), dim=2)
    high = F.normalize(high.flatten(2), dim=2)
    return torch.einsum("bip,bjp->ij", high, low) / high.shape[0]


def topk_edge_weights(edges: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised edges ``W~``: each row keeps its ``k`` largest edges and sums to one.

    Negative edges are clamped to zero first; a row without a positive edge is all zeros.

    Reference: AVSL paper, section 3.3, eq. 7 (``I(delta_i)``) and eq. 8 (``omega~_ij``).

    Args:
        edges: ``(R_high, R_low)`` edges ``omega``.
        k: number of lower nodes kept per row, ``1 <= k <= R_low``.

    Returns:
        ``(R_high, R_low)`` non-negative weights, at most ``k`` non-zero per row.
    """
    if not 1 <= k <= edges.shape[1]:
        raise ValueError(f"k must be in [1, {edges.shape[1]}], got {k}")
    positive = edges.clamp_min(0.0)
    index = positive.topk(k, dim=1).indices
    kept = torch.zeros_like(positive).scatter(1, index, positive.gather(1, index))
    return kept / kept.sum(dim=1, keepdim=True).clamp_min(_EPS)


def reliability(
    cam_std1: torch.Tensor, cam_std2: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Node reliabilities ``p_i = sigmoid(a_i * eta_i + b_i)``, ``eta_i = std_i * std'_i``.

    Reference: AVSL paper, section 3.3, eq. 5-6.

    Args:
        cam_std1: ``(..., R)`` CAM statistics of the first images (see :func:`cam_spatial_std`).
        cam_std2: ``(..., R)`` of the second images (broadcastable with ``cam_std1``).
        scale: ``(R,)`` ``a``.
        bias: ``(R,)`` ``b``.

    Returns:
        ``(..., R)`` in ``(0, 1)``.
    """
    return torch.sigmoid(scale * (cam_std1 * cam_std2) + bias)


def rectify_step(
    rectified_low: torch.Tensor, nodes: torch.Tensor, reliabilities: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """One level of top-down rectification, ``delta_hat^l = P delta^l + (I - P) W~ delta_hat^(l-1)``.

    Reference: AVSL paper, section 3.3, eq. 8-9.

    Args:
        rectified_low: ``(..., R_low)`` rectified nodes of level ``l - 1``.
        nodes: ``(..., R)`` nodes ``delta^l``.
        reliabilities: ``(..., R)`` ``p^l``.
        weights: ``(R, R_low)`` ``W~^l``.

    Returns:
        ``(..., R)`` rectified nodes ``delta_hat^l``.
    """
    carried = rectified_low @ weights.t()
    return reliabilities * nodes + (1.0 - reliabilities) * carried


def rectify_levels(
    nodes: Sequence[torch.Tensor],
    reliabilities: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Top-down rectification through all levels: ``delta_hat^l`` for ``l = 1..L``, ``delta_hat^1 = delta^1``.

    Reference: AVSL paper, section 3.3, eq. 8-9; ``d_hat = rectify_levels(...)[-1].sum(-1)``.

    Args:
        nodes: L tensors ``(..., R)``, levels ``1..L`` bottom-up.
        reliabilities: L-1 tensors ``(..., R)``, ``p^l`` for levels ``2..L``.
        weights: L-1 tensors ``(R, R)``, ``W~^l`` for levels ``2..L``.

    Returns:
        L tensors ``(..., R)``, the rectified nodes of every level.
    """
    if not nodes or len(reliabilities) != len(nodes) - 1 or len(weights) != len(nodes) - 1:
        raise ValueError(
            f"expected L >= 1 nodes and L - 1 reliabilities and weights, got {len(nodes)}, "
            f"{len(reliabilities)} and {len(weights)}"
        )
    rectified = [nodes[0]]
    for delta, p, w in zip(nodes[1:], reliabilities, weights):
        rectified.append(rectify_step(rectified[-1], delta, p, w))
    return rectified


def rectify(
    nodes: Sequence[torch.Tensor],
    reliabilities: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The rectified top-level nodes ``delta_hat^L`` ``(..., R)`` (see :func:`rectify_levels`)."""
    return rectify_levels(nodes, reliabilities, weights)[-1]


def attribution_weights(
    nodes: Sequence[torch.Tensor],
    reliabilities: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """The weights ``lambda^l`` with ``d_hat = sum_l sum_i lambda^l_i delta^l_i`` exactly.

    Unrolling eq. 9 from the top: with ``g^L = 1``, ``lambda^l = g^l * p^l`` and
    ``g^(l-1) = (W~^l)^T (g^l * (1 - p^l))`` for ``l >= 2``, and ``lambda^1 = g^1``; i.e.
    ``lambda^l = 1^T (I - P^L) W~^L ... (I - P^(l+1)) W~^(l+1) P^l`` as in eq. 11. The weights
    do not depend on the node values.

    Reference: AVSL paper, section 3.4, eq. 11.

    Args:
        nodes: L tensors ``(..., R)``; only their shapes, dtypes and devices are used.
        reliabilities: L-1 tensors ``(..., R)``, ``p^l`` for levels ``2..L``.
        weights: L-1 tensors ``(R, R)``, ``W~^l`` for levels ``2..L``.

    Returns:
        L tensors ``(..., R)``, ``lambda^1..lambda^L``.
    """
    if not nodes or len(reliabilities) != len(nodes) - 1 or len(weights) != len(nodes) - 1:
        raise ValueError(
            f"expected L >= 1 nodes and L - 1 reliabilities and weights, got {len(nodes)}, "
            f"{len(reliabilities)} and {len(weights)}"
        )
    lambdas: list[torch.Tensor] = [nodes[0]] * len(nodes)
    incoming = torch.ones_like(nodes[-1])
    for level in range(len(nodes) - 1, 0, -1):
        p = reliabilities[level - 1]
        lambdas[level] = incoming * p
        incoming = (incoming * (1.0 - p)) @ weights[level - 1]
    lambdas[0] = incoming
    return lambdas


def check_levels(levels: Sequence[str]) -> tuple[str, ...]:
    """The levels as a tuple; ValueError unless they are distinct trunk stages, bottom-up."""
    levels = tuple(levels)
    if not levels or any(name not in STAGES for name in levels):
        raise ValueError(f"levels must be a non-empty subset of {STAGES}, got {levels}")
    if list(levels) != sorted(set(levels), key=STAGES.index):
        raise ValueError(f"levels must be distinct and bottom-up, got {levels}")
    return levels


# -- model --------------------------------------------------------------------------------------


@dataclass
class AVSLOutput:
    """What AVSL returns in train mode.

    Attributes:
        embeddings: L tensors ``(B, R)``, the normalised level embeddings ``e^l``.
        cam_stds: L tensors ``(B, R)``, CAM statistics for ``eta`` (no gradient).
        cams: L tensors ``(B, R, h_l, w_l)``, node CAMs of the detached maps (no gradient).
        edge_estimates: L-1 tensors ``(R, R)``, the batch edges ``omega_hat`` of levels
            ``2..L`` (already folded into the model's edge buffers).
    """

    embeddings: list[torch.Tensor]
    cam_stds: list[torch.Tensor]
    cams: list[torch.Tensor]
    edge_estimates: list[torch.Tensor]


@dataclass
class AVSLFeatures:
    """Per-image features from which AVSL distances are computed.

    Attributes:
        embeddings: L tensors ``(N, R)``, normalised level embeddings.
        cam_stds: L tensors ``(N, R)``, CAM statistics (see :func:`cam_spatial_std`).
    """

    embeddings: list[torch.Tensor]
    cam_stds: list[torch.Tensor]

    def flatten(self) -> torch.Tensor:
        """``(N, 2 L R)``: ``[e^1 | ... | e^L | std^1 | ... | std^L]``."""
        return torch.cat([*self.embeddings, *self.cam_stds], dim=1)


class AVSL(ReidModel):
    """Attributable visual similarity learning on a ResNet trunk.

    Train mode returns :class:`AVSLOutput` and folds the batch's edge estimate into the edge
    buffers, as BatchNorm updates its running statistics. Eval mode returns one flat
    ``(B, 2 L R)`` tensor per image (layout in :meth:`AVSLFeatures.flatten`), compared by
    :meth:`pairwise_distance` rather than by a Euclidean distance.

    State: edge buffers ``edge_<low>_<high>`` ``(R, R)`` (rows: nodes of the higher level) and
    ``edges_initialised`` ``(L-1,)`` bool, saved in the state dict; reliability parameters
    ``reliability_scale[l]``, ``reliability_bias[l]`` ``(R,)`` for levels ``2..L`` (level 1 is
    never rectified); optional class proxies ``proxies[l]`` ``(num_classes, R)``; optional boundaries
    of the margin loss ``margin_beta`` ``(L + 1,)`` (one per level, the last for ``d_hat``).

    Explainability: exact attribution of ``d_hat`` (:meth:`attribute`); the head map is the top
    level's (:meth:`forward_features`) and the explained embedding ``e^L`` (:meth:`embed_features`).

    Args:
        num_classes: number of training identities (used only by the proxies).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v2``.
        levels: trunk stages giving the levels, bottom-up.
        embed_dim: R, nodes per level.
        topk: k, lower nodes used to rectify each node (paper: 128).
        momentum: gamma of the edge update ``omega <- gamma omega + (1 - gamma) omega_hat``.
        last_stride: stride of ``layer4`` (1 by default).
        proxies: learn one proxy per identity and level (for a proxy loss).
        margin_beta: None, or the initial boundary ``beta`` of Wu et al.'s margin loss: then the
            model holds one learnable boundary per level and one for ``d_hat``
            (:mod:`reid.losses.margin`), trained and checkpointed with the other weights. They do
            not enter the test distance.
        pretrained: load ImageNet weights from local disk when available.
        pretrained_path: explicit weights file (see :func:`~reid.models.trunks.find_pretrained_weights`).
        padding_mode: padding of the trunk's convolutions (:func:`~reid.models.trunks.set_padding_mode`).
    """

    explainability = Explainability(head_layer=STAGES[-1], attribution=True)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        levels: Sequence[str] = ("layer2", "layer3", "layer4"),
        embed_dim: int = 512,
        topk: int = 128,
        momentum: float = 0.5,
        last_stride: int = 1,
        proxies: bool = False,
        margin_beta: float | None = None,
        pretrained: bool = True,
        pretrained_path: str = "",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        levels = check_levels(levels)
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        if not 1 <= topk <= embed_dim:
            raise ValueError(f"topk must be in [1, embed_dim={embed_dim}], got {topk}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if proxies and num_classes < 1:
            raise ValueError(f"proxies need num_classes >= 1, got {num_classes}")
        check_backbone(backbone)
        trunk = build_trunk(backbone, last_stride, pretrained, pretrained_path, padding_mode)
        pieces = trunk_stages(trunk)
        self.stem = pieces[0]
        depth = STAGES.index(levels[-1]) + 1
        self._stage_names = STAGES[:depth]
        for name, stage in zip(self._stage_names, pieces[1:]):
            setattr(self, name, stage)
        self.levels = levels
        # the head map is the top level's (layer4 by default)
        self.explainability = Explainability(head_layer=levels[-1], attribution=True)
        self.embed_dim = embed_dim
        self.topk = topk
        self.momentum = momentum
        channels = [stage_channels(backbone, name) for name in levels]
        self.projections = nn.ModuleList(nn.Conv2d(c, embed_dim, 1, bias=False) for c in channels)
        for conv in self.projections:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        rectified = len(levels) - 1
        self.reliability_scale = nn.ParameterList(
            nn.Parameter(torch.ones(embed_dim)) for _ in range(rectified)
        )
        self.reliability_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(embed_dim)) for _ in range(rectified)
        )
        self.proxies: nn.ParameterList | None = None
        if proxies:
            self.proxies = nn.ParameterList(
                nn.Parameter(torch.randn(num_classes, embed_dim) / embed_dim**0.5) for _ in levels
            )
        self.margin_beta: nn.Parameter | None = None
        if margin_beta is not None:
            self.margin_beta = nn.Parameter(torch.full((len(levels) + 1,), float(margin_beta)))
        self._edge_names = [f"edge_{low}_{high}" for low, high in zip(levels[:-1], levels[1:])]
        for name in self._edge_names:
            self.register_buffer(name, torch.zeros(embed_dim, embed_dim))
        self.register_buffer("edges_initialised", torch.zeros(rectified, dtype=torch.bool))

    # -- properties --------------------------------------------------------------------------------

    @property
    def trunk_modules(self) -> list[nn.Module]:
        """The (pretrained) trunk's stem and stages, for a separate learning rate."""
        return [self.stem, *(getattr(self, name) for name in self._stage_names)]

    @property
    def num_levels(self) -> int:
        """L, the number of levels."""
        return len(self.levels)

    @property
    def embedding_dim(self) -> int:
        """D = 2 L R, the size of the flat eval-mode features."""
        return 2 * self.num_levels * self.embed_dim

    @property
    def edges(self) -> list[torch.Tensor]:
        """L-1 edge buffers ``(R, R)`` ``omega^l`` of levels ``2..L``."""
        return [getattr(self, name) for name in self._edge_names]

    def edge_weights(self) -> list[torch.Tensor]:
        """L-1 normalised top-k edges ``W~^l`` ``(R, R)`` of levels ``2..L`` (eq. 7-8)."""
        return [topk_edge_weights(edge, self.topk) for edge in self.edges]

    # -- per-image computation ----------------------------------------------------------------------

    def level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` images -> L maps ``(B, C_l, h_l, w_l)``, one per level."""
        x = self.stem(x)
        maps = []
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in self.levels:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> the top level's map ``(B, C_L, h_L, w_L)`` (the explained head map)."""
        return self.level_maps(x)[-1]

    def embed_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Top-level map -> ``(B, R)`` top-level embedding ``e^L`` (what similarity attention and
        dot-product Grad-CAM explain for AVSL; its test distance is ``d_hat``, not a distance
        between these embeddings)."""
        return pooled_embedding(feature_map, self.projections[-1])

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Level embeddings and node CAMs; changes no state whatever the mode.

        Args:
            x: ``(B, 3, H, W)`` images.

        Returns:
            ``(embeddings, cams)``: L tensors ``(B, R)`` (unit norm) and L tensors
            ``(B, R, h_l, w_l)`` (computed from detached maps, so they carry gradients only to
            the projections).
        """
        maps = self.level_maps(x)
        embeddings = [pooled_embedding(z, proj) for z, proj in zip(maps, self.projections)]
        cams = [node_cams(z, proj) for z, proj in zip(maps, self.projections)]
        return embeddings, cams

    def forward(self, x: torch.Tensor) -> AVSLOutput | torch.Tensor:
        """Train mode: :class:`AVSLOutput` (and an edge update); eval mode: ``(B, 2 L R)``."""
        embeddings, cams = self.encode(x)
        with torch.no_grad():
            cams = [c.detach() for c in cams]
            cam_stds = [cam_spatial_std(c) for c in cams]
        if not self.training:
            return AVSLFeatures(embeddings, cam_stds).flatten()
        with torch.no_grad():
            estimates = [edge_estimate(low, high) for low, high in zip(cams[:-1], cams[1:])]
        self.update_edges(estimates)
        return AVSLOutput(embeddings=embeddings, cam_stds=cam_stds, cams=cams, edge_estimates=estimates)

    @torch.no_grad()
    def update_edges(self, estimates: Sequence[torch.Tensor]) -> None:
        """Momentum update of the edge buffers; the first update copies the estimate.

        Reference: AVSL paper, section 3.2, eq. 4 (``gamma`` = ``momentum``).

        Args:
            estimates: L-1 tensors ``(R, R)``, ``omega_hat`` of levels ``2..L``.
        """
        if len(estimates) != len(self._edge_names):
            raise ValueError(f"expected {len(self._edge_names)} edge estimates, got {len(estimates)}")
        for index, (edge, estimate) in enumerate(zip(self.edges, estimates)):
            if self.edges_initialised[index]:
                edge.mul_(self.momentum).add_(estimate.to(edge), alpha=1.0 - self.momentum)
            else:
                edge.copy_(estimate)
        self.edges_initialised.fill_(True)

    # -- distances -------------------------------------------------------------------------------------

    def split_features(self, features: torch.Tensor) -> AVSLFeatures:
        """Unpacks flat ``(N, 2 L R)`` eval features (views, no copy)."""
        if features.dim() != 2 or features.shape[1] != self.embedding_dim:
            raise ValueError(
                f"expected AVSL features of shape (N, {self.embedding_dim}), got {tuple(features.shape)}"
            )
        parts = list(features.split(self.embed_dim, dim=1))
        return AVSLFeatures(embeddings=parts[: self.num_levels], cam_stds=parts[self.num_levels :])

    def reliabilities(
        self, cam_stds1: Sequence[torch.Tensor], cam_stds2: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """L-1 tensors ``(..., R)``: ``p^l`` of levels ``2..L`` (eq. 6) from broadcastable stats."""
        return [
            reliability(s1, s2, a, b)
            for s1, s2, a, b in zip(
                cam_stds1[1:], cam_stds2[1:], self.reliability_scale, self.reliability_bias
            )
        ]

    def rectified_distance(
        self,
        embeddings1: Sequence[torch.Tensor],
        cam_stds1: Sequence[torch.Tensor],
        embeddings2: Sequence[torch.Tensor],
        cam_stds2: Sequence[torch.Tensor],
        weights: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``d_hat = sum_i delta_hat^L_i`` for broadcastable pairs (differentiable).

        Pass ``e1[:, None]`` and ``e2[None]`` (and the same for the stats) for an ``(N, M)``
        matrix; detach the embeddings to train only the reliability parameters.

        Reference: AVSL paper, section 3.3 (eq. 1, 5-9 and ``d_hat``).

        Args:
            embeddings1: L tensors ``(..., R)``; embeddings2: L tensors broadcastable with them.
            cam_stds1: L tensors ``(..., R)``; cam_stds2: L tensors broadcastable with them.
            weights: ``W~`` of levels ``2..L``; None computes them from the edge buffers.

        Returns:
            ``(...)`` distances.
        """
        nodes = [(e1 - e2).pow(2) for e1, e2 in zip(embeddings1, embeddings2)]
        weights = self.edge_weights() if weights is None else weights
        return rectify(nodes, self.reliabilities(cam_stds1, cam_stds2), weights).sum(-1)

    @torch.no_grad()
    def pairwise_distance(
        self, query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean", normalize: bool = False,
        chunk_size: int | None = None, out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, M)`` matrix of ``d_hat`` between flat eval features, in chunks of queries.

        ``metric`` and ``normalize`` (``TEST.DIST_METRIC``, ``TEST.NORMALIZE_FEATURE``) do not
        apply: the distance is the similarity graph's ``d_hat``.

        Memory holds a few ``(chunk_size, M, R)`` tensors at a time; with ``chunk_size=None``
        chunks are sized so that one such tensor has at most ``2**25`` elements (at least one
        query per chunk). Runs on the device of ``query`` and ``gallery``.

        Reference: AVSL paper, section 3.4, "Evaluation".

        Args:
            query: ``(N, 2 L R)`` eval-mode outputs.
            gallery: ``(M, 2 L R)`` eval-mode outputs.
            metric: ignored (see above).
            normalize: ignored (see above).
            chunk_size: queries per chunk (None: automatic).
            out: an ``(N, M)`` tensor to write the distances into (returned).

        Returns:
            ``(N, M)`` distances, smaller is more similar.
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if self.num_levels > 1 and not bool(self.edges_initialised.all()):
            logger.warning("AVSL edges were never updated: the rectification uses zero edges")
        q, g = self.split_features(query), self.split_features(gallery)
        num_query, num_gallery = query.shape[0], gallery.shape[0]
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(num_gallery * self.embed_dim, 1))
        weights = [w.to(query) for w in self.edge_weights()]
        if out is None:
            out = query.new_empty(num_query, num_gallery)
        elif out.shape != (num_query, num_gallery):
            raise ValueError(f"out must have shape {(num_query, num_gallery)}, got {tuple(out.shape)}")
        g_emb = [e.unsqueeze(0) for e in g.embeddings]
        g_std = [s.unsqueeze(0) for s in g.cam_stds]
        for start in range(0, num_query, chunk_size):
            rows = slice(start, start + chunk_size)
            out[rows] = self.rectified_distance(
                [e[rows].unsqueeze(1) for e in q.embeddings],
                [s[rows].unsqueeze(1) for s in q.cam_stds],
                g_emb,
                g_std,
                weights,
            )
        return out

    @torch.no_grad()
    def pair_similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``(B,)`` ``-d_hat`` of paired rows of flat eval features."""
        a, b = self.split_features(first), self.split_features(second)
        return -self.rectified_distance(a.embeddings, a.cam_stds, b.embeddings, b.cam_stds)

    def attribute(
        self, images1: torch.Tensor, images2: torch.Tensor
    ) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """Distance of each pair ``(images1[b], images2[b])`` and its exact attribution.

        Uses the model as it is (put it in eval mode first: in train mode BatchNorm uses batch
        statistics); changes no state. Gradients are not disabled.

        Reference: AVSL paper, section 3.4, eq. 11.

        Args:
            images1: ``(B, 3, H, W)``.
            images2: ``(B, 3, H, W)``.

        Returns:
            ``levels`` the L level names; ``distance`` ``(B,)`` = ``d_hat``; ``nodes`` L x ``(B, R)`` ``delta^l``; ``weights``
            L x ``(B, R)`` ``lambda^l`` with ``distance == sum_l (weights[l] * nodes[l]).sum(1)``;
            ``reliabilities`` L-1 x ``(B, R)`` ``p^l`` of levels ``2..L``; ``rectified`` L x
            ``(B, R)`` ``delta_hat^l`` (eq. 8, ``delta_hat^1 = delta^1``; ``distance`` is the sum of
            the last); ``edge_weights`` L-1 x ``(R, R)`` ``W~^l`` of levels ``2..L``; ``cams1``,
            ``cams2`` L x ``(B, R, h_l, w_l)`` node CAMs of each image.
        """
        if images1.shape[0] != images2.shape[0]:
            raise ValueError(
                f"expected as many first as second images, got {images1.shape[0]} and {images2.shape[0]}"
            )
        emb1, cams1 = self.encode(images1)
        emb2, cams2 = self.encode(images2)
        std1 = [cam_spatial_std(c.detach()) for c in cams1]
        std2 = [cam_spatial_std(c.detach()) for c in cams2]
        nodes = [(e1 - e2).pow(2) for e1, e2 in zip(emb1, emb2)]
        reliabilities = self.reliabilities(std1, std2)
        weights = self.edge_weights()
        rectified = rectify_levels(nodes, reliabilities, weights)
        return {
            "levels": list(self.levels),
            "distance": rectified[-1].sum(-1),
            "nodes": nodes,
            "weights": attribution_weights(nodes, reliabilities, weights),
            "reliabilities": reliabilities,
            "rectified": rectified,
            "edge_weights": weights,
            "cams1": cams1,
            "cams2": cams2,
        }


@register_model("avsl")
def avsl(num_classes: int, **kwargs) -> AVSL:
    """AVSL on a ResNet trunk (see :class:`AVSL` for the keyword arguments)."""
    return AVSL(num_classes=num_classes, **kwargs)
