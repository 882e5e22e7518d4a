"""Similarity attention: weights, attention maps and hooks for any embedding model.

Imports torch only. Works on any model that maps images to ``(B, D)`` embeddings in eval mode
(PCB, a torchvision ResNet, a torchreid model); the caller puts the model in eval mode.

Typical use (PCB, explaining the top matches of a query without re-running the trunk)::

    model.eval()                                        # the caller's job, never done here
    with torch.no_grad():                               # plain explanations: detached maps
        feats = model.forward_features(images)          # (N, C, h, w), once per image
        mq, mg = explain_pair_features(model.embed_features, feats[[0, 0]], feats[[3, 7]], same=True)
    heat = normalize_maps(resize_maps(mq, images.shape[-2:]))  # (2, H, W) in [0, 1]

For training (similarity mining) call the same functions with gradients enabled; the maps then
carry gradient to the model through ``A`` (and through ``alpha`` with ``create_graph=True``).

Reference: SAM paper, section 3.1; ``docs/method.md`` sections 2 and 4.
"""

from .attention import attention_maps, attention_maps_from_features, grad_cam
from .hooks import CapturedOutput, capture_output, resolve_layer
from .postprocess import normalize_maps, resize_maps
from .scores import ScoreFn, TupleScore, WeightedScore, pair_score, quadruplet_score, triplet_score
from .tuples import (
    explain_pair,
    explain_pair_features,
    explain_quadruplet,
    explain_quadruplet_features,
    explain_triplet,
    explain_triplet_features,
)
from .weights import pair_weights, quadruplet_weights, triplet_weights

__all__ = [
    "CapturedOutput",
    "ScoreFn",
    "TupleScore",
    "WeightedScore",
    "attention_maps",
    "attention_maps_from_features",
    "capture_output",
    "explain_pair",
    "explain_pair_features",
    "explain_quadruplet",
    "explain_quadruplet_features",
    "explain_triplet",
    "explain_triplet_features",
    "grad_cam",
    "normalize_maps",
    "pair_score",
    "pair_weights",
    "quadruplet_score",
    "quadruplet_weights",
    "resize_maps",
    "resolve_layer",
    "triplet_score",
    "triplet_weights",
]
