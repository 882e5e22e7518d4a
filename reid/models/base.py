"""The model interface: what every re-id model of the toolkit offers its callers.

Tools, engine builders, explainers and benchmarks talk to a model only through
:class:`ReidModel`; none of them asks which model it is. A new model (a torchvision or torchreid
network, a retrieval model) subclasses it and implements:

- ``trunk_modules`` and ``embedding_dim`` (optimiser groups, sizes);
- ``forward(x)``: in eval mode the ``(B, D)`` test features that :meth:`pairwise_distance`
  compares; in train mode whatever its training step consumes;
- the **explained head**: :meth:`forward_features` (images -> the ``(B, C, h, w)`` map an
  embedding is pooled from) and :meth:`embed_features` (that map -> the ``(B, E)`` embedding that
  similarity attention explains), so explanations take gradients through the cheap head only
  (``docs/method.md`` section 2);
- :meth:`pairwise_distance`: query x gallery distances between eval features (the default is the
  configured Euclidean/cosine distance of ``reid.metrics.distance``; AVSL overrides it with its
  similarity graph, ``docs/method.md`` section 5);
- :attr:`explainability`: which explanations apply (head path, full-model layers, exact
  attribution, an identity classifier for classifier Grad-CAM).

Optional capabilities raise :class:`NotImplementedError` with the model's name unless the model
declares them in :attr:`explainability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reid.metrics.distance import compute_distance_matrix

from .trunks import LAST_STAGE


@dataclass(frozen=True)
class Explainability:
    """What a model can explain.

    Attributes:
        head_layer: the layer whose map :meth:`ReidModel.forward_features` returns (the layer
            explained through the head-only path).
        attention: similarity attention applies to the model's decision (its distance is a
            distance between per-image embeddings, so a Siamese or triplet weight explains it).
        attribution: the model's distance splits exactly over its nodes
            (:meth:`ReidModel.attribute`, e.g. AVSL's eq. 11).
        classifier: the model has identity logits on its head map
            (:meth:`ReidModel.identity_logits`, for classifier Grad-CAM).
        decomposable_stripes: ``P > 0`` when the test embedding is the concatenation of the
            L2-normalised averages of ``P`` horizontal stripes of the head map, so that a pair's
            score splits exactly over stripes, cells and cell pairs
            (:mod:`reid.explain.decomposition`); 0 when it does not.
    """

    head_layer: str = LAST_STAGE
    attention: bool = True
    attribution: bool = False
    classifier: bool = False
    decomposable_stripes: int = 0


class ReidModel(nn.Module):
    """Base class of the toolkit's models (see the module docstring for the contract)."""

    explainability = Explainability()

    @property
    def trunk_modules(self) -> list[nn.Module]:
        """The (pretrained) trunk's modules, for a separate learning rate (may be empty)."""
        return []

    @property
    def embedding_dim(self) -> int:
        """D, the size of the eval-mode features."""
        raise NotImplementedError(f"{type(self).__name__} must define embedding_dim")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> the ``(B, C, h, w)`` map of ``explainability.head_layer``."""
        raise NotImplementedError(f"{type(self).__name__} must define forward_features")

    def embed_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` head map -> ``(B, E)`` embedding explained by similarity attention."""
        raise NotImplementedError(f"{type(self).__name__} must define embed_features")

    def pairwise_distance(
        self,
        query: torch.Tensor,
        gallery: torch.Tensor,
        metric: str = "euclidean",
        normalize: bool = False,
        chunk_size: int | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, M)`` distances between eval features (smaller is more similar).

        The default compares embeddings: ``metric`` ``euclidean`` (squared) or ``cosine``
        (:func:`reid.metrics.distance.compute_distance_matrix`), after L2 normalisation when
        ``normalize``. Models whose distance is not one between embeddings override it.

        Args:
            query: ``(N, D)`` eval features.
            gallery: ``(M, D)`` eval features.
            metric: ``euclidean`` or ``cosine``.
            normalize: L2-normalise the features first (``TEST.NORMALIZE_FEATURE``).
            chunk_size: rows per chunk (None: automatic).
            out: an ``(N, M)`` tensor to write the distances into (returned), e.g. a buffer that a
                streaming evaluation reuses for every block; an override must accept it too.
        """
        return compute_distance_matrix(query, gallery, metric, chunk_size=chunk_size, normalize=normalize, out=out)

    def pair_similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``(B,)`` similarity of paired rows of eval features (larger is more similar).

        The default is the cosine of the two embeddings (what deletion/insertion curves track).
        """
        return (F.normalize(first, dim=1) * F.normalize(second, dim=1)).sum(dim=1)

    def attribute(self, images1: torch.Tensor, images2: torch.Tensor) -> dict:
        """Exact attribution of the distance of each pair (models with ``attribution``)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact attribution of its distance")

    def identity_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` identity logits from the head map (models with ``classifier``)."""
        raise NotImplementedError(f"{type(self).__name__} has no identity classifier")
