"""``Lease.settle``: a long-lived hold (a TCP connection) whose outcome is known when it starts."""

from __future__ import annotations

import random

from lbclient._core import OutlierDetection, Pool
from lbclient.testing import FakeClock


def make(strategy: str = "least_connections", **kwargs: object) -> tuple[Pool, FakeClock]:
    clock = FakeClock(50.0)
    return Pool(["a", "b"], strategy, clock=clock, rng=random.Random(1), **kwargs), clock  # type: ignore[arg-type]


def test_settle_records_success_and_latency_but_keeps_the_hold() -> None:
    pool, clock = make()
    lease = pool.acquire()
    assert lease is not None
    host = lease.host
    host.consecutive_failures = 3
    clock.now += 0.004
    lease.settle()
    assert host.outstanding == 1  # still held: least_connections still sees it
    assert host.consecutive_failures == 0
    assert host.ewma_latency is not None
    assert abs(host.ewma_latency - 0.004) < 1e-9
    clock.now += 60.0  # a long connection: its age is not latency
    assert host.inflight_age(clock.now) == 0.0
    lease.release(failed=True)  # settled: this only ends the hold
    assert (host.outstanding, host.failures, host.consecutive_failures) == (0, 0, 0)
    assert abs(host.ewma_latency - 0.004) < 1e-9


def test_a_settled_lease_leaves_the_age_of_the_others_alone() -> None:
    pool, clock = make("round_robin")
    first = pool.acquire()
    assert first is not None
    host = first.host
    clock.now += 1.0
    second = pool.acquire(exclude=[h for h in pool.hosts if h is not host])  # the same host again
    assert second is not None
    assert second.host is host
    first.settle()
    clock.now += 2.0
    assert abs(host.inflight_age(clock.now) - 2.0) < 1e-9  # only the unsettled one counts
    second.release(failed=False)
    assert host.inflight_age(clock.now) == 0.0
    first.abandon()
    assert host.outstanding == 0
    assert host.inflight_timed == 0


def test_settle_is_once_and_never_after_the_end() -> None:
    pool, _clock = make(outlier_detection=OutlierDetection(consecutive_failures=1))
    lease = pool.acquire()
    assert lease is not None
    lease.release(failed=False)
    samples = lease.host.latency_samples
    lease.settle()  # already ended: nothing recorded
    assert lease.host.latency_samples == samples
    other = pool.acquire()
    assert other is not None
    other.settle()
    other.settle()
    assert other.host.latency_samples == 1
    other.release(failed=False)
    assert other.host.outstanding == 0
