"""Summaries of repeated runs: means, spreads, paired differences and their 95% intervals.

Runs of the same config differ by a couple of rank-1 points, so a claim that one arm beats
another rests on several seeds, paired by seed. These helpers state what such a study shows:

* :func:`summarize`: mean, sample standard deviation, min and max of one arm's values.
* :func:`t_interval`: the Student-t interval of a mean (the paired differences of a study).
* :func:`bootstrap_interval`: the percentile bootstrap interval of a mean, over one level of
  values (SciPy's ``scipy.stats.bootstrap``) or over two (groups, e.g. seeds, then the items
  inside each group, e.g. triplets).
* :func:`paired_comparison`: arm ``a`` minus arm ``b`` over the seeds both have, with both
  intervals, the wins and losses, and a verdict that says "no difference shown" whenever the
  interval holds 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000


def _values(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: values must be finite, got {array.tolist()}")
    return array


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``sd`` (sample standard deviation, None for one value), ``min``, ``max``."""
    array = _values(values, "summarize")
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if array.size > 1 else None,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The two-sided Student-t interval of the mean of ``values`` (None for fewer than 2 values).

    ``mean -+ t_{n-1, (1+confidence)/2} * sd / sqrt(n)``.
    """
    from scipy import stats

    array = _values(values, "t_interval")
    if array.size < 2:
        return None
    half = float(stats.t.ppf((1 + confidence) / 2, array.size - 1)) * array.std(ddof=1) / math.sqrt(array.size)
    return float(array.mean() - half), float(array.mean() + half)


def bootstrap_interval(
    values: Sequence[float] | Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of a mean.

    Args:
        values: a flat sequence (resampled with replacement), or a sequence of groups (two-level:
            the groups are resampled, then the items inside each drawn group; the statistic is the
            mean over every drawn item). Use groups when the items of one group share a cause of
            variation, e.g. the triplets scored on one seed's model.
        confidence: the interval's coverage.
        resamples: bootstrap draws.
        seed: seeds the draws (``numpy.random.default_rng(seed)``), so the same input gives the
            same interval.

    A flat sequence is SciPy's ``scipy.stats.bootstrap`` (``method="percentile"``, ``resamples``
    resamples drawn at once from the seeded generator; a single value gives the interval
    ``(value, value)``, which SciPy refuses to compute). SciPy resamples independent observations
    only, so the two-level bootstrap of groups is written here: each resample draws the groups with
    replacement, then the items of each drawn group; the interval is the 2.5% and 97.5% (for 95%)
    percentiles of the resampled means, linearly interpolated as in SciPy.
    """
    rng = np.random.default_rng(seed)
    nested = len(values) > 0 and isinstance(values[0], (list, tuple, np.ndarray))
    if not nested:
        from scipy import stats

        array = _values(values, "bootstrap_interval")
        if array.size == 1:  # every resample is the value itself
            return float(array[0]), float(array[0])
        result = stats.bootstrap(
            (array,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
            vectorized=True, rng=rng,
        )
        return float(result.confidence_interval.low), float(result.confidence_interval.high)
    groups = [_values(group, f"bootstrap_interval group {i}") for i, group in enumerate(values)]
    means = np.empty(resamples)
    chosen = rng.integers(0, len(groups), size=(resamples, len(groups)))
    for r in range(resamples):
        total, count = 0.0, 0
        for g in chosen[r]:
            group = groups[g]
            total += group[rng.integers(0, group.size, size=group.size)].sum()
            count += group.size
        means[r] = total / count
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_comparison(
    a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE, seed: int = 0
) -> dict[str, object]:
    """Arm ``a`` minus arm ``b``, paired by key (seed), over the keys both have.

    Returns:
        ``seeds`` (the paired keys), ``n``, ``mean_a``, ``mean_b``, ``mean_difference``,
        ``sd_difference``, ``t_interval`` and ``bootstrap_interval`` of the mean difference (None
        for fewer than 2 pairs), ``wins`` / ``losses`` / ``ties`` (seeds where a is above / below /
        equal to b) and ``verdict``: ``a > b`` or ``a < b`` when the t interval excludes 0,
        otherwise ``no difference shown`` (``one pair: no interval`` for a single pair).

    Raises:
        ValueError: no seed in common.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} and {sorted(b)}")
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    t_int = t_interval(diffs, confidence) if len(seeds) > 1 else None
    boot = bootstrap_interval(diffs, confidence, seed=seed) if len(seeds) > 1 else None
    if t_int is None:
        verdict = "one pair: no interval"
    elif t_int[0] > 0:
        verdict = "a > b"
    elif t_int[1] < 0:
        verdict = "a < b"
    else:
        verdict = "no difference shown"
    return {
        "seeds": seeds,
        "n": len(seeds),
        "mean_a": float(np.mean([a[s] for s in seeds])),
        "mean_b": float(np.mean([b[s] for s in seeds])),
        "mean_difference": float(diffs.mean()),
        "sd_difference": float(diffs.std(ddof=1)) if len(seeds) > 1 else None,
        "t_interval": list(t_int) if t_int else None,
        "bootstrap_interval": list(boot) if boot else None,
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
        "ties": int((diffs == 0).sum()),
        "verdict": verdict,
    }
