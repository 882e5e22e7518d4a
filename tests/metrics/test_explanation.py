"""Explanation-quality metrics and comparison explainers on tiny hand-built maps with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from reid.explain.baselines import (
    DotProductScore,
    activation_maps,
    avsl_node_maps,
    centre_prior,
    classifier_grad_cam_features,
    random_maps,
)
from reid.metrics.explanation import (
    baseline_images,
    curve_auc,
    deletion_curve,
    dilate_regions,
    energy_inside,
    insertion_curve,
    perturbation_order,
    pointing_game,
    step_counts,
)


def _region(cells, shape=(5, 4)):
    region = torch.zeros(1, *shape, dtype=torch.bool)
    for y, x in cells:
        region[0, y, x] = True
    return region


def _peak_map(y, x, shape=(5, 4)):
    maps = torch.zeros(1, *shape)
    maps[0, y, x] = 1.0
    maps[0, 0, 0] = 0.5  # not constant elsewhere
    return maps


# -- pointing game -------------------------------------------------------------------------------


def test_pointing_game_hit_miss_and_tolerance():
    region = _region([(2, 1)])
    assert pointing_game(_peak_map(2, 1), region).tolist() == [True]
    assert pointing_game(_peak_map(4, 3), region).tolist() == [False]
    # (3, 2) is one pixel away diagonally: Chebyshev distance 1
    assert pointing_game(_peak_map(3, 2), region, tolerance=0).tolist() == [False]
    assert pointing_game(_peak_map(3, 2), region, tolerance=1).tolist() == [True]
    # (4, 3) is two pixels away
    assert pointing_game(_peak_map(4, 3), region, tolerance=1).tolist() == [False]
    assert pointing_game(_peak_map(4, 3), region, tolerance=2).tolist() == [True]


def test_pointing_game_batch_ties_and_constant_maps():
    regions = torch.cat([_region([(0, 1)]), _region([(0, 0)]), _region([(0, 0)])])
    maps = torch.zeros(3, 5, 4)
    maps[0, 0, 1] = maps[0, 4, 3] = 2.0  # tie: the first in raster order, (0, 1), wins
    maps[1] = 0.0  # constant: no maximum, a miss even though argmax would be (0, 0)
    maps[2] = 7.0
    assert pointing_game(maps, regions).tolist() == [True, False, False]


def test_dilate_regions_is_a_square_band():
    grown = dilate_regions(_region([(2, 1)]), 1)[0]
    expected = torch.zeros(5, 4, dtype=torch.bool)
    expected[1:4, 0:3] = True
    assert torch.equal(grown, expected)
    assert torch.equal(dilate_regions(_region([(2, 1)]), 0), _region([(2, 1)]))
    with pytest.raises(ValueError, match="tolerance"):
        dilate_regions(_region([(2, 1)]), -1)


def test_localisation_checks_shapes_and_signs():
    with pytest.raises(ValueError, match="resize the maps"):
        pointing_game(torch.zeros(1, 5, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-negative"):
        energy_inside(-torch.ones(1, 5, 4), _region([(0, 0)]))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pointing_game(torch.zeros(5, 4), torch.zeros(5, 4, dtype=torch.bool))


# -- energy inside ---------------------------------------------------------------------------------


def test_energy_inside_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    regions = torch.tensor([[[True, False], [False, True]], [[True, True], [False, False]]])
    energy = energy_inside(maps, regions)
    assert energy[0].item() == pytest.approx(5.0 / 8.0)
    assert math.isnan(energy[1].item())  # an all-zero map has no energy to place


# -- deletion / insertion ------------------------------------------------------------------------------


def test_step_counts_and_order():
    assert step_counts(6, 3) == [0, 2, 4, 6]
    assert step_counts(5, 2) == [0, 2, 5]  # round(2.5) = 2 (half to even)
    maps = torch.tensor([[[0.2, 0.9], [0.9, 0.1]]])
    # descending, ties by raster index: (0,1) first, then (1,0), (0,0), (1,1)
    assert perturbation_order(maps).tolist() == [[[2, 0], [1, 3]]]
    with pytest.raises(ValueError, match="steps"):
        step_counts(4, 0)


def _toy_problem():
    """One 1x2x2 'image' with pixel values 1, 2, 3, 4 and a toy model scoring the pixel sum."""
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])  # order: 2, 3, 4, 1 (values)
    baseline = torch.zeros_like(image)
    calls = []

    def score(x):
        calls.append(x.clone())
        return x.sum(dim=(1, 2, 3))

    return image, maps, baseline, score, calls


def test_deletion_curve_and_auc_against_hand_computed_values():
    image, maps, baseline, score, calls = _toy_problem()
    curve = deletion_curve(score, image, maps, baseline, steps=4)
    # remove 2, then 3, then 4, then 1: sums 10, 8, 5, 1, 0
    assert curve.tolist() == [[10.0, 8.0, 5.0, 1.0, 0.0]]
    assert len(calls) == 5
    # trapezoids of width 1/4: (10+8 + 8+5 + 5+1 + 1+0) / 8 = 38 / 8
    assert curve_auc(curve).tolist() == [pytest.approx(38.0 / 8.0)]


def test_insertion_curve_and_auc_against_hand_computed_values():
    image, maps, baseline, score, _ = _toy_problem()
    curve = insertion_curve(score, image, maps, baseline, steps=2)
    # reveal 2 pixels (2 and 3), then all: sums 0, 5, 10
    assert curve.tolist() == [[0.0, 5.0, 10.0]]
    assert curve_auc(curve).tolist() == [pytest.approx((0 + 5 + 5 + 10) / 4.0)]


def test_known_endpoint_scores_skip_model_calls():
    image, maps, baseline, score, calls = _toy_problem()
    curve = deletion_curve(score, image, maps, baseline, steps=4,
                           full_score=torch.tensor([10.0]), baseline_score=torch.tensor([0.0]))
    assert curve.tolist() == [[10.0, 8.0, 5.0, 1.0, 0.0]] and len(calls) == 3
    calls.clear()
    curve = insertion_curve(score, image, maps, baseline, steps=4,
                            full_score=torch.tensor([-7.0]), baseline_score=torch.tensor([-9.0]))
    assert curve[0, 0].item() == -9.0 and curve[0, -1].item() == -7.0 and len(calls) == 3


def test_a_faithful_map_beats_its_reverse():
    """The toy score depends on the left column only: the map pointing there deletes faster."""
    image = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 1.0

    def score(x):
        return x[..., 0].sum(dim=(1, 2))

    good = torch.zeros(2, 4, 4)
    good[..., 0] = 1.0
    baseline = baseline_images(image, "mean")
    good_del = curve_auc(deletion_curve(score, image, good, baseline, 4))
    bad_del = curve_auc(deletion_curve(score, image, 1 - good, baseline, 4))
    good_ins = curve_auc(insertion_curve(score, image, good, baseline, 4))
    bad_ins = curve_auc(insertion_curve(score, image, 1 - good, baseline, 4))
    assert (good_del < bad_del).all() and (good_ins > bad_ins).all()


def test_curve_input_checks():
    image, maps, baseline, score, _ = _toy_problem()
    with pytest.raises(ValueError, match="resize them first"):
        deletion_curve(score, image, torch.zeros(1, 3, 3), baseline)
    with pytest.raises(ValueError, match=r"\(1,\) scores"):
        deletion_curve(lambda x: x.sum(), image, maps, baseline)
    with pytest.raises(ValueError, match="K >= 1"):
        curve_auc(torch.zeros(2, 1))


def test_baselines_mean_and_blur():
    image = torch.zeros(1, 2, 9, 9)
    image[:, :, 4, 4] = 1.0
    assert torch.equal(baseline_images(image, "mean"), torch.zeros_like(image))
    blurred = baseline_images(image, "blur", sigma=1.0)
    assert blurred.shape == image.shape
    assert blurred.sum().item() == pytest.approx(2.0, rel=1e-5)  # the kernel sums to one
    assert blurred[0, 0, 4, 4] < 1.0 and blurred[0, 0, 4, 3] > 0
    assert blurred[0, 0, 4, 3].item() == pytest.approx(blurred[0, 0, 3, 4].item())
    with pytest.raises(ValueError, match="baseline"):
        baseline_images(image, "zeros")


# -- comparison explainers --------------------------------------------------------------------------


def test_activation_map_is_normalised_sum_of_squares():
    feats = torch.tensor([[[[1.0, 0.0]], [[2.0, 1.0]]]])  # (1, 2, 1, 2)
    # squares summed over channels: [5, 1], L2-normalised: [5, 1] / sqrt(26)
    expected = torch.tensor([[[5.0, 1.0]]]) / math.sqrt(26.0)
    assert torch.allclose(activation_maps(feats), expected)


def test_dot_product_score_uses_the_partner_embedding():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    # pairs (row 0, row 2) and (row 1, row 3): each image scored against its partner
    assert torch.allclose(DotProductScore()(emb), torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_classifier_grad_cam_by_hand():
    """Linear logits of the spatial mean: alpha = W[c] / (h w), map = ReLU(sum_k alpha_k A_k)."""
    weight = torch.tensor([[1.0, -1.0], [0.0, 2.0]])  # (classes, channels)
    feats = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2): channel means 2, 1

    def logits_fn(a):
        return a.mean(dim=(2, 3)) @ weight.T  # logits [2 - 1, 2] -> class 1

    maps, classes = classifier_grad_cam_features(logits_fn, feats)
    assert classes.tolist() == [1]
    # alpha = [0, 2] / 2 = [0, 1]: map = A_1 = [2, 0]
    assert torch.allclose(maps, torch.tensor([[[2.0, 0.0]]]))
    maps0, _ = classifier_grad_cam_features(logits_fn, feats, torch.tensor([0]))
    # alpha = [1, -1] / 2: map = ReLU(0.5 [1, 3] - 0.5 [2, 0]) = [0, 1.5]
    assert torch.allclose(maps0, torch.tensor([[[0.0, 1.5]]]))
    assert not feats.requires_grad


def test_centre_prior_peaks_in_the_middle():
    prior = centre_prior(5, 3)
    assert prior.shape == (5, 3)
    assert prior[2, 1].item() == pytest.approx(1.0)
    assert pointing_game(prior[None], _region([(2, 1)], (5, 3))).tolist() == [True]
    assert prior[0, 0] < prior[1, 1] < prior[2, 1]


def test_avsl_node_maps_weight_the_top_contributions():
    nodes = [torch.tensor([[0.0, 1.0, 3.0]])]  # delta of the top level, 3 nodes
    weights = [torch.tensor([[1.0, 2.0, 1.0]])]  # lambda: contributions 0, 2, 3
    cams = torch.zeros(1, 3, 1, 2)
    cams[0, 0] = torch.tensor([[5.0, 1.0]])
    cams[0, 1] = torch.tensor([[1.0, 3.0]])  # distribution [0, 1]
    cams[0, 2] = torch.tensor([[4.0, 2.0]])  # distribution [1, 0]
    attribution = {"nodes": nodes, "weights": weights, "cams1": [cams], "cams2": [cams.flip(-1)]}
    m1, m2 = avsl_node_maps(attribution, same=False, top_k=2)
    assert torch.allclose(m1, torch.tensor([[[3.0, 2.0]]]))
    assert torch.allclose(m2, torch.tensor([[[2.0, 3.0]]]))
    # same pair: lambda (1 - delta / max delta) = [1, 2 * 2/3, 0]; top 1 is node 1
    m1, _ = avsl_node_maps(attribution, same=True, top_k=1)
    assert torch.allclose(m1, torch.tensor([[[0.0, 4.0 / 3.0]]]))


def test_random_floor_scores_the_area_fraction():
    """A uniform random map hits a region with probability = its area fraction (binomial check)."""
    generator = torch.Generator().manual_seed(0)
    count, height, width = 4000, 12, 6
    regions = torch.zeros(count, height, width, dtype=torch.bool)
    sizes = torch.randint(1, 30, (count,), generator=generator)
    for i, size in enumerate(sizes.tolist()):
        cells = torch.randperm(height * width, generator=generator)[:size]
        regions[i].view(-1)[cells] = True
    maps = random_maps(count, height, width, generator=generator)
    hits = pointing_game(maps, regions).double()
    p = regions.flatten(1).double().mean(dim=1)
    # the hit count is a sum of independent Bernoulli(p_i): within 4 standard deviations
    sd = torch.sqrt((p * (1 - p)).sum())
    assert abs(hits.sum() - p.sum()) < 4 * sd
    energy = energy_inside(maps, regions)
    # energy of uniform noise: mean close to the area fraction (per-map sd < 0.1, 4000 maps)
    assert abs(energy.mean() - p.mean()).item() < 0.01


def test_rank_correlation_by_hand_and_against_scipy():
    from scipy import stats

    from reid.metrics.explanation import rank_correlation

    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert rank_correlation(a, a).item() == pytest.approx(1.0)
    assert rank_correlation(a, -a).item() == pytest.approx(-1.0)
    # ties share their mean rank: x = (0, 0, 1, 2) -> ranks (1.5, 1.5, 3, 4); y ranks (1, 2, 3, 4)
    x, y = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]]), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    rx, ry = torch.tensor([1.5, 1.5, 3, 4]) - 2.5, torch.tensor([1.0, 2, 3, 4]) - 2.5
    assert rank_correlation(x, y).item() == pytest.approx(float((rx * ry).sum() / (rx.norm() * ry.norm())))
    torch.manual_seed(0)
    first, second = torch.randn(5, 4, 3).relu(), torch.randn(5, 4, 3).relu()  # many tied zeros
    ours = rank_correlation(first, second)
    for i in range(5):
        expected = stats.spearmanr(first[i].flatten().numpy(), second[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(expected, abs=1e-9)
    assert torch.isnan(rank_correlation(torch.ones(1, 2, 2), a)).all()
    with pytest.raises(ValueError, match="same shape"):
        rank_correlation(a, torch.ones(1, 3, 2))
