"""The statistics behind the lessons' verdicts: intervals that match textbook values, and verdicts that
only take a side when the intervals separate."""

from __future__ import annotations

import math

import pytest

from dpokit.stats import (CONFIRMED, CORRECTED, NOT_DISTINGUISHABLE, Estimate, direction, mean_interval,
                          mean_sd, pooled_wilson, separated, t_quantile, verdict, wilson)


def test_wilson_interval_matches_a_hand_computation():
    # 25 of 60, z = 1.96: centre (p + z²/2n) / (1 + z²/n) = 0.4217, half-width 0.1210 -> [0.3006, 0.5427]
    e = wilson(25, 60)
    assert e.value == pytest.approx(25 / 60)
    assert (e.low, e.high) == (pytest.approx(0.3006, abs=2e-4), pytest.approx(0.5427, abs=2e-4))


def test_wilson_interval_stays_inside_zero_and_one_at_the_extremes():
    none, every = wilson(0, 20), wilson(20, 20)
    assert none.low == 0 and 0 < none.high < 0.2
    assert every.high == 1 and 0.8 < every.low < 1


def test_wilson_refuses_more_successes_than_trials():
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_wilson_of_nothing_has_no_interval():
    assert not wilson(0, 0).has_interval


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantile_matches_the_t_table(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=2e-3)


def test_mean_interval_over_three_seeds_uses_the_t_quantile():
    e = mean_interval([0.417, 0.483, 0.383])
    m, sd = mean_sd([0.417, 0.483, 0.383])
    assert e.value == pytest.approx(m)
    assert e.high - e.value == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-3)


def test_one_seed_gives_a_figure_without_an_interval():
    e = mean_interval([0.5])
    assert e.value == 0.5 and not e.has_interval and "no interval" in e.format()


def test_pooled_wilson_counts_every_prompt_of_every_seed():
    e = pooled_wilson([[True, False, True], [False, False, True]])
    assert e.n == 6 and e.value == pytest.approx(0.5)


def test_verdict_needs_separated_intervals():
    a, b = Estimate(0.6, 0.5, 0.7, 3, "t"), Estimate(0.3, 0.2, 0.4, 3, "t")
    overlapping = Estimate(0.45, 0.35, 0.55, 3, "t")
    assert verdict(a, b) == CONFIRMED
    assert verdict(b, a) == CORRECTED
    assert verdict(a, overlapping) == NOT_DISTINGUISHABLE
    assert verdict(b, a, higher_is_better=False) == CONFIRMED


def test_a_figure_without_an_interval_never_decides():
    single = Estimate(0.9, math.nan, math.nan, 1, "single")
    assert not separated(single, Estimate(0.1, 0.05, 0.15, 3, "t"))
    assert direction(single, Estimate(0.1, 0.05, 0.15, 3, "t")) == NOT_DISTINGUISHABLE


def test_estimate_prints_percentages_for_proportions():
    assert wilson(25, 60).format() == "41.7% [30.1, 54.3]"
