"""Similarity attention maps (Eq. 1 of the SAM paper) for any embedding model.

Two entry points:

* :func:`attention_maps` runs the whole ``model`` on images and explains a named layer.
* :func:`attention_maps_from_features` starts from feature maps that were computed once
  (e.g. PCB's ``layer4`` map from ``model.forward_features``) and differentiates only the cheap
  ``head`` that turns them into embeddings, so explaining many pairs of the same images does
  not re-run the backbone.

Both compute, for each sample ``i`` of the batch,
``s_i = score(normalize(f)_i)`` (by default ``w_i . normalize(f)_i``),
``alpha_ik = mean_{h, w} d s_i / d A_ik`` and ``M_i = ReLU(sum_k alpha_ik A_ik)``.

Batched and exact: one backward pass of ``sum_i s_i`` gives every sample's gradient, which
requires that sample ``i``'s embedding depend on image ``i`` only. This holds in eval mode
(BatchNorm uses running statistics), so the caller must put the model in eval mode
(``model.eval()``). These functions never change the train/eval mode themselves; they log a
warning when the model is in train mode.

Gradients of the maps: with ``create_graph=False`` (default) ``alpha`` is a constant and the
maps still depend on the parameters through ``A`` (first-order, ``docs/method.md``
section 3); with ``create_graph=True`` ``alpha`` is differentiable too (second-order). Under
``torch.no_grad()`` the returned tensors are detached (plain explanations).

Mixed precision: the model (or head) may run under ``torch.autocast`` (bfloat16 or float16
activations). The normalisation, the scores, ``alpha`` and the weighted sum of Eq. 1 are then
computed in float32 with autocast switched off (a float32 island), so the maps and embeddings
are float32 whatever the autocast dtype; without autocast nothing changes (float64 stays
float64).

Reference: SAM paper, section 3.1, Eq. 1; ``docs/method.md`` section 2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import capture_output, resolve_layer
from .scores import ScoreFn, WeightedScore

logger = logging.getLogger(__name__)

__all__ = ["attention_maps", "attention_maps_from_features", "grad_cam"]


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``dS / dA_k``.

    Reference: SAM paper, section 3.1, Eq. 1 (Grad-CAM weighting, Selvaraju et al. 2017).

    Args:
        activations: ``(B, C, h, w)`` feature maps ``A``.
        gradients: ``(B, C, h, w)`` gradients of each sample's score with respect to ``A``.

    Returns:
        ``(B, h, w)`` raw (unnormalised) maps, computed with autocast off in float32 when the
        inputs are float16 or bfloat16 (float64 inputs stay float64).
    """
    if activations.dim() != 4 or gradients.shape != activations.shape:
        raise ValueError(
            f"expected activations and gradients of one shape (B, C, h, w), got "
            f"{tuple(activations.shape)} and {tuple(gradients.shape)}"
        )
    with torch.autocast(device_type=activations.device.type, enabled=False):
        alpha = _at_least_float32(gradients).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return F.relu((alpha * _at_least_float32(activations)).sum(dim=1))


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is float16 or bfloat16 (autocast output), else unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _score_function(weights: torch.Tensor | None, score_fn: ScoreFn | None) -> ScoreFn:
    if (weights is None) == (score_fn is None):
        raise ValueError("give exactly one of weights and score_fn")
    return WeightedScore(weights) if score_fn is None else score_fn


def _check_grad_mode(create_graph: bool) -> bool:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attention maps need autograd; call them outside torch.inference_mode()")
    grad_enabled = torch.is_grad_enabled()
    if create_graph and not grad_enabled:
        raise ValueError("create_graph=True needs gradient mode; do not call under torch.no_grad()")
    return grad_enabled


def _maps_and_embeddings(
    activations: torch.Tensor,
    raw_embeddings: torch.Tensor,
    score: ScoreFn,
    create_graph: bool,
    grad_enabled: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalises, scores, differentiates with respect to ``activations`` and applies Eq. 1."""
    if not isinstance(raw_embeddings, torch.Tensor) or raw_embeddings.dim() != 2:
        shape = tuple(raw_embeddings.shape) if isinstance(raw_embeddings, torch.Tensor) else None
        raise TypeError(
            f"the model must return one (B, D) embedding tensor (eval mode), got "
            f"{type(raw_embeddings).__name__} {shape}"
        )
    if activations.dim() != 4 or raw_embeddings.shape[0] != activations.shape[0]:
        raise ValueError(
            f"feature maps {tuple(activations.shape)} and embeddings "
            f"{tuple(raw_embeddings.shape)} do not form one batch of (B, C, h, w) and (B, D)"
        )
    with torch.autocast(device_type=raw_embeddings.device.type, enabled=False):
        embeddings = F.normalize(_at_least_float32(raw_embeddings), dim=1)
        scores = score(embeddings)
    if scores.shape != (embeddings.shape[0],):
        raise ValueError(f"score function must return ({embeddings.shape[0]},), got {tuple(scores.shape)}")
    (gradients,) = torch.autograd.grad(
        scores.sum(),
        activations,
        create_graph=create_graph,
        retain_graph=create_graph,
        allow_unused=True,
    )
    if gradients is None:
        raise RuntimeError("the scores do not depend on the explained feature maps")
    maps = grad_cam(activations, gradients)
    if not create_graph:
        embeddings = embeddings.detach()
    if not grad_enabled:
        maps = maps.detach()
    return maps, embeddings


def attention_maps(
    model: nn.Module,
    layer: nn.Module | str,
    images: torch.Tensor,
    weights: torch.Tensor | None = None,
    create_graph: bool = False,
    *,
    score_fn: ScoreFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity attention maps of ``layer`` for a batch of images, in one backward pass.

    ``s_i = weights_i . normalize(model(images))_i`` (or ``score_fn``), ``alpha_ik`` the spatial
    mean of ``d s_i / d A_ik`` where ``A = layer``'s output, ``M_i = ReLU(sum_k alpha_ik A_ik)``.
    The output of ``layer`` is captured with a forward hook that is removed on return or on
    error; the gradient is taken with ``torch.autograd.grad`` on it.

    Put the model in eval mode first (see the module docstring); the mode is never changed
    here. ``images`` and the model are not modified.

    Reference: SAM paper, section 3.1, Eq. 1; ``docs/method.md`` section 2.

    Args:
        model: maps ``(B, 3, H, W)`` images to ``(B, D)`` embeddings (normalised here).
        layer: the module to explain or its dotted name (e.g. ``"layer4"``); it must run once
            per forward pass and return one ``(B, C, h, w)`` tensor.
        images: ``(B, 3, H, W)`` input batch.
        weights: ``(B, D)`` similarity weights (e.g. from :func:`pair_weights`), used detached.
        create_graph: make ``alpha`` differentiable, so a loss on the maps gets second-order
            gradients; the returned embeddings then stay attached to the graph.
        score_fn: instead of ``weights``, a callable ``(B, D)`` normalised embeddings ->
            ``(B,)`` scores (see :mod:`reid.explain.scores`).

    Returns:
        ``maps``: ``(B, h, w)`` raw maps at ``layer``'s resolution, on ``images``' device;
        ``embeddings``: ``(B, D)`` L2-normalised embeddings (detached unless ``create_graph``).
    """
    score = _score_function(weights, score_fn)
    grad_enabled = _check_grad_mode(create_graph)
    module = resolve_layer(model, layer)
    if model.training:
        logger.warning(
            "attention maps of a model in train mode: BatchNorm/dropout make samples depend on "
            "each other, so the batched maps are not per-sample exact; call model.eval() first"
        )
    name = layer if isinstance(layer, str) else type(layer).__name__
    with torch.enable_grad(), capture_output(module) as captured:
        raw_embeddings = model(images)
        activations = captured.single(name)
        return _maps_and_embeddings(activations, raw_embeddings, score, create_graph, grad_enabled)


def attention_maps_from_features(
    head: Callable[[torch.Tensor], torch.Tensor],
    feature_maps: torch.Tensor,
    weights: torch.Tensor | None = None,
    create_graph: bool = False,
    *,
    score_fn: ScoreFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity attention maps from precomputed feature maps, differentiating the head only.

    For models whose embedding is a cheap function of the explained map (PCB: stripe pooling and
    normalisation of ``layer4``): compute ``feature_maps = model.forward_features(images)``
    once per image, index the rows of any pairs or triplets, and call this with
    ``head = model.embed_features``. Equal to :func:`attention_maps` on the full model at that
    layer when ``model(x) == head(features(x))``.

    If ``feature_maps`` carries a graph (e.g. training), the maps keep it (gradient flows to the
    trunk through ``A``); otherwise a detached copy is differentiated and ``feature_maps`` is
    left untouched. The head should be in eval mode for per-sample exact maps.

    Reference: SAM paper, section 3.1, Eq. 1; ``docs/method.md`` section 2.

    Args:
        head: ``(B, C, h, w)`` feature maps -> ``(B, D)`` embeddings (normalised here).
        feature_maps: ``(B, C, h, w)`` maps ``A`` of the explained layer.
        weights: ``(B, D)`` similarity weights, used detached.
        create_graph: make ``alpha`` differentiable (second-order gradients).
        score_fn: instead of ``weights``, a callable ``(B, D)`` -> ``(B,)`` scores.

    Returns:
        ``maps``: ``(B, h, w)`` raw maps; ``embeddings``: ``(B, D)`` L2-normalised embeddings
        (detached unless ``create_graph``).
    """
    score = _score_function(weights, score_fn)
    grad_enabled = _check_grad_mode(create_graph)
    with torch.enable_grad():
        activations = feature_maps
        if not (grad_enabled and feature_maps.requires_grad):
            activations = feature_maps.detach().requires_grad_(True)
        raw_embeddings = head(activations.clone())  # the head may not edit A in place
        return _maps_and_embeddings(activations, raw_embeddings, score, create_graph, grad_enabled)
