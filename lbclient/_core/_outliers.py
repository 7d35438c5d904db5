"""Success-rate outlier detection (Envoy's ``success_rate`` detector, gRFC A50): a host is an outlier
only against the others, so a failure that every host gives alike ejects nobody."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["success_rate_outliers"]

T = TypeVar("T")
#: A spread of success rates below this is rounding error (rates of equal hosts summed in floats).
_NO_SPREAD = 1e-12


def success_rate_outliers(
    samples: Iterable[tuple[T, int, int]], *, minimum_hosts: int, request_volume: int, stdev_factor: float
) -> tuple[list[tuple[T, float]], float]:
    """The outliers of one interval, worst first, each with its success rate, and the threshold.

    ``samples`` holds (host, requests, successes) of the interval. Hosts with fewer than
    ``request_volume`` requests say too little and are left out; when fewer than ``minimum_hosts`` are
    left, nobody is an outlier (the threshold is then ``-inf``). Otherwise the threshold is
    ``mean - stdev_factor * stdev`` of their success rates (population standard deviation, as Envoy),
    and every host below it is an outlier.
    """
    rates = [(host, successes / requests) for host, requests, successes in samples if requests >= request_volume]
    if len(rates) < minimum_hosts:
        return [], -math.inf
    mean = math.fsum(rate for _, rate in rates) / len(rates)
    stdev = math.sqrt(math.fsum((rate - mean) ** 2 for _, rate in rates) / len(rates))
    threshold = mean - stdev_factor * stdev
    if stdev < _NO_SPREAD:  # equal rates, up to rounding: nobody stands out, whatever the factor
        return [], threshold
    outliers = sorted(((host, rate) for host, rate in rates if rate < threshold), key=lambda item: item[1])
    return outliers, threshold
