"""The pure success-rate outlier rule (Envoy's ``success_rate`` detector)."""

from __future__ import annotations

import math

import pytest

from lbclient._core._outliers import success_rate_outliers

RULE = {"minimum_hosts": 5, "request_volume": 100, "stdev_factor": 1.9}


def test_one_host_far_below_the_others_is_the_outlier() -> None:
    samples = [("a", 100, 99), ("b", 100, 98), ("c", 100, 100), ("d", 100, 99), ("e", 100, 40)]
    outliers, threshold = success_rate_outliers(samples, **RULE)
    assert outliers == [("e", 0.4)]
    assert 0.4 < threshold < 0.98


@pytest.mark.parametrize("successes", [0, 37, 100])
def test_equal_rates_have_no_outlier(successes: int) -> None:
    outliers, _ = success_rate_outliers([(name, 100, successes) for name in "abcdefg"], **RULE)
    assert outliers == []


def test_equal_rates_in_rounding_have_no_outlier_whatever_the_factor() -> None:
    samples = [(name, 300, 30) for name in "abcdefghij"]  # 0.1 each, whose float sum is not exact
    assert success_rate_outliers(samples, **(RULE | {"stdev_factor": 0.0}))[0] == []


def test_too_few_hosts_with_enough_requests_judge_nobody() -> None:
    samples = [("a", 100, 100), ("b", 100, 100), ("c", 100, 100), ("d", 100, 100), ("e", 99, 0)]
    assert success_rate_outliers(samples, **RULE) == ([], -math.inf)


def test_fewer_than_five_hosts_cannot_reach_the_factor_one_point_nine() -> None:
    """sqrt(n - 1) deviations below the mean is as far as one host of n can be: 5 is the smallest pool."""
    four = [("a", 100, 100), ("b", 100, 100), ("c", 100, 100), ("d", 100, 0)]
    assert success_rate_outliers(four, **(RULE | {"minimum_hosts": 2}))[0] == []
    five = [*four, ("e", 100, 100)]
    assert success_rate_outliers(five, **RULE)[0] == [("d", 0.0)]
    assert success_rate_outliers(four, **(RULE | {"minimum_hosts": 2, "stdev_factor": 1.7}))[0] == [("d", 0.0)]


def test_outliers_come_worst_first() -> None:
    samples = [(name, 100, 100) for name in "abcdefghijkl"] + [("x", 100, 20), ("y", 100, 0)]
    outliers, _ = success_rate_outliers(samples, **RULE)
    assert [name for name, _ in outliers] == ["y", "x"]
