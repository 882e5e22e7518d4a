"""One-shot segmentation from a pair's explanation map, with GrabCut (SAM paper, section 4.3).

Given a support image of a class and a query image, the pair's similarity attention on the query
(what of the query made it alike to the support) seeds OpenCV's GrabCut (Rother et al.,
"GrabCut", SIGGRAPH 2004), whose colour models turn the coarse map into a mask. This module holds
the model-free part: seeds from a map, GrabCut from seeds or from a rectangle, and the two
rectangle baselines; ``reid segment`` (:mod:`reid.cli.segment`) computes the maps and scores the
masks.

**Seeds** (this project's decision; the paper does not give its thresholds): the map is resized
to the image (bilinear) and min-max normalised to ``[0, 1]``; a pixel is definite foreground at
``>= fg``, probable foreground at ``>= probable_fg``, definite background at ``<= bg``, and
probable background otherwise. GrabCut needs both kinds: a map with no foreground seed returns an
empty mask and one with no background seed the full frame, without running GrabCut.

**Few-shot episodes** (``reid segment --ways 2 --shots 5``): with ``K`` supports per class, the
query's map for a class is the mean of its ``K`` maps (:func:`combine_shots`); with two classes,
each class's map comes from the triplet form of similarity attention (the class's support the
positive, the other class's the negative: SAM paper, section 4.3) and a pixel both masks claim goes
to the class whose normalised map is higher there (:func:`exclusive_masks`).

**Baselines that need no model**: GrabCut from a centred box (the middle ``box_width`` x
``box_height`` of the frame, for crops centred on their object) and from the whole frame (a
rectangle ``margin`` pixels inside the border, the least GrabCut accepts).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "SeedThresholds",
    "centred_box",
    "combine_shots",
    "exclusive_masks",
    "normalised_map",
    "grabcut_from_rect",
    "grabcut_from_seeds",
    "seeds_from_map",
    "whole_frame",
]


@dataclass(frozen=True)
class SeedThresholds:
    """Thresholds of the normalised map (module docstring)."""

    fg: float = 0.75
    probable_fg: float = 0.4
    bg: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.bg < self.probable_fg <= self.fg <= 1.0:
            raise ValueError(
                f"need 0 <= bg < probable_fg <= fg <= 1, got bg {self.bg}, probable_fg {self.probable_fg}, fg {self.fg}"
            )


def _normalised(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``attention`` resized bilinearly to ``size`` (H, W) and min-max normalised (flat -> zeros)."""
    values = np.asarray(attention, dtype=np.float32)
    if values.ndim != 2 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"the map must be a finite 2-D array, got shape {values.shape}")
    resized = cv2.resize(values, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    low, high = float(resized.min()), float(resized.max())
    return np.zeros_like(resized) if high <= low else (resized - low) / (high - low)


def seeds_from_map(attention: np.ndarray, size: tuple[int, int], thresholds: SeedThresholds = SeedThresholds()) -> np.ndarray:
    """GrabCut's ``(H, W)`` uint8 label mask (``cv2.GC_FGD``, ``GC_PR_FGD``, ``GC_PR_BGD``,
    ``GC_BGD``) from a map (module docstring)."""
    t = _normalised(attention, size)
    seeds = np.full(t.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[t >= thresholds.probable_fg] = cv2.GC_PR_FGD
    seeds[t >= thresholds.fg] = cv2.GC_FGD
    seeds[t <= thresholds.bg] = cv2.GC_BGD
    return seeds


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"need an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1])  # OpenCV's BGR


def grabcut_from_seeds(image: np.ndarray, seeds: np.ndarray, iterations: int = 5, seed: int = 0) -> np.ndarray:
    """``(H, W)`` bool foreground of GrabCut started from a seed mask (:func:`seeds_from_map`).

    ``seed`` fixes OpenCV's random generator (its GMM initialisation uses k-means), so the same
    inputs give the same mask.
    """
    bgr = _check_image(image)
    labels = np.array(seeds, dtype=np.uint8, copy=True)
    if labels.shape != bgr.shape[:2]:
        raise ValueError(f"seeds of shape {labels.shape} for an image of shape {bgr.shape[:2]}")
    foreground = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if not foreground.any():
        return np.zeros(labels.shape, dtype=bool)
    if foreground.all():
        return np.ones(labels.shape, dtype=bool)
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def grabcut_from_rect(image: np.ndarray, rect: tuple[int, int, int, int], iterations: int = 5, seed: int = 0) -> np.ndarray:
    """``(H, W)`` bool foreground of GrabCut started from a rectangle ``(x, y, width, height)``
    (outside it: definite background)."""
    bgr = _check_image(image)
    height, width = bgr.shape[:2]
    x, y, w, h = rect
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"rectangle {rect} does not fit a {width}x{height} image")
    labels = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, labels, (int(x), int(y), int(w), int(h)), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def centred_box(height: int, width: int, box_width: float = 0.5, box_height: float = 0.8) -> tuple[int, int, int, int]:
    """The centred rectangle ``(x, y, w, h)`` covering ``box_width`` x ``box_height`` of the frame."""
    if not (0 < box_width <= 1 and 0 < box_height <= 1):
        raise ValueError(f"box fractions must be in (0, 1], got {box_width} and {box_height}")
    w, h = max(1, round(width * box_width)), max(1, round(height * box_height))
    w, h = min(w, width - 2), min(h, height - 2)  # GrabCut needs some background outside
    return (width - w) // 2, (height - h) // 2, w, h


def whole_frame(height: int, width: int, margin: int = 1) -> tuple[int, int, int, int]:
    """The rectangle ``margin`` pixels inside the border."""
    if height <= 2 * margin or width <= 2 * margin:
        raise ValueError(f"a {width}x{height} image has no room inside a {margin}-pixel margin")
    return margin, margin, width - 2 * margin, height - 2 * margin


def combine_shots(maps: np.ndarray) -> np.ndarray:
    """K-shot: the ``(h, w)`` mean of the ``(K, h, w)`` raw maps of the query against each of the
    class's ``K`` supports (this project's rule; the paper does not give one). Raw maps of one query
    share one scale (the same feature map, weighted by each support), so their mean weighs every
    support alike; a single shot is returned as it is."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"need (K, h, w) maps with K >= 1, got shape {maps.shape}")
    return maps.mean(axis=0)


def exclusive_masks(masks: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """N-way: gives every pixel to at most one class. ``masks`` ``(N, H, W)`` bool, one mask per
    class; a pixel that several classes claim goes to the one whose map (``(N, H, W)``, each
    normalised to ``[0, 1]``) is highest there, ties to the first class; without maps (the
    model-free baselines) to the first claiming class. A pixel no class claims stays background.
    (This project's rule: the paper does not say how the two masks of a 2-way episode meet.)"""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"need (N, H, W) masks, got shape {masks.shape}")
    if maps is None:
        score = np.broadcast_to(-np.arange(masks.shape[0], dtype=np.float64)[:, None, None], masks.shape)
    else:
        score = np.asarray(maps, dtype=np.float64)
        if score.shape != masks.shape:
            raise ValueError(f"maps of shape {score.shape} for masks of shape {masks.shape}")
    winner = np.where(masks, score, -np.inf).argmax(axis=0)
    return masks & (winner[None] == np.arange(masks.shape[0])[:, None, None])


def normalised_map(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``attention`` resized to ``size`` (H, W) and min-max normalised, as seeds see it."""
    return _normalised(attention, size)
