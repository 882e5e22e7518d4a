"""Metric losses, similarity mining and the AVSL objective, as functions and loss objects.

Imports torch, :mod:`reid.metrics.distance` (every distance used here) and :mod:`reid.explain`
(attention maps, similarity weights and map post-processing for similarity mining); never
:mod:`reid.engine` or :mod:`reid.config`. The engines build these objects from the config and
only orchestrate a step.

- :mod:`reid.losses.id_loss`: per-stripe cross-entropy (PCB).
- :mod:`reid.losses.triplet`: batch-hard mining and the batch-hard triplet loss, on a distance
  matrix (:func:`triplet_loss_from_distances`) or on embeddings (:func:`batch_hard_triplet_loss`,
  :class:`TripletLoss`).
- :mod:`reid.losses.proxy_anchor`: the ProxyAnchor loss on sample-to-proxy distances.
- :mod:`reid.losses.avsl`: the AVSL objective, per-level metric losses + the loss on ``d_hat``
  (:class:`AVSLLoss`).
- :mod:`reid.losses.similarity_mining`: soft masks from attention maps, tuples per form, and the
  similarity-mining losses on masked embeddings (SAM paper, section 3.2).
- :mod:`reid.losses.sam`: ``L_sm`` of a batch through the model (tuples, weights, maps, masked
  pass), :class:`SimilarityMiningLoss` (SAM paper, sections 3.1-3.3).
- :mod:`reid.losses.terms`: named loss terms and their weighted sum ``L_ml + gamma * L_sm``.
"""

from reid.losses.avsl import AVSL_LOSSES, AVSLLoss
from reid.losses.id_loss import part_cross_entropy
from reid.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loss
from reid.losses.sam import (
    BN_MODES,
    SimilarityMiningLoss,
    SimilarityMiningStep,
    batchnorm_modules,
    eval_mode,
)
from reid.losses.similarity_mining import (
    FORMS,
    OBJECTIVES,
    ROLES,
    mining_tuples,
    quadruplet_mining_loss,
    quadruplets,
    siamese_mining_loss,
    siamese_pairs,
    similarity_mining_loss,
    soft_mask,
    soft_mask_weights,
    triplet_mining_loss,
    triplets,
)
from reid.losses.terms import LossTerms, as_floats, combine
from reid.losses.triplet import (
    MinedTuples,
    TripletLoss,
    batch_hard_mining,
    batch_hard_triplet_loss,
    triplet_loss_from_distances,
)

__all__ = [
    "AVSLLoss",
    "AVSL_LOSSES",
    "BN_MODES",
    "FORMS",
    "LossTerms",
    "MinedTuples",
    "OBJECTIVES",
    "ProxyAnchorLoss",
    "ROLES",
    "SimilarityMiningLoss",
    "SimilarityMiningStep",
    "TripletLoss",
    "as_floats",
    "batch_hard_mining",
    "batch_hard_triplet_loss",
    "batchnorm_modules",
    "combine",
    "eval_mode",
    "mining_tuples",
    "part_cross_entropy",
    "proxy_anchor_loss",
    "quadruplet_mining_loss",
    "quadruplets",
    "siamese_mining_loss",
    "siamese_pairs",
    "similarity_mining_loss",
    "soft_mask",
    "soft_mask_weights",
    "triplet_loss_from_distances",
    "triplet_mining_loss",
    "triplets",
]
