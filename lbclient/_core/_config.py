"""Frozen, validated configuration objects and their defaults, in one place.

Every value is checked when the object is built and a bad one raises ``ValueError`` naming it. Times are
float seconds, so tests can use short ones. Defaults follow the systems users know: Envoy for backoff
and outlier detection, Finagle and Linkerd for the retry budget, HAProxy for health-check thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "GATEWAY_STATUSES",
    "IDEMPOTENT_METHODS",
    "HealthCheck",
    "Hedge",
    "OutlierDetection",
    "RetryPolicy",
]

#: Methods that may be sent twice without changing the outcome (RFC 9110, section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: The gateway errors, which say the request was not served (a proxy could not reach, or hear back
#: from, the application): retried by default, and counted by consecutive-failure ejection.
GATEWAY_STATUSES = frozenset({502, 503, 504})
#: Statuses retried by default: the gateway errors, which say nothing was done.
DEFAULT_RETRY_STATUSES = GATEWAY_STATUSES


def _number(owner: str, name: str, value: object, *, minimum: float = 0.0, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{owner}.{name} must be a number >= {minimum:g}, got {value!r}")


ConfigT = TypeVar("ConfigT")


def _switch(cls: type[ConfigT], value: object, keyword: str, also: str = "") -> ConfigT | None:
    """A feature keyword as given: a config object, True (its defaults), or None/False (off)."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    raise ValueError(f"{keyword} must be a {cls.__name__}, {also}True, False or None, got {value!r}")


def _integer(owner: str, name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How a pool request is retried on another host (``retries=RetryPolicy(...)``; an int is
    ``RetryPolicy(max_attempts=n)``).

    - ``max_attempts``: attempts in all, 1 = no retry.
    - ``backoff_base`` / ``backoff_max``: exponential backoff with full jitter, in seconds: before retry
      k the wait is uniform in [0, min(backoff_max, backoff_base * 2**(k-1))] (Envoy's 25 ms / 250 ms).
    - ``retry_on_status``: statuses that count as a failed attempt (502, 503, 504).
    - ``retry_after_max``: a ``Retry-After`` on 429/503 is waited out when it is at most this long;
      a longer one ends the retries and the response is returned.
    - ``budget_ratio`` / ``budget_min_retries`` / ``budget_window``: retries allowed are at most
      ``budget_ratio`` of the requests of the last ``budget_window`` seconds, plus ``budget_min_retries``
      per second (Finagle: 20 %, 10/s, 10 s), so that an outage cannot multiply the load.
    - ``retry_non_idempotent``: also retry failures of POST/PATCH that may have reached the server
      (never for a body that cannot be replayed). Off: only idempotent methods and requests with an
      ``Idempotency-Key`` header are retried after they may have been sent.
    - ``per_try_timeout``: seconds for each attempt, within the client's timeout, which stays the
      overall deadline of the request, retries included.
    - ``buffer_limit``: a response body of at most this many bytes (by its Content-Length) is read
      inside the attempt when the request could be retried, so a reset in the middle of the body is
      retried like any other failure. Larger bodies, and bodies of unknown length (streams, server-sent
      events), go to the caller as they arrive and are not retried once their headers are in. 0: off.
    """

    max_attempts: int = 3
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    retry_on_status: Collection[int] = field(default=DEFAULT_RETRY_STATUSES)
    retry_after_max: float = 5.0
    budget_ratio: float = 0.2
    budget_min_retries: float = 10.0
    budget_window: float = 10.0
    retry_non_idempotent: bool = False
    per_try_timeout: float | None = None
    buffer_limit: int = 256 * 1024

    def __post_init__(self) -> None:
        owner = "RetryPolicy"
        _integer(owner, "max_attempts", self.max_attempts, minimum=1)
        _number(owner, "backoff_base", self.backoff_base)
        _number(owner, "backoff_max", self.backoff_max)
        _number(owner, "retry_after_max", self.retry_after_max)
        _number(owner, "budget_ratio", self.budget_ratio)
        _number(owner, "budget_min_retries", self.budget_min_retries)
        _number(owner, "budget_window", self.budget_window, minimum=1e-9)
        _number(owner, "per_try_timeout", self.per_try_timeout, minimum=1e-9, allow_none=True)
        _integer(owner, "buffer_limit", self.buffer_limit, minimum=0)
        statuses = self.retry_on_status
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise ValueError(f"RetryPolicy.retry_on_status must be a collection of statuses, got {statuses!r}")
        statuses = frozenset(statuses)
        for status in statuses:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ValueError(f"RetryPolicy.retry_on_status holds {status!r}, which is not an HTTP status")
        object.__setattr__(self, "retry_on_status", statuses)
        if not isinstance(self.retry_non_idempotent, bool):
            raise ValueError(f"RetryPolicy.retry_non_idempotent must be a bool, got {self.retry_non_idempotent!r}")

    @classmethod
    def coerce(cls, value: int | RetryPolicy | None) -> RetryPolicy:
        """``retries=`` as given: an int of attempts, a policy, or None (no retries)."""
        if value is None:
            return cls(max_attempts=1)
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"retries must be an int of attempts or a RetryPolicy, got {value!r}")
        return cls(max_attempts=value)


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health, as Envoy's outlier detection (gRFC A50 for gRPC): two detectors eject a host for
    ``base_ejection_time`` x the number of its ejections, at most ``max_ejection_time``, plus up to
    ``jitter`` of that (a share). A host's ejection count is forgotten once it stays un-ejected for
    ``max_ejection_time``.

    - Consecutive gateway failures: ``consecutive_failures`` in a row of connect errors, resets,
      timeouts and other transport errors, and 502, 503 and 504 answers (Envoy's
      ``consecutive_gateway_failure``). Other 5xx answers (500, 501, 505, ...) are the application's
      answer to that request, which every host may give alike: they do not count here, and an answer
      that is not a gateway failure ends the run.
    - Success rate (Envoy's ``success_rate_*``): every ``success_rate_interval`` seconds, among the hosts
      with at least ``success_rate_request_volume`` requests in that interval, if there are at least
      ``success_rate_minimum_hosts`` of them, a host whose share of answers below 500 (transport errors
      are failures too) is under ``mean - success_rate_stdev_factor * stdev`` of those hosts is ejected.
      A host is an outlier only against the others: a 500 that every host gives ejects nobody. With the
      population standard deviation, one host of n can lie at most sqrt(n - 1) deviations below the
      mean, so with the factor 1.9 fewer than 5 hosts could never eject one (sqrt(3) = 1.73): 5 stays
      the default minimum; for smaller pools lower the factor too (3 hosts: below 1.41).
      ``success_rate_interval=None`` turns this detector off.
    - ``consecutive_5xx``: the former rule, off by default (None): that many failures in a row of any
      kind, every 5xx included, eject (Envoy's ``consecutive_5xx``). Only for pools where a 5xx is a
      fault of the host, never of the request: with it, a caller who sends requests that fail everywhere
      can eject healthy hosts.

    At most ``max_ejection_percent`` of the pool is ejected at once (Envoy's 10%), but one host of a pool
    of two or more always can be (gRFC A50, Envoy).
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    jitter: float = 0.1
    success_rate_interval: float | None = 10.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: float = 1.9
    consecutive_5xx: int | None = None

    def __post_init__(self) -> None:
        owner = "OutlierDetection"
        _integer(owner, "consecutive_failures", self.consecutive_failures, minimum=1)
        _number(owner, "base_ejection_time", self.base_ejection_time)
        _number(owner, "max_ejection_time", self.max_ejection_time)
        _number(owner, "max_ejection_percent", self.max_ejection_percent)
        if self.max_ejection_percent > 100:
            raise ValueError(
                f"OutlierDetection.max_ejection_percent must be in 0..100, got {self.max_ejection_percent!r}"
            )
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"OutlierDetection.max_ejection_time {self.max_ejection_time!r} is below "
                f"base_ejection_time {self.base_ejection_time!r}"
            )
        _number(owner, "jitter", self.jitter)
        _number(owner, "success_rate_interval", self.success_rate_interval, minimum=1e-9, allow_none=True)
        _integer(owner, "success_rate_minimum_hosts", self.success_rate_minimum_hosts, minimum=2)
        _integer(owner, "success_rate_request_volume", self.success_rate_request_volume, minimum=1)
        _number(owner, "success_rate_stdev_factor", self.success_rate_stdev_factor)
        if self.consecutive_5xx is not None:
            _integer(owner, "consecutive_5xx", self.consecutive_5xx, minimum=1)

    @classmethod
    def coerce(cls, value: OutlierDetection | bool | None) -> OutlierDetection | None:
        """``outlier_detection=`` as given: a config, True (defaults), or None/False (off)."""
        return _switch(cls, value, "outlier_detection")


@dataclass(frozen=True)
class HealthCheck:
    """Active health: ``GET path`` on every host each ``interval`` seconds (plus up to ``jitter`` of it,
    a share, so a fleet of clients does not probe in step). A host turns unhealthy after
    ``unhealthy_threshold`` failed checks in a row and healthy after ``healthy_threshold`` good ones
    (HAProxy's 3 and 2). A check is good when it answers within ``timeout`` with a status below 400.
    """

    path: str = "/health"
    interval: float = 10.0
    timeout: float = 2.0
    jitter: float = 0.1
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    def __post_init__(self) -> None:
        owner = "HealthCheck"
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"HealthCheck.path must start with '/', got {self.path!r}")
        _number(owner, "interval", self.interval, minimum=1e-9)
        _number(owner, "timeout", self.timeout, minimum=1e-9)
        _number(owner, "jitter", self.jitter)
        _integer(owner, "healthy_threshold", self.healthy_threshold, minimum=1)
        _integer(owner, "unhealthy_threshold", self.unhealthy_threshold, minimum=1)

    @classmethod
    def coerce(cls, value: HealthCheck | bool | None) -> HealthCheck | None:
        """``health_check=`` as given: a config, True (defaults), or None/False (off)."""
        return _switch(cls, value, "health_check")


@dataclass(frozen=True)
class Hedge:
    """Hedged requests ("The Tail at Scale", Dean and Barroso, 2013): when an idempotent request has no
    answer after ``delay`` seconds, or, without a delay, after the ``percentile`` of recent latencies
    (but at least ``min_delay``), a second attempt goes to another host; the first good answer wins and
    the other attempt is cancelled and closed. At most ``budget_ratio`` of requests are hedged (counted
    over ``budget_window`` seconds), so hedging cannot add more than that share of load.
    """

    delay: float | None = None
    percentile: float = 0.95
    min_delay: float = 0.005
    budget_ratio: float = 0.05
    budget_window: float = 10.0

    def __post_init__(self) -> None:
        owner = "Hedge"
        _number(owner, "delay", self.delay, allow_none=True)
        _number(owner, "percentile", self.percentile)
        if not 0 < self.percentile < 1:
            raise ValueError(f"Hedge.percentile must be in 0..1 (exclusive), got {self.percentile!r}")
        _number(owner, "min_delay", self.min_delay)
        _number(owner, "budget_ratio", self.budget_ratio)
        _number(owner, "budget_window", self.budget_window, minimum=1e-9)

    @classmethod
    def coerce(cls, value: Hedge | float | bool | None) -> Hedge | None:
        """``hedge=`` as given: a config, seconds of fixed delay, True (the defaults), or None/False."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(delay=float(value))
        return _switch(cls, value, "hedge", "a delay in seconds, ")
