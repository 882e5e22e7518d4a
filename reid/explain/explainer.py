"""The explainer of a dump: maps of query-gallery pairs and triplets, or exact attributions.

:class:`Explainer` works on what :mod:`reid.explain.ranking` kept (the chosen queries' inputs and
the ranked gallery) and answers the dump's three questions in batches; the dump
(:mod:`reid.explain.dump`) decides which tuples to ask about and writes the answers.

* **Siamese maps** (:meth:`Explainer.pairs`) of a query and a gallery image, with similarity
  attention (SAM paper, section 3.1; ``docs/method.md`` sections 2 and 4). ``same`` picks the
  weights: a similar pair ("why alike") or a dissimilar one ("what differs"). On the head-only
  path the maps come from the kept ``layer4`` maps through the head
  (:func:`reid.explain.explain_pair_features`); otherwise :func:`reid.explain.explain_pair`
  re-runs the model on the images at the explained layer.
* **Triplet maps** (:meth:`Explainer.triplets`): "why is A closer to the query than B".
* **Exact decompositions** (:meth:`Explainer.decompositions`) of the score of a model whose
  embedding is unit stripe vectors (:mod:`reid.explain.decomposition`).
* **Attributions** (:meth:`Explainer.attributions`, :func:`attribute_pairs`) for models with
  exact attribution (``model.explainability.attribution``, e.g. AVSL): the overall distance
  ``d_hat``, its split over levels and nodes ``sum_l sum_i lambda^l_i delta^l_i`` (AVSL paper,
  section 3.4, eq. 11), the rectified values ``delta_hat`` (eq. 8), the edge weights and each
  node's CAMs (:class:`PairAttributions`; ``docs/method.md`` section 5).

The model is used through its interface (:class:`reid.models.base.ReidModel`) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reid.metrics.streaming import MatchTracker

from .decomposition import Decomposition, decompose_pair
from .postprocess import normalize_maps
from .ranking import EncodedQueries, Setup
from .tuples import explain_pair, explain_pair_features, explain_triplet, explain_triplet_features


class Explainer:
    """Siamese and triplet maps of query-gallery tuples, head-only or on the full model.

    Args:
        setup: model and options.
        encoded: the chosen queries.
        tracker: the ranked gallery (holding the kept ``layer4`` maps on the head-only path).
        gallery_set: the gallery dataset (network inputs for the full-model path).
    """

    def __init__(self, setup: Setup, encoded: EncodedQueries, tracker: MatchTracker, gallery_set: Any) -> None:
        self.setup = setup
        self.encoded = encoded
        self.tracker = tracker
        self.gallery_set = gallery_set

    def _query_inputs(self, queries: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.encoded.inputs[qi] for qi in queries])

    def _gallery_inputs(self, gallery: Sequence[int]) -> torch.Tensor:
        if self.setup.head_path:
            return torch.stack([self.tracker.payload[j] for j in gallery])
        return torch.stack([self.gallery_set[j]["img"] for j in gallery]).to(self.setup.device)

    def pairs(self, queries: Sequence[int], gallery: Sequence[int], same: Sequence[bool]) -> tuple[torch.Tensor, ...]:
        """Raw Siamese maps ``(T, h, w)`` of the queries and of the gallery images."""
        first, second = self._query_inputs(queries), self._gallery_inputs(gallery)
        same_t = torch.tensor(list(same), dtype=torch.bool, device=self.setup.device)
        model = self.setup.model
        with torch.no_grad():
            if self.setup.head_path:
                return explain_pair_features(model.embed_features, first, second, same_t)
            return explain_pair(model, self.setup.layer, first, second, same_t)

    def decompositions(
        self, queries: Sequence[int], gallery: Sequence[int]
    ) -> tuple[Decomposition, Decomposition] | None:
        """The exact splits of each pair's score (:mod:`reid.explain.decomposition`): of the
        squared Euclidean embedding distance (its stripe terms are recorded) and of the dot
        product (its cell maps and cell pairs are what the explorer shows); None when the model's
        score does not split."""
        model = self.setup.model
        stripes = model.explainability.decomposable_stripes
        if not stripes:
            return None
        first, second = self._query_inputs(queries), self._gallery_inputs(gallery)
        with torch.no_grad():
            if not self.setup.head_path:
                first, second = model.forward_features(first), model.forward_features(second)
            first, second = first.float(), second.float()
            return decompose_pair(first, second, stripes, "euclidean"), decompose_pair(first, second, stripes, "dot")

    def attributions(self, queries: Sequence[int], gallery: Sequence[int]) -> PairAttributions:
        """AVSL attribution of the pairs ``(query, gallery image)`` (full-model path)."""
        return attribute_pairs(self.setup.model, self._query_inputs(queries), self._gallery_inputs(gallery))

    def triplets(
        self, queries: Sequence[int], closer: Sequence[int], farther: Sequence[int]
    ) -> tuple[torch.Tensor, ...]:
        """Raw triplet maps ``(T, h, w)`` of the queries, the closer and the farther images."""
        anchors, a, b = self._query_inputs(queries), self._gallery_inputs(closer), self._gallery_inputs(farther)
        model = self.setup.model
        with torch.no_grad():
            if self.setup.head_path:
                return explain_triplet_features(model.embed_features, anchors, a, b)
            return explain_triplet(model, self.setup.layer, anchors, a, b)


@dataclass
class PairAttributions:
    """AVSL attribution of B pairs as CPU numpy arrays (see :meth:`reid.models.avsl.AVSL.attribute`).

    Attributes:
        levels: the names of the L levels, bottom-up.
        distance: ``(B,)`` ``d_hat`` from the attribution pass.
        nodes: L arrays ``(B, R)`` ``delta^l``.
        weights: L arrays ``(B, R)`` ``lambda^l``; ``sum_l (weights * nodes).sum(1) == distance``.
        reliabilities: L-1 arrays ``(B, R)`` ``p^l`` of levels ``2..L``.
        rectified: L arrays ``(B, R)`` ``delta_hat^l`` (eq. 8; ``delta_hat^1 = delta^1``).
        edge_weights: L-1 arrays ``(R, R)`` ``W~^l`` of levels ``2..L``.
        cams1: L arrays ``(B, R, h_l, w_l)``: the first images' node CAMs, each min-max normalised.
        cams2: L arrays of the second images' normalised node CAMs.
    """

    levels: list[str]
    distance: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    reliabilities: list[np.ndarray]
    rectified: list[np.ndarray]
    edge_weights: list[np.ndarray]
    cams1: list[np.ndarray]
    cams2: list[np.ndarray]


def _unit_cams(cams: torch.Tensor) -> np.ndarray:
    """``(B, R, h, w)`` -> the same, each map min-max normalised to ``[0, 1]``, numpy float32."""
    return normalize_maps(cams.flatten(0, 1).float()).reshape(cams.shape).cpu().numpy()


@torch.no_grad()
def attribute_pairs(model: nn.Module, first: torch.Tensor, second: torch.Tensor) -> PairAttributions:
    """The model's exact attribution of the pairs (:meth:`reid.models.base.ReidModel.attribute`)
    as CPU numpy arrays.

    Reference: AVSL paper, section 3.3 (eq. 8) and section 3.4 (eq. 11); ``docs/method.md``
    section 5.

    Args:
        model: a model with ``explainability.attribution``, in eval mode.
        first: ``(B, 3, H, W)`` query images.
        second: ``(B, 3, H, W)`` gallery images.
    """
    out = model.attribute(first, second)

    def arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
        return [t.detach().double().cpu().numpy() for t in tensors]

    return PairAttributions(
        levels=list(out["levels"]), distance=out["distance"].detach().double().cpu().numpy(), nodes=arrays(out["nodes"]),
        weights=arrays(out["weights"]), reliabilities=arrays(out["reliabilities"]),
        rectified=arrays(out["rectified"]), edge_weights=arrays(out["edge_weights"]),
        cams1=[_unit_cams(c) for c in out["cams1"]], cams2=[_unit_cams(c) for c in out["cams2"]],
    )
