"""Overlap metrics of binary segmentation masks (numpy only).

* :func:`foreground_iou`: ``|P and G| / |P or G|`` of the predicted and true foreground (1 when
  both are empty: nothing to find, nothing found).
* :func:`fb_iou`: the mean of the foreground IoU and the background IoU, the "binary mean IoU"
  (FB-IoU) of the one-shot segmentation literature.

* :func:`overlap_counts`: the intersections and unions of foreground and background, to add up
  over the episodes of a class: the class IoU of Shaban et al.'s protocol is the summed
  intersection over the summed union (not a mean of per-episode IoUs), and a fold's mean-IoU the
  mean of its classes' IoUs.

Pixels marked ``ignore`` (PASCAL's 255 border) count in neither.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["OverlapCounts", "fb_iou", "foreground_iou", "overlap_counts"]


def _pair(predicted: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"masks of different shapes: predicted {p.shape}, truth {g.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        if keep.shape != p.shape:
            raise ValueError(f"ignore mask of shape {keep.shape} for masks of shape {p.shape}")
        p, g = p[keep], g[keep]
    return p, g


def _iou(p: np.ndarray, g: np.ndarray) -> float:
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def foreground_iou(predicted: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of the foregrounds (module docstring)."""
    p, g = _pair(predicted, truth, ignore)
    return _iou(p, g)


def fb_iou(predicted: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean of the foreground and the background IoU (module docstring)."""
    p, g = _pair(predicted, truth, ignore)
    return 0.5 * (_iou(p, g) + _iou(~p, ~g))


class OverlapCounts(NamedTuple):
    """Pixel counts of one predicted mask against the truth (ignored pixels left out)."""

    fg_intersection: int
    fg_union: int
    bg_intersection: int
    bg_union: int


def overlap_counts(predicted: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> OverlapCounts:
    """Intersections and unions of the foregrounds and of the backgrounds (module docstring)."""
    p, g = _pair(predicted, truth, ignore)
    return OverlapCounts(
        int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g)),
        int(np.count_nonzero(~p & ~g)), int(np.count_nonzero(~p | ~g)),
    )
