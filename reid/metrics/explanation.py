"""Faithfulness metrics of explanation maps: pointing game, energy inside, deletion, insertion.

Two families, both on batches of maps ``(B, H, W)`` that are already at the resolution of what
they are compared with (resize them first, e.g. with :func:`reid.explain.resize_maps`):

* **Ground-truth localisation** (needs a region, e.g. the controlled synthetic triplets of
  :mod:`reid.data.controlled`):

  - :func:`pointing_game`: a hit when the map's maximum lies inside the region dilated by a
    tolerance band of ``tolerance`` pixels (Chebyshev distance: a ``(2t + 1)`` square around
    every region pixel). A constant map (e.g. all zero after Grad-CAM's ReLU) has no maximum
    and is a miss. Ties between several maximal pixels are broken by the first in raster order.
    Reference: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016,
    section 5.1 (pointing game with a 15-pixel tolerance at 224 px).
  - :func:`energy_inside`: ``sum(M * R) / sum(M)`` for a non-negative map ``M`` and region
    ``R`` (no tolerance band); ``nan`` for an all-zero map. Reference: Wang et al.,
    "Score-CAM", CVPRW 2020, section 4.3 (energy-based pointing game).

  A uniformly random map scores the region's (dilated) area fraction on both, in expectation.

* **Perturbation curves** (no ground truth, any dataset): pixels are removed
  (:func:`deletion_curve`) or revealed (:func:`insertion_curve`) in the order of the map,
  most important first, in ``steps`` equal steps of ``round(k N / steps)`` pixels
  (``k = 0..steps``, ``N = H W``); removed or unrevealed pixels take the value of a *baseline*
  image (the caller's choice, see :func:`baseline_images`). The quantity is the caller's score of
  each perturbed image, for re-id the similarity of the pair (cosine of normalised embeddings,
  ``-d_hat`` for AVSL). :func:`curve_auc` integrates a curve over the removed/revealed fraction
  axis ``[0, 1]`` with the trapezoidal rule. A faithful map gives a *low* deletion AUC (the
  similarity falls fast) and a *high* insertion AUC. Pixel order: descending map value, ties by
  raster index (a stable sort), so a constant map removes rows top to bottom.
  Reference: Petsiuk et al., "RISE", BMVC 2018, section 4.1 (deletion and insertion metrics).

numpy/torch only; nothing here knows models. The definitions are ``docs/method.md`` section 7;
the results and how to read them are in ``docs/explanation-quality.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "baseline_images",
    "curve_auc",
    "deletion_curve",
    "dilate_regions",
    "energy_inside",
    "insertion_curve",
    "perturbation_order",
    "pointing_game",
    "rank_correlation",
    "step_counts",
]

ImageScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 3, H, W)`` perturbed images -> ``(B,)`` scores (e.g. the pair similarity)."""


def _as_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 3:
        raise ValueError(f"expected {name} of shape (B, H, W), got {tuple(maps.shape)}")
    return maps


def _as_regions(regions: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    regions = torch.as_tensor(regions, device=maps.device)
    if regions.shape != maps.shape:
        raise ValueError(
            f"regions {tuple(regions.shape)} must have the shape of the maps {tuple(maps.shape)}; "
            "resize the maps to the region's resolution first"
        )
    return regions.bool()


def dilate_regions(regions: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Grows each region by ``tolerance`` pixels (Chebyshev distance, a square structuring element).

    Args:
        regions: ``(B, H, W)`` bool.
        tolerance: band width in pixels, ``>= 0``.

    Returns:
        ``(B, H, W)`` bool: pixels within ``tolerance`` of the region (the region itself included).
    """
    regions = _as_maps(regions, "regions").bool()
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance == 0:
        return regions.clone()
    size = 2 * int(tolerance) + 1
    grown = F.max_pool2d(regions.float()[:, None], size, stride=1, padding=int(tolerance))
    return grown[:, 0] > 0


def pointing_game(maps: torch.Tensor, regions: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum falls inside its region grown by ``tolerance`` pixels.

    Reference: Zhang et al., ECCV 2016, section 5.1 (see the module docstring for ties and
    constant maps).

    Args:
        maps: ``(B, H, W)`` maps (any sign).
        regions: ``(B, H, W)`` bool ground-truth regions.
        tolerance: tolerance band in pixels.

    Returns:
        ``(B,)`` bool hits; a constant map is a miss.
    """
    maps = _as_maps(maps)
    regions = dilate_regions(_as_regions(regions, maps), tolerance)
    flat = maps.flatten(1)
    peak = flat.argmax(dim=1)  # first maximum in raster order
    constant = flat.max(dim=1).values == flat.min(dim=1).values
    hit = regions.flatten(1).gather(1, peak[:, None])[:, 0]
    return hit & ~constant


def energy_inside(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Fraction of each map's mass inside its region: ``sum(M * R) / sum(M)``.

    Reference: Wang et al., "Score-CAM", CVPRW 2020, section 4.3.

    Args:
        maps: ``(B, H, W)`` non-negative maps.
        regions: ``(B, H, W)`` bool regions.

    Returns:
        ``(B,)`` float64 fractions in ``[0, 1]``; ``nan`` for an all-zero map.

    Raises:
        ValueError: a map has negative values (apply a ReLU or a min-max normalisation first).
    """
    maps = _as_maps(maps).double()
    regions = _as_regions(regions, maps)
    if bool((maps < 0).any()):
        raise ValueError("energy_inside needs non-negative maps; apply a ReLU or normalise them first")
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * regions).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny), torch.nan)


def step_counts(num_pixels: int, steps: int) -> list[int]:
    """Pixels removed (or revealed) after step ``k``: ``round(k N / steps)`` for ``k = 0..steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if num_pixels < 1:
        raise ValueError(f"need at least one pixel, got {num_pixels}")
    return [int(round(k * num_pixels / steps)) for k in range(steps + 1)]


def perturbation_order(maps: torch.Tensor) -> torch.Tensor:
    """Rank of each pixel in the removal order: 0 for the most important pixel.

    Args:
        maps: ``(B, H, W)`` maps.

    Returns:
        ``(B, H, W)`` int64 ranks; descending map value, ties by raster index.
    """
    maps = _as_maps(maps)
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks.view_as(maps)


def baseline_images(images: torch.Tensor, kind: str = "mean", sigma: float = 5.0) -> torch.Tensor:
    """The values removed pixels take.

    * ``mean``: zeros, i.e. the normalisation mean colour for normalised inputs (torchreid's
      ``Normalize(NORM_MEAN, NORM_STD)``): a flat grey-brown that carries no appearance.
    * ``blur``: a Gaussian blur of each image (``sigma`` pixels, reflected borders), which keeps
      coarse colour but removes shape and texture (RISE's insertion baseline).

    Args:
        images: ``(B, C, H, W)``.
        kind: ``mean`` or ``blur``.
        sigma: blur standard deviation in pixels.

    Returns:
        ``(B, C, H, W)`` baseline images (new tensors).
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if kind == "mean":
        return torch.zeros_like(images)
    if kind != "blur":
        raise ValueError(f"baseline must be 'mean' or 'blur', got {kind!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = images
    for shape, pad in (((1, -1), (radius, radius, 0, 0)), ((-1, 1), (0, 0, radius, radius))):
        weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape)
        padded = F.pad(out, pad, mode="reflect") if min(out.shape[-2:]) > radius else F.pad(out, pad, mode="replicate")
        out = F.conv2d(padded, weight, groups=channels)
    return out


def _curve(
    score_fn: ImageScoreFn,
    images: torch.Tensor,
    maps: torch.Tensor,
    baseline: torch.Tensor,
    steps: int,
    insertion: bool,
    full_score: torch.Tensor | None,
    baseline_score: torch.Tensor | None,
) -> torch.Tensor:
    if images.dim() != 4 or baseline.shape != images.shape:
        raise ValueError(
            f"images and baseline must share one shape (B, C, H, W), got {tuple(images.shape)} "
            f"and {tuple(baseline.shape)}"
        )
    maps = _as_maps(maps)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps {tuple(maps.shape)} must be (B, H, W) of the images {tuple(images.shape)}; resize them first"
        )
    ranks = perturbation_order(maps.to(images.device))[:, None]  # (B, 1, H, W)
    counts = step_counts(maps.shape[1] * maps.shape[2], steps)
    # deletion starts intact and ends at the baseline; insertion the other way round
    known = {0: baseline_score if insertion else full_score, steps: full_score if insertion else baseline_score}
    scores = []
    for k, count in enumerate(counts):
        if k in known and known[k] is not None:
            value = torch.as_tensor(known[k], dtype=torch.float64).reshape(-1).cpu()
            if value.shape != (images.shape[0],):
                raise ValueError(f"known scores must be ({images.shape[0]},), got {tuple(value.shape)}")
            scores.append(value)
            continue
        selected = ranks < count  # the `count` highest-ranked pixels, all channels
        perturbed = torch.where(selected, images, baseline) if insertion else torch.where(selected, baseline, images)
        value = score_fn(perturbed)
        if value.shape != (images.shape[0],):
            raise ValueError(f"score_fn must return ({images.shape[0]},) scores, got {tuple(value.shape)}")
        scores.append(value.detach().double().cpu())
    return torch.stack(scores, dim=1)


def deletion_curve(
    score_fn: ImageScoreFn,
    images: torch.Tensor,
    maps: torch.Tensor,
    baseline: torch.Tensor,
    steps: int = 8,
    *,
    full_score: torch.Tensor | None = None,
    baseline_score: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores while the most important pixels are replaced by the baseline, step by step.

    Point ``k`` is the score of the image whose ``round(k N / steps)`` highest-ranked pixels
    (all channels) come from ``baseline``: point 0 is the intact image, point ``steps`` the
    baseline. Reference: Petsiuk et al., "RISE", BMVC 2018, section 4.1.

    Args:
        score_fn: ``(B, C, H, W)`` -> ``(B,)`` scores, e.g. the similarity to the fixed other
            image of each pair.
        images: ``(B, C, H, W)`` images as the model takes them.
        maps: ``(B, H, W)`` maps at the images' resolution.
        baseline: ``(B, C, H, W)`` replacement values (:func:`baseline_images`).
        steps: number of steps (the curve has ``steps + 1`` points).
        full_score: ``(B,)`` known score of the intact images (saves one call of ``score_fn``).
        baseline_score: ``(B,)`` known score of the baselines (saves one call).

    Returns:
        ``(B, steps + 1)`` float64 scores on the CPU.
    """
    return _curve(score_fn, images, maps, baseline, steps, False, full_score, baseline_score)


def insertion_curve(
    score_fn: ImageScoreFn,
    images: torch.Tensor,
    maps: torch.Tensor,
    baseline: torch.Tensor,
    steps: int = 8,
    *,
    full_score: torch.Tensor | None = None,
    baseline_score: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores while the most important pixels are revealed on the baseline, step by step.

    Point ``k`` is the score of the baseline with the ``round(k N / steps)`` highest-ranked pixels
    taken from the image: point 0 is the baseline, point ``steps`` the intact image.
    Reference: Petsiuk et al., "RISE", BMVC 2018, section 4.1.

    Args: as :func:`deletion_curve`.

    Returns:
        ``(B, steps + 1)`` float64 scores on the CPU.
    """
    return _curve(score_fn, images, maps, baseline, steps, True, full_score, baseline_score)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve over the fraction axis ``[0, 1]`` (trapezoidal rule, equal steps).

    Args:
        curves: ``(B, K + 1)`` scores at fractions ``0, 1/K, ..., 1`` (``K >= 1``).

    Returns:
        ``(B,)`` float64 areas.
    """
    curves = torch.as_tensor(curves).double()
    if curves.dim() != 2 or curves.shape[1] < 2:
        raise ValueError(f"expected curves of shape (B, K + 1) with K >= 1, got {tuple(curves.shape)}")
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(dim=1) / (2.0 * steps)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(values.size)
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts)[inverse]  # 1-based tie group of each value
    bounds = np.r_[np.nonzero(starts)[0], values.size]  # first position of each group, then n
    return 0.5 * (bounds[group - 1] + bounds[group] - 1) + 1.0


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps ``(B, h, w)`` (ties share their mean
    rank); NaN where either map is constant (no ranking to compare).

    The sanity-check statistic (Adebayo et al., NeurIPS 2018): how much a model's map still looks
    like the map of the model with randomised weights.
    """
    a, b = _as_maps(first, "first"), _as_maps(second, "second")
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = []
    for x, y in zip(a.flatten(1).double().cpu().numpy(), b.flatten(1).double().cpu().numpy()):
        rx, ry = _average_ranks(x) - (x.size + 1) / 2, _average_ranks(y) - (y.size + 1) / 2
        denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
        out.append(float((rx * ry).sum() / denominator) if denominator > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)
