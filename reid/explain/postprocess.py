"""Explicit post-processing steps for raw attention maps: normalisation and resizing.

Raw maps from :func:`~reid.explain.attention.attention_maps` keep their scale
(``docs/method.md`` section 2); these steps are separate so that a caller picks their order.
Both are differentiable and return new tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalize_maps", "resize_maps"]


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample min-max normalisation to ``[0, 1]``.

    ``(M - min M) / max(max M - min M, eps)`` with min and max over the spatial axes of each
    sample; a constant map (e.g. all zeros after the ReLU) becomes all zeros.

    Args:
        maps: ``(B, h, w)`` maps.
        eps: smallest range used as the denominator.

    Returns:
        ``(B, h, w)`` maps in ``[0, 1]``.
    """
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(maps.shape)}")
    flat = maps.flatten(start_dim=1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    return (maps - low) / (high - low).clamp(min=eps)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing (``align_corners=False``) of maps, e.g. to the input image size.

    Args:
        maps: ``(B, h, w)`` maps.
        size: target ``(H, W)``.

    Returns:
        ``(B, H, W)`` maps.
    """
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(maps.shape)}")
    height, width = (int(v) for v in size)
    resized = F.interpolate(maps.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    return resized.squeeze(1)
