"""Study statistics against hand-computed oracles."""

import math

import pytest

from reid.metrics.stats import bootstrap_interval, paired_comparison, summarize, t_interval


def test_summarize_by_hand():
    assert summarize([1.0, 2.0, 3.0, 6.0]) == {"n": 4, "mean": 3.0, "sd": math.sqrt(14 / 3), "min": 1.0, "max": 6.0}
    assert summarize([0.5])["sd"] is None


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: t_{2, 0.975} = 4.302653 (table value)
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert t_interval([1.0]) is None
    # n 5, sd 0: the interval collapses on the mean
    assert t_interval([0.25] * 5) == (0.25, 0.25)


def test_bootstrap_interval_of_two_values_spans_them():
    # means of 2 draws from {0, 1}: 0 (p .25), .5 (p .5), 1 (p .25): the 2.5% and 97.5% quantiles are 0 and 1
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))


def test_bootstrap_interval_over_groups_resamples_the_groups():
    # two groups with no spread inside: only the group draw matters (means 0, .5, 1 as above)
    assert bootstrap_interval([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]) == (0.0, 1.0)
    # one group: the same as the flat bootstrap of its items' spread (a constant group: no spread)
    assert bootstrap_interval([[0.3, 0.3]]) == pytest.approx((0.3, 0.3))
    # the groups' spread widens the interval compared with pooling the items
    flat = bootstrap_interval([0.0] * 20 + [1.0] * 20)
    grouped = bootstrap_interval([[0.0] * 20, [1.0] * 20])
    assert grouped[1] - grouped[0] > flat[1] - flat[0]


def test_bootstrap_interval_is_seeded_and_checks_input():
    values = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([0.1, float("nan")])


def test_paired_comparison_by_hand():
    a = {0: 0.50, 1: 0.55, 2: 0.60, 7: 0.9}
    b = {0: 0.40, 1: 0.46, 2: 0.49}
    out = paired_comparison(a, b)
    # differences .10, .09, .11 over the shared seeds 0-2: mean .10, sd .01
    assert out["seeds"] == [0, 1, 2] and out["n"] == 3
    assert out["mean_difference"] == pytest.approx(0.10)
    assert out["sd_difference"] == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert out["t_interval"] == pytest.approx([0.10 - half, 0.10 + half], abs=1e-6)
    assert out["mean_a"] == pytest.approx(0.55) and out["mean_b"] == pytest.approx(0.45)
    assert (out["wins"], out["losses"], out["ties"]) == (3, 0, 0)
    assert out["verdict"] == "a > b"
    lo, hi = out["bootstrap_interval"]
    assert 0.09 <= lo <= 0.10 <= hi <= 0.11


def test_paired_comparison_verdicts():
    assert paired_comparison({0: 0.1, 1: 0.2}, {0: 0.2, 1: 0.1})["verdict"] == "no difference shown"
    assert paired_comparison({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.3, 1: 0.35, 2: 0.5})["verdict"] == "a < b"
    single = paired_comparison({4: 0.3}, {4: 0.1})
    assert single["verdict"] == "one pair: no interval" and single["t_interval"] is None
    with pytest.raises(ValueError, match="no seed in common"):
        paired_comparison({0: 0.1}, {1: 0.1})
