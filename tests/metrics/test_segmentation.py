"""Mask overlap metrics against hand-computed values."""

import numpy as np
import pytest

from reid.metrics.segmentation import fb_iou, foreground_iou


def test_hand_computed_ious():
    truth = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    predicted = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    # foreground: intersection {(0,0), (1,1)} = 2, union {(0,0), (0,1), (1,1), (1,2)} = 4 -> 1/2
    assert foreground_iou(predicted, truth) == pytest.approx(1 / 2)
    # background: truth bg {(0,2), (1,0), (1,2)}, predicted bg {(0,1), (0,2), (1,0)}:
    # intersection {(0,2), (1,0)} = 2, union 4 -> 1/2; FB-IoU = (1/2 + 1/2) / 2
    assert fb_iou(predicted, truth) == pytest.approx(1 / 2)
    assert foreground_iou(truth, truth) == fb_iou(truth, truth) == 1.0


def test_ignored_pixels_count_in_neither():
    truth = np.array([[1, 0], [0, 0]], dtype=bool)
    predicted = np.array([[1, 1], [0, 0]], dtype=bool)
    ignore = np.array([[0, 1], [0, 0]], dtype=bool)
    assert foreground_iou(predicted, truth) == pytest.approx(1 / 2)
    assert foreground_iou(predicted, truth, ignore) == 1.0  # the wrong pixel is ignored
    assert fb_iou(predicted, truth, ignore) == 1.0


def test_empty_foregrounds_and_bad_shapes():
    empty = np.zeros((2, 2), dtype=bool)
    assert foreground_iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert foreground_iou(~empty, empty) == 0.0
    assert fb_iou(~empty, empty) == pytest.approx(0.5 * (0.0 + 0.0))
    with pytest.raises(ValueError, match="different shapes"):
        foreground_iou(np.zeros((2, 3)), empty)
    with pytest.raises(ValueError, match="ignore mask"):
        fb_iou(empty, empty, np.zeros(3))


def test_overlap_counts_by_hand():
    from reid.metrics.segmentation import overlap_counts

    predicted = np.array([[1, 1, 0, 0]], dtype=bool)
    truth = np.array([[0, 1, 1, 0]], dtype=bool)
    # foreground: 1 pixel in both, 3 in either; background: 1 in both (the last), 3 in either
    assert overlap_counts(predicted, truth) == (1, 3, 1, 3)
    ignore = np.array([[1, 0, 0, 0]], dtype=bool)  # the first pixel counts in neither
    assert overlap_counts(predicted, truth, ignore) == (1, 2, 1, 2)
