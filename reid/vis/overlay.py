"""Heatmap colouring and overlays on RGB images."""

from __future__ import annotations

import cv2
import numpy as np

from .image import check_rgb

__all__ = ["colorize_map", "overlay_heatmap"]

_RANGE_TOLERANCE = 1e-4


def _check_unit_map(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be (h, w), got {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap has non-finite values")
    if heatmap.size and (heatmap.min() < -_RANGE_TOLERANCE or heatmap.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(
            f"heatmap must lie in [0, 1] (normalise it first), got [{heatmap.min()}, {heatmap.max()}]"
        )
    return np.clip(heatmap, 0.0, 1.0)


def colorize_map(heatmap: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Colours a map in ``[0, 1]``: ``(h, w)`` float -> ``(h, w, 3)`` RGB uint8 (jet by default).

    Args:
        heatmap: ``(h, w)`` values in ``[0, 1]`` (0 blue, 1 red with jet).
        colormap: an OpenCV colormap constant.

    Returns:
        ``(h, w, 3)`` RGB uint8 colours.
    """
    levels = np.rint(_check_unit_map(heatmap) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)


def overlay_heatmap(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
) -> np.ndarray:
    """Blends a coloured heatmap onto an image: ``(1 - alpha) * image + alpha * colour``.

    A heatmap of another size is first resized (bilinear) to the image. ``alpha = 0`` returns
    a copy of the image; ``alpha = 1`` the coloured map alone.

    Args:
        image: ``(H, W, 3)`` RGB uint8 image.
        heatmap: ``(h, w)`` map in ``[0, 1]`` (e.g. a normalised attention map).
        alpha: weight of the heatmap in ``[0, 1]``.
        colormap: an OpenCV colormap constant.

    Returns:
        ``(H, W, 3)`` RGB uint8 overlay (a new array).
    """
    image = check_rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    heatmap = _check_unit_map(heatmap)
    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = np.clip(cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    colour = colorize_map(heatmap, colormap).astype(np.float64)
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
