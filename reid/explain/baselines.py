"""Comparison explainers for re-id pairs: what users do today, and floors.

Used by ``tools/eval_explanations.py`` next to our similarity attention (:mod:`reid.explain`) to
measure explanation quality (:mod:`reid.metrics.explanation`). Each explainer returns raw maps
``(B, h, w)`` at its own resolution; resizing and normalisation are the caller's steps
(:func:`~reid.explain.postprocess.resize_maps`, :func:`~reid.explain.postprocess.normalize_maps`).

* :func:`activation_maps`: torchreid's ``visualize_actmap`` (Zagoruyko and Komodakis, ICLR 2017,
  attention transfer; Zhou et al., OSNet, ICCV 2019): the sum over channels of the squared
  feature map, L2-normalised over the spatial positions. Pair-agnostic.
* :func:`classifier_grad_cam_features`: Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2) of an ID
  classifier for its predicted identity, what a torchreid-style user would run (a model's
  :meth:`~reid.models.base.ReidModel.identity_logits`, e.g. PCB's summed stripe logits).
* :func:`dot_product_maps_features`: Grad-CAM of the plain similarity ``s = f1 . f2`` of the
  normalised embeddings, each image explained with the other's embedding held fixed.
* :func:`avsl_node_maps`: AVSL's attribution (AVSL paper, section 3.4, eq. 11): the node CAMs
  of the top level weighted by each node's contribution, summed over the top nodes.
* :func:`random_maps`, :func:`centre_prior`: floors; a random map scores the region's area
  fraction in expectation on the pointing game and the energy inside.

Imports torch only; the caller puts the model in eval mode (never done here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import attention_maps_from_features, grad_cam

__all__ = [
    "DotProductScore",
    "activation_maps",
    "avsl_node_maps",
    "centre_prior",
    "classifier_grad_cam_features",
    "dot_product_maps_features",
    "random_maps",
]


def activation_maps(feature_maps: torch.Tensor) -> torch.Tensor:
    """torchreid's activation map: ``sum_k A_k^2``, L2-normalised over the positions.

    Reference: Zagoruyko and Komodakis, ICLR 2017, section 3.1 (``F_sum^2``); torchreid's
    ``tools/visualize_actmap.py``.

    Args:
        feature_maps: ``(B, C, h, w)`` maps (e.g. ``layer4``).

    Returns:
        ``(B, h, w)`` non-negative maps whose flattened values have unit L2 norm (all zero for an
        all-zero feature map).
    """
    if feature_maps.dim() != 4:
        raise ValueError(f"expected feature maps of shape (B, C, h, w), got {tuple(feature_maps.shape)}")
    energy = feature_maps.pow(2).sum(dim=1)
    flat = F.normalize(energy.flatten(1), p=2, dim=1)
    return flat.view_as(energy)


@dataclass(frozen=True)
class DotProductScore:
    """``s = f1 . f2`` for pairs stacked as ``[x1; x2]``: image 1 scored against the detached
    ``f2`` and image 2 against the detached ``f1``, so one backward pass gives both gradients.

    Reference: Grad-CAM (Selvaraju et al., ICCV 2017) with the similarity as the target, as in
    Chen et al., "Adapting Grad-CAM for embedding networks", WACV 2020.
    """

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(2T, D)`` normalised embeddings -> ``(2T,)`` scores."""
        total = embeddings.shape[0]
        if total % 2:
            raise ValueError(f"batch of {total} is not two equal blocks [x1; x2]")
        f1, f2 = embeddings.detach().chunk(2, dim=0)
        partner = torch.cat([f2, f1], dim=0)
        return (embeddings * partner).sum(dim=1)


def dot_product_maps_features(
    head: Callable[[torch.Tensor], torch.Tensor], a1: torch.Tensor, a2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``normalize(f1) . normalize(f2)`` for both images of each pair, head-only.

    Args:
        head: ``(B, C, h, w)`` -> ``(B, D)`` embeddings (normalised here), e.g. PCB's
            ``embed_features``.
        a1: ``(T, C, h, w)`` feature maps of the first images.
        a2: ``(T, C, h, w)`` feature maps of the second images.

    Returns:
        ``(m1, m2)``, each ``(T, h, w)`` raw maps.
    """
    if a1.shape != a2.shape:
        raise ValueError(f"pairs need feature maps of one shape, got {tuple(a1.shape)} and {tuple(a2.shape)}")
    maps, _ = attention_maps_from_features(head, torch.cat([a1, a2]), score_fn=DotProductScore())
    m1, m2 = maps.split(a1.shape[0], dim=0)
    return m1, m2


def classifier_grad_cam_features(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    feature_maps: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of a classifier's logit, from precomputed feature maps.

    ``alpha_k = mean_{h,w} d y_c / d A_k``, ``M = ReLU(sum_k alpha_k A_k)`` with ``y_c`` the logit
    of class ``c`` (the predicted class unless ``classes`` is given). Gradients are taken with
    ``torch.autograd.grad`` on a detached copy of ``feature_maps``; the result is detached.

    Reference: Selvaraju et al., "Grad-CAM", ICCV 2017, Eq. 1-2.

    Args:
        logits_fn: ``(B, C, h, w)`` -> ``(B, K)`` logits (e.g. a model's
            ``identity_logits``); sample ``i``'s logits must depend on map ``i`` only.
        feature_maps: ``(B, C, h, w)``.
        classes: ``(B,)`` classes to explain (None: the argmax of the logits).

    Returns:
        ``(maps, classes)``: ``(B, h, w)`` raw maps and the ``(B,)`` explained classes.
    """
    if feature_maps.dim() != 4:
        raise ValueError(f"expected feature maps of shape (B, C, h, w), got {tuple(feature_maps.shape)}")
    with torch.enable_grad():
        activations = feature_maps.detach().requires_grad_(True)
        logits = logits_fn(activations.clone())
        if logits.dim() != 2 or logits.shape[0] != feature_maps.shape[0]:
            raise ValueError(f"logits_fn must return (B, K) logits, got {tuple(logits.shape)}")
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        classes = torch.as_tensor(classes, device=logits.device).long()
        if classes.shape != (logits.shape[0],):
            raise ValueError(f"classes must be ({logits.shape[0]},), got {tuple(classes.shape)}")
        score = logits.gather(1, classes[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, activations)
    return grad_cam(activations.detach(), gradients).detach(), classes


def random_maps(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent uniform ``[0, 1)`` values per pixel: ``(batch, height, width)``.

    Draw them at the resolution the metric uses (not upsampled), so that the maximum is uniform
    over the pixels and the expected pointing game equals the region's area fraction.
    """
    if batch < 0 or height < 1 or width < 1:
        raise ValueError(f"invalid random map size ({batch}, {height}, {width})")
    return torch.rand(batch, height, width, generator=generator).to(device)


def centre_prior(height: int, width: int, sigma: float = 0.25) -> torch.Tensor:
    """A Gaussian bump at the image centre: ``exp(-(u^2 + v^2) / (2 sigma^2))``.

    ``u``, ``v`` are the pixel centres' offsets from the image centre as fractions of the height
    and width, so the bump follows the crop's aspect ratio (people fill re-id crops).

    Returns:
        ``(height, width)`` map in ``(0, 1]``.
    """
    if height < 1 or width < 1 or sigma <= 0:
        raise ValueError(f"invalid centre prior ({height}, {width}, sigma={sigma})")
    v = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    u = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    return torch.exp(-(v[:, None] ** 2 + u[None, :] ** 2) / (2.0 * sigma**2))


def _cam_distribution(cams: torch.Tensor) -> torch.Tensor:
    """Each CAM shifted to a zero minimum and divided by its spatial sum: ``(B, R, h, w)``."""
    shifted = cams - cams.flatten(2).min(dim=2).values[..., None, None]
    total = shifted.flatten(2).sum(dim=2)[..., None, None]
    return shifted / total.clamp(min=1e-12)


def avsl_node_maps(
    attribution: Mapping[str, Sequence[torch.Tensor] | torch.Tensor],
    same: bool | torch.Tensor,
    top_k: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of both images of each pair from AVSL's attribution, at the top level.

    For a pair explained as *different*, node ``i`` contributes ``c_i = lambda_i delta_i`` (its
    exact share of ``d_hat``, eq. 11). For a *same* pair, where the question is what makes the
    images alike, ``c_i = lambda_i (1 - delta_i / max_j delta_j)``: the node's weight in ``d_hat``
    times how little it differs relative to the pair's most different node (our choice; the paper
    ranks reliable nodes by similarity for its figures). The map is ``sum_{i in top k} c_i u_i``
    over the ``k`` largest contributions, with each node CAM ``u_i`` shifted to a zero minimum
    and divided by its spatial sum (so a node's map mass is its contribution).

    Reference: AVSL paper, section 3.4 (eq. 11) and section 4.4; ``docs/method.md`` section 5.

    Args:
        attribution: :meth:`reid.models.avsl.AVSL.attribute` output (``nodes``, ``weights``,
            ``cams1``, ``cams2``).
        same: a bool or a ``(B,)`` bool tensor.
        top_k: nodes summed (clipped to ``R``).

    Returns:
        ``(m1, m2)``, each ``(B, h_L, w_L)`` non-negative maps (detached).
    """
    nodes = attribution["nodes"][-1].detach()
    weights = attribution["weights"][-1].detach()
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    same_t = torch.as_tensor(same, dtype=torch.bool, device=nodes.device)
    if same_t.dim() == 0:
        same_t = same_t.expand(nodes.shape[0])
    largest = nodes.max(dim=1, keepdim=True).values.clamp(min=1e-12)
    alike = weights * (1.0 - nodes / largest)
    contributions = torch.where(same_t[:, None], alike, weights * nodes).clamp(min=0)
    top = contributions.topk(min(top_k, contributions.shape[1]), dim=1)
    kept = torch.zeros_like(contributions).scatter(1, top.indices, top.values)
    maps = []
    for cams in (attribution["cams1"][-1], attribution["cams2"][-1]):
        maps.append((kept[..., None, None] * _cam_distribution(cams.detach())).sum(dim=1))
    return maps[0], maps[1]
