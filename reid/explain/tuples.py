"""One attention map per image of a Siamese pair, a triplet or a quadruplet.

Each helper stacks the images (or feature maps) of a batch of ``T`` tuples role by role, runs
one forward and one backward pass with a :class:`~reid.explain.scores.TupleScore` (weights from
the tuple's detached embeddings, shared by its images) and splits the maps back by role.

Two families:

* ``explain_pair(model, layer, x1, x2, same)`` etc. run the whole model on the images;
* ``explain_pair_features(head, a1, a2, same)`` etc. start from feature maps computed once per
  image (PCB: ``model.forward_features``), so explaining many pairs of the same images costs
  head passes only.

As for :func:`~reid.explain.attention.attention_maps`, the model (or head) must be in eval mode.

Reference: SAM paper, section 3.1 (Eq. 1, Siamese, triplet and quadruplet weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .attention import attention_maps, attention_maps_from_features
from .scores import TupleScore, pair_score, quadruplet_score, triplet_score

__all__ = [
    "explain_pair",
    "explain_pair_features",
    "explain_quadruplet",
    "explain_quadruplet_features",
    "explain_triplet",
    "explain_triplet_features",
]

Head = Callable[[torch.Tensor], torch.Tensor]


def _stack_roles(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    first = parts[0]
    for part in parts[1:]:
        if part.shape != first.shape:
            raise ValueError(
                f"the images of each role must share one shape, got {tuple(first.shape)} "
                f"and {tuple(part.shape)}"
            )
    return torch.cat(list(parts), dim=0)


def _explain_images(
    model: nn.Module,
    layer: nn.Module | str,
    images: Sequence[torch.Tensor],
    score: TupleScore,
    create_graph: bool,
) -> tuple[torch.Tensor, ...]:
    maps, _ = attention_maps(model, layer, _stack_roles(images), create_graph=create_graph, score_fn=score)
    return tuple(maps.split(images[0].shape[0], dim=0))


def _explain_features(
    head: Head,
    feature_maps: Sequence[torch.Tensor],
    score: TupleScore,
    create_graph: bool,
) -> tuple[torch.Tensor, ...]:
    stacked = _stack_roles(feature_maps)
    maps, _ = attention_maps_from_features(head, stacked, create_graph=create_graph, score_fn=score)
    return tuple(maps.split(feature_maps[0].shape[0], dim=0))


def explain_pair(
    model: nn.Module,
    layer: nn.Module | str,
    x1: torch.Tensor,
    x2: torch.Tensor,
    same: bool | torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Siamese explanation: maps for both images of each pair.

    Reference: SAM paper, section 3.1 (Siamese: ``w = 1 - |f1 - f2|`` or ``|f1 - f2|``).

    Args:
        model: eval-mode model, ``(B, 3, H, W)`` -> ``(B, D)``.
        layer: the explained module or its dotted name.
        x1: ``(T, 3, H, W)`` first images.
        x2: ``(T, 3, H, W)`` second images.
        same: a bool or a ``(T,)`` bool tensor: whether each pair shows one identity.
        create_graph: second-order gradients (see :func:`attention_maps`).

    Returns:
        ``(m1, m2)``, each ``(T, h, w)`` raw maps.
    """
    m1, m2 = _explain_images(model, layer, (x1, x2), pair_score(same), create_graph)
    return m1, m2


def explain_triplet(
    model: nn.Module,
    layer: nn.Module | str,
    xa: torch.Tensor,
    xp: torch.Tensor,
    xn: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet explanation ("why is ``xp`` closer to ``xa`` than ``xn``").

    Reference: SAM paper, section 3.1 (``w = (1 - |fa - fp|) * |fa - fn|``).

    Args:
        model: eval-mode model, ``(B, 3, H, W)`` -> ``(B, D)``.
        layer: the explained module or its dotted name.
        xa: ``(T, 3, H, W)`` anchors.
        xp: ``(T, 3, H, W)`` positives (or the closer gallery image).
        xn: ``(T, 3, H, W)`` negatives (or the farther gallery image).
        create_graph: second-order gradients.

    Returns:
        ``(ma, mp, mn)``, each ``(T, h, w)`` raw maps.
    """
    ma, mp, mn = _explain_images(model, layer, (xa, xp, xn), triplet_score(), create_graph)
    return ma, mp, mn


def explain_quadruplet(
    model: nn.Module,
    layer: nn.Module | str,
    xa: torch.Tensor,
    xp: torch.Tensor,
    xn1: torch.Tensor,
    xn2: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quadruplet explanation.

    Reference: SAM paper, section 3.1 (``w = (1 - |fa - fp|) * |fa - fn1| * |fa - fn2|``).

    Args:
        model: eval-mode model, ``(B, 3, H, W)`` -> ``(B, D)``.
        layer: the explained module or its dotted name.
        xa: ``(T, 3, H, W)`` anchors.
        xp: ``(T, 3, H, W)`` positives.
        xn1: ``(T, 3, H, W)`` first negatives.
        xn2: ``(T, 3, H, W)`` second negatives.
        create_graph: second-order gradients.

    Returns:
        ``(ma, mp, mn1, mn2)``, each ``(T, h, w)`` raw maps.
    """
    ma, mp, mn1, mn2 = _explain_images(model, layer, (xa, xp, xn1, xn2), quadruplet_score(), create_graph)
    return ma, mp, mn1, mn2


def explain_pair_features(
    head: Head,
    a1: torch.Tensor,
    a2: torch.Tensor,
    same: bool | torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Siamese explanation from precomputed feature maps (head-only gradient).

    Reference: SAM paper, section 3.1.

    Args:
        head: ``(B, C, h, w)`` -> ``(B, D)``, e.g. PCB's ``model.embed_features``.
        a1: ``(T, C, h, w)`` feature maps of the first images.
        a2: ``(T, C, h, w)`` feature maps of the second images.
        same: a bool or a ``(T,)`` bool tensor.
        create_graph: second-order gradients.

    Returns:
        ``(m1, m2)``, each ``(T, h, w)`` raw maps.
    """
    m1, m2 = _explain_features(head, (a1, a2), pair_score(same), create_graph)
    return m1, m2


def explain_triplet_features(
    head: Head,
    aa: torch.Tensor,
    ap: torch.Tensor,
    an: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet explanation from precomputed feature maps (head-only gradient).

    Reference: SAM paper, section 3.1.

    Args:
        head: ``(B, C, h, w)`` -> ``(B, D)``.
        aa: ``(T, C, h, w)`` anchor feature maps.
        ap: ``(T, C, h, w)`` positive (closer) feature maps.
        an: ``(T, C, h, w)`` negative (farther) feature maps.
        create_graph: second-order gradients.

    Returns:
        ``(ma, mp, mn)``, each ``(T, h, w)`` raw maps.
    """
    ma, mp, mn = _explain_features(head, (aa, ap, an), triplet_score(), create_graph)
    return ma, mp, mn


def explain_quadruplet_features(
    head: Head,
    aa: torch.Tensor,
    ap: torch.Tensor,
    an1: torch.Tensor,
    an2: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quadruplet explanation from precomputed feature maps (head-only gradient).

    Reference: SAM paper, section 3.1.

    Args:
        head: ``(B, C, h, w)`` -> ``(B, D)``.
        aa: ``(T, C, h, w)`` anchor feature maps.
        ap: ``(T, C, h, w)`` positive feature maps.
        an1: ``(T, C, h, w)`` first negative feature maps.
        an2: ``(T, C, h, w)`` second negative feature maps.
        create_graph: second-order gradients.

    Returns:
        ``(ma, mp, mn1, mn2)``, each ``(T, h, w)`` raw maps.
    """
    ma, mp, mn1, mn2 = _explain_features(head, (aa, ap, an1, an2), quadruplet_score(), create_graph)
    return ma, mp, mn1, mn2
