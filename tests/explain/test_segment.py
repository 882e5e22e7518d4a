"""Seeds from a map, GrabCut from seeds and rectangles, the baseline rectangles."""

import cv2
import numpy as np
import pytest

from reid.explain.segment import (
    SeedThresholds,
    centred_box,
    grabcut_from_rect,
    grabcut_from_seeds,
    seeds_from_map,
    whole_frame,
)
from reid.metrics.segmentation import foreground_iou


def test_seeds_follow_the_thresholds_of_the_normalised_map():
    attention = np.array([[0.0, 1.0], [2.0, 4.0]])  # normalised: 0, 0.25, 0.5, 1
    seeds = seeds_from_map(attention, (2, 2), SeedThresholds(fg=0.75, probable_fg=0.4, bg=0.1))
    assert seeds.tolist() == [[cv2.GC_BGD, cv2.GC_PR_BGD], [cv2.GC_PR_FGD, cv2.GC_FGD]]
    # a flat map has no foreground at all
    assert (seeds_from_map(np.ones((3, 3)), (6, 6)) == cv2.GC_BGD).all()
    with pytest.raises(ValueError, match="bg < probable_fg"):
        SeedThresholds(fg=0.5, probable_fg=0.6, bg=0.1)
    with pytest.raises(ValueError, match="finite 2-D"):
        seeds_from_map(np.array([np.nan, 1.0]), (2, 2))


def two_colour_image():
    image = np.zeros((48, 32, 3), np.uint8)
    image[:] = (40, 90, 200)
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((48, 32), bool)
    truth[12:40, 10:22] = True
    image[truth] = (210, 60, 30)
    return image, truth


def test_grabcut_recovers_an_object_from_coarse_seeds():
    image, truth = two_colour_image()
    coarse = np.full((6, 4), 0.2)  # probable background: GrabCut's colour models decide
    coarse[0, :] = coarse[-1, :] = 0.0  # definite background along the top and bottom rows
    coarse[2:4, 1:3] = 1.0  # definite foreground: a blob inside the object only
    mask = grabcut_from_seeds(image, seeds_from_map(coarse, truth.shape))
    assert foreground_iou(mask, truth) > 0.9
    # deterministic for a seed
    assert np.array_equal(mask, grabcut_from_seeds(image, seeds_from_map(coarse, truth.shape)))
    # no foreground seed: empty; all foreground: the full frame (GrabCut is not run)
    assert not grabcut_from_seeds(image, np.full(truth.shape, cv2.GC_BGD, np.uint8)).any()
    assert grabcut_from_seeds(image, np.full(truth.shape, cv2.GC_FGD, np.uint8)).all()
    with pytest.raises(ValueError, match="RGB uint8"):
        grabcut_from_seeds(image.astype(float), np.zeros(truth.shape, np.uint8))


def test_rectangles():
    assert centred_box(100, 50) == (12, 10, 25, 80)  # 50 x 0.5 = 25 wide, 100 x 0.8 = 80 high, centred
    assert whole_frame(10, 8, margin=1) == (1, 1, 6, 8)
    with pytest.raises(ValueError, match="no room"):
        whole_frame(2, 2)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        centred_box(10, 10, box_width=0)
    image, truth = two_colour_image()
    assert foreground_iou(grabcut_from_rect(image, centred_box(48, 32)), truth) > 0.9
    with pytest.raises(ValueError, match="does not fit"):
        grabcut_from_rect(image, (0, 0, 40, 10))


def test_combine_shots_is_the_mean_of_the_shots():
    from reid.explain.segment import combine_shots

    maps = np.array([[[0.0, 2.0]], [[4.0, 6.0]]])  # two shots of a 1x2 map
    assert combine_shots(maps).tolist() == [[2.0, 4.0]]
    assert combine_shots(maps[:1]).tolist() == [[0.0, 2.0]]  # one shot: as it is
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        combine_shots(np.zeros((2, 2)))


def test_exclusive_masks_gives_a_contested_pixel_to_the_higher_map():
    from reid.explain.segment import exclusive_masks

    masks = np.array([[[1, 1, 0, 0]], [[0, 1, 1, 0]]], dtype=bool)  # pixel 1 is claimed by both
    maps = np.array([[[0.9, 0.2, 0.0, 0.0]], [[0.0, 0.7, 0.8, 0.0]]])
    kept = exclusive_masks(masks, maps)
    assert kept.tolist() == [[[True, False, False, False]], [[False, True, True, False]]]
    ties = exclusive_masks(masks, np.full(masks.shape, 0.5))  # a tie: the first class
    assert ties[:, 0, 1].tolist() == [True, False]
    no_maps = exclusive_masks(masks, None)  # model-free: the first claiming class
    assert no_maps.tolist() == [[[True, True, False, False]], [[False, False, True, False]]]
    assert not (kept.sum(axis=0) > 1).any()
    with pytest.raises(ValueError, match="maps of shape"):
        exclusive_masks(masks, maps[:1])
