"""OpenTelemetry metrics for a balancing client or transport (optional extra ``otel``: the
``opentelemetry-api`` package only; whichever SDK the application configures receives them).

```pycon
>>> from lbclient.otel import instrument
>>> instrument(client)  # doctest: +SKIP
```

Every instrument is observed from :meth:`lbclient.Pool.stats` when the SDK collects, so requests pay
nothing for them. Attributes: ``lb.service`` and ``lb.host`` (the host's base URL).

- ``lbclient.requests``, ``lbclient.failures``, ``lbclient.ejections``: counters per host;
- ``lbclient.in_flight``: up-down counter per host;
- ``lbclient.latency.ewma``: gauge per host, seconds (hosts without an answer yet are left out);
- ``lbclient.available``: gauge per host, 1 while it takes new requests (healthy, not ejected, weight > 0);
- ``lbclient.panic``: gauge, 1 while the pool is in panic.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

try:
    from opentelemetry import metrics
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lbclient.otel needs OpenTelemetry's API: pip install 'lbclient[otel]'") from exc

from ._core import HostStats, Pool, PoolStats

__all__ = ["instrument"]


class _Balanced(Protocol):
    @property
    def pool(self) -> Pool: ...

    @property
    def service(self) -> str: ...


def instrument(balanced: _Balanced, *, meter: metrics.Meter | None = None) -> None:
    """Report ``balanced``'s pool (an :class:`~lbclient.LBClient`, :class:`~lbclient.AsyncLBClient` or
    either transport) through ``meter`` (default: the global meter provider's ``lbclient`` meter).

    The instruments hold the pool weakly: once the client is gone they report nothing for it.
    """
    if not isinstance(getattr(balanced, "pool", None), Pool):
        raise TypeError(f"instrument() takes an lbclient client or transport, got {balanced!r}")
    meter = meter if meter is not None else metrics.get_meter("lbclient")
    pool_ref = weakref.ref(balanced.pool)
    service = balanced.service

    def snapshot() -> PoolStats | None:
        pool = pool_ref()
        return None if pool is None else pool.stats()

    def per_host(
        value: Callable[[HostStats], float | None],
    ) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
        def observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            stats = snapshot()
            if stats is None:
                return []
            observations = []
            for host in stats.hosts:
                measured = value(host)
                if measured is not None:
                    observations.append(metrics.Observation(measured, {"lb.service": service, "lb.host": host.url}))
            return observations

        return observe

    def panic(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        stats = snapshot()
        return [] if stats is None else [metrics.Observation(int(stats.panic), {"lb.service": service})]

    meter.create_observable_counter(
        "lbclient.requests", [per_host(lambda h: h.requests)], unit="{request}", description="Requests sent to the host"
    )
    meter.create_observable_counter(
        "lbclient.failures",
        [per_host(lambda h: h.failures)],
        unit="{request}",
        description="Requests to the host that failed (connect errors, resets, timeouts, 5xx)",
    )
    meter.create_observable_counter(
        "lbclient.ejections",
        [per_host(lambda h: h.times_ejected)],
        unit="{ejection}",
        description="Times the host was ejected by outlier detection",
    )
    meter.create_observable_up_down_counter(
        "lbclient.in_flight", [per_host(lambda h: h.outstanding)], unit="{request}", description="Requests in flight"
    )
    meter.create_observable_gauge(
        "lbclient.latency.ewma",
        [per_host(lambda h: h.ewma_latency)],
        unit="s",
        description="Time-decayed average response latency of the host",
    )
    meter.create_observable_gauge(
        "lbclient.available",
        [per_host(lambda h: int(h.available))],
        description="1 while the host takes new requests",
    )
    meter.create_observable_gauge("lbclient.panic", [panic], description="1 while the pool is in panic mode")
