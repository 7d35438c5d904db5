"""Health in the pure Pool (CONTRACT section 5): outlier ejection, active check results, panic, slow start,
``acquire(exclude=...)`` and leases, on a fake clock with seeded generators. No sockets, no sleeps."""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from typing import Any

import pytest

from lbclient._core import STRATEGIES, HealthCheck, HostState, Lease, OutlierDetection, Pool, PoolEvent
from lbclient.testing import FakeClock

HASH_STRATEGIES = ("ip_hash", "url_hash", "consistent_hash")


class Harness:
    """A pool on a fake clock (starting at 100.0) that records its events."""

    def __init__(self, hosts: Any, strategy: Any = "round_robin", *, seed: int = 0, **kwargs: Any) -> None:
        self.clock = FakeClock(100.0)
        self.events: list[PoolEvent] = []
        self.pool = Pool(
            hosts, strategy, clock=self.clock, rng=random.Random(seed), listener=self.events.append, **kwargs
        )
        #: The states as built, taken once: reading ``pool.hosts`` may apply timed changes.
        self.states = {state.url.removeprefix("http://"): state for state in self.pool.hosts}

    def __getitem__(self, name: str) -> HostState:
        return self.states[name]

    def lease_on(self, name: str) -> Lease:
        """Acquire until the strategy hands out ``name`` (abandoning the others); a strategy that shuns
        the host (latency-aware ones after a failure) is steered to it with ``exclude``."""
        target = self.states[name]
        for _ in range(50):
            lease = self.pool.acquire()
            assert lease is not None
            if lease.host is target:
                return lease
            lease.abandon()
        lease = self.pool.acquire(exclude=[s for s in self.states.values() if s is not target])
        assert lease is not None
        assert lease.host is target, f"{name} was never picked"
        return lease

    def fail(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self.lease_on(name).release(failed=True)

    def succeed(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self.lease_on(name).release(failed=False)

    def picks(self, count: int, key: Any = None) -> Counter[str]:
        seen: Counter[str] = Counter()
        for i in range(count):
            lease = self.pool.acquire(key(i) if callable(key) else key)
            assert lease is not None
            seen[lease.host.url.removeprefix("http://")] += 1
            lease.release(failed=False)
        return seen

    def kinds(self, host: str | None = "any") -> list[str]:
        return [e.kind for e in self.events if host == "any" or e.host == (host and f"http://{host}")]

    def take(self) -> list[tuple[str, str | None]]:
        events = [(e.kind, e.host) for e in self.events]
        self.events.clear()
        return events


def outliers(**kwargs: Any) -> OutlierDetection:
    options: dict[str, Any] = {
        "consecutive_failures": 3,
        "base_ejection_time": 10.0,
        "max_ejection_time": 100.0,
        "max_ejection_percent": 100.0,
        "jitter": 0.0,
    }
    options.update(kwargs)
    return OutlierDetection(**options)


def names(count: int) -> list[str]:
    return [f"h{i}" for i in range(count)]


# -- outlier ejection -------------------------------------------------------------------------------------------------


def test_consecutive_failures_eject() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3))
    h.fail("a", 2)
    assert not h["a"].ejected
    assert h["a"].consecutive_failures == 2
    assert h.events == []
    h.fail("a")
    assert h["a"].ejected
    assert h["a"].ejected_until == pytest.approx(110.0)
    assert h["a"].ejections == 1
    assert h["a"].consecutive_failures == 0
    assert not h["a"].available
    [event] = h.events
    assert (event.kind, event.host) == ("ejected", "http://a")
    assert "3 consecutive gateway failures" in event.reason
    assert set(h.picks(60)) == {"b", "c"}


def test_a_success_in_between_resets_the_count() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3))
    for _ in range(5):
        h.fail("a", 2)
        h.succeed("a")
        assert h["a"].consecutive_failures == 0
    assert not h["a"].ejected
    assert h["a"].failures == 10
    h.fail("a", 3)
    assert h["a"].ejected


def test_abandon_neither_counts_nor_resets_failures() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3))
    h.fail("a", 2)
    for _ in range(4):
        h.lease_on("a").abandon()
    assert not h["a"].ejected
    assert h["a"].consecutive_failures == 2
    h.fail("a")
    assert h["a"].ejected


def test_failures_in_flight_do_not_eject_an_ejected_host_again() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=2, base_ejection_time=10.0))
    in_flight = [h.lease_on("a") for _ in range(5)]
    in_flight.pop().release(failed=True)
    in_flight.pop().release(failed=True)
    assert h["a"].ejected
    until = h["a"].ejected_until
    h.clock.advance(3.0)
    for lease in in_flight:  # the rest of the requests that were on their way to the dying host
        lease.release(failed=True)
    assert h["a"].ejected_until == until
    assert h["a"].ejections == 1
    assert h.kinds() == ["ejected"]
    assert h["a"].outstanding == 0


def test_no_outlier_detection_never_ejects() -> None:
    h = Harness(["a", "b"], outlier_detection=None)
    h.fail("a", 50)
    assert not h["a"].ejected
    assert h.events == []


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    h = Harness(
        ["a", "b", "c"],
        outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0, max_ejection_time=35.0),
    )
    a = h["a"]
    durations = []
    for _ in range(6):
        h.fail("a")
        assert a.ejected
        assert a.ejected_until is not None
        durations.append(a.ejected_until - h.clock.now)
        h.clock.now = a.ejected_until
        h.picks(3)
        assert not a.ejected
    assert durations == pytest.approx([10.0, 20.0, 30.0, 35.0, 35.0, 35.0])
    assert a.ejections == 6
    assert h.kinds("a") == ["ejected", "returned"] * 6
    reasons = [e.reason for e in h.events if e.kind == "ejected"]
    assert "#1" in reasons[0]
    assert "#4" in reasons[3]


@pytest.mark.parametrize("jitter", [0.1, 0.5])
def test_ejection_jitter_stays_within_one_to_one_plus_jitter(jitter: float) -> None:
    ratios = []
    for seed in range(150):
        h = Harness(["a", "b"], seed=seed, outlier_detection=outliers(consecutive_failures=1, jitter=jitter))
        h.fail("a")
        until = h["a"].ejected_until
        assert until is not None
        ratios.append((until - h.clock.now) / 10.0)
        # a second ejection: jitter applies to base * 2
        h.clock.now = until
        h.picks(2)
        h.fail("a")
        second = h["a"].ejected_until
        assert second is not None
        ratios.append((second - h.clock.now) / 20.0)
    assert all(1.0 <= r <= 1.0 + jitter + 1e-12 for r in ratios), (min(ratios), max(ratios))
    # and the jitter is really applied, across its whole range
    assert min(ratios) < 1.0 + 0.05 * jitter
    assert max(ratios) > 1.0 + 0.95 * jitter
    assert len({round(r, 9) for r in ratios}) > 250


def test_jitter_applies_on_top_of_the_cap() -> None:
    h = Harness(
        ["a", "b"],
        seed=3,
        outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0, max_ejection_time=15.0, jitter=0.2),
    )
    for _ in range(4):
        h.fail("a")
        until = h["a"].ejected_until
        assert until is not None
        assert 15.0 * 0 <= until - h.clock.now <= 15.0 * 1.2 + 1e-9
        h.clock.now = until
        h.picks(2)
    assert h["a"].ejections == 4


def test_the_host_returns_by_itself_on_the_next_acquire() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0))
    h.fail("a")
    a = h["a"]
    assert a.ejected_until == pytest.approx(110.0)
    h.take()
    h.clock.now = 109.999
    assert "a" not in h.picks(30)
    assert a.ejected
    assert h.events == []
    h.clock.now = 110.0
    lease = h.pool.acquire()
    assert lease is not None
    lease.abandon()
    assert not a.ejected
    assert a.ejected_until is None
    assert a.available
    [event] = h.events
    assert (event.kind, event.host) == ("returned", "http://a")
    assert event.reason
    assert h.picks(30) == Counter({"a": 10, "b": 10, "c": 10})


def test_a_long_gap_returns_every_host_whose_time_ran_out() -> None:
    h = Harness(names(6), outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0))
    for name in ("h0", "h1", "h2"):
        h.fail(name)
        h.clock.advance(1.0)
    h.take()
    h.clock.now = 111.5  # h0 (110) and h1 (111) are due, h2 (112) is not
    h.picks(1)
    assert sorted(h.take()) == [("returned", "http://h0"), ("returned", "http://h1")]
    assert h["h2"].ejected
    h.clock.now = 112.0
    h.picks(1)
    assert h.take() == [("returned", "http://h2")]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_ejected_hosts_are_never_picked(strategy: str) -> None:
    h = Harness(
        names(6), strategy, seed=11, outlier_detection=outliers(consecutive_failures=2, max_ejection_percent=50)
    )
    h.fail("h1", 2)
    h.fail("h4", 2)
    assert h["h1"].ejected
    assert h["h4"].ejected
    assert not h.pool.panic
    keyed = strategy in HASH_STRATEGIES
    seen = h.picks(600, key=(lambda i: f"key-{i}") if keyed else None)
    assert "h1" not in seen
    assert "h4" not in seen
    assert set(seen) == {"h0", "h2", "h3", "h5"}
    # once their time is over they are picked again (least_response_time keeps shunning their
    # failure penalty, which is its design: ewma only moves with samples)
    h.clock.advance(1000.0)
    seen = h.picks(600, key=(lambda i: f"key-{i}") if keyed else None)
    assert not h["h1"].ejected
    assert not h["h4"].ejected
    if strategy != "least_response_time":
        assert {"h1", "h4"} <= set(seen)


def test_max_ejection_percent_caps_ejections() -> None:
    h = Harness(names(10), outlier_detection=outliers(consecutive_failures=2, max_ejection_percent=30))
    for _ in range(2):
        for name in names(10):
            if not h[name].ejected:
                h.fail(name, 2)
            h.clock.advance(0.5)
    ejected = [s for s in h.states.values() if s.ejected]
    assert len(ejected) == 3
    assert h.kinds().count("ejected") == 3
    assert not h.pool.panic
    # once one has returned, another host may take its place
    first = min(ejected, key=lambda s: s.ejected_until or 0.0)
    h.clock.now = first.ejected_until or 0.0
    h.picks(1)
    assert not first.ejected
    healthy = next(n for n, s in h.states.items() if not s.ejected and s is not first)
    assert h[healthy].consecutive_failures >= 2  # over the threshold, held back by the cap
    h.fail(healthy)
    assert h[healthy].ejected
    assert sum(s.ejected for s in h.states.values()) == 3


@pytest.mark.parametrize(
    ("count", "percent", "cap"),
    [(10, 30, 3), (10, 35, 3), (10, 100, 10), (4, 50, 2), (3, 50, 1), (2, 50, 1), (2, 0, 1), (5, 10, 1), (20, 10, 2)],
)
def test_ejection_cap_table(count: int, percent: float, cap: int) -> None:
    h = Harness(
        names(count),
        outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=percent),
        panic_threshold=0.0,
    )
    for _ in range(3):
        for name in names(count):
            if not h[name].ejected:
                h.fail(name)
    assert sum(s.ejected for s in h.states.values()) == cap


def test_a_pool_of_two_can_always_eject_one() -> None:
    h = Harness(["a", "b"], outlier_detection=outliers(consecutive_failures=2, max_ejection_percent=0))
    h.fail("a", 2)
    assert h["a"].ejected
    h.fail("b", 10)
    assert not h["b"].ejected


@pytest.mark.parametrize("percent", [0, 50, 99])
def test_a_pool_of_one_never_ejects(percent: float) -> None:
    h = Harness(["a"], outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=percent))
    h.fail("a", 20)
    assert not h["a"].ejected
    assert "ejected" not in h.kinds()
    assert h.picks(3) == Counter({"a": 3})


def test_drained_hosts_do_not_count_toward_the_cap() -> None:
    h = Harness(
        ["a", "b", {"url": "c", "weight": 0}],
        outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=50),
    )
    h.fail("a")
    h.fail("b", 5)
    assert h["a"].ejected
    assert not h["b"].ejected  # two members: one ejection at most


def test_ejection_count_is_forgotten_after_max_ejection_time() -> None:
    h = Harness(
        ["a", "b", "c"],
        outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0, max_ejection_time=50.0),
    )
    a = h["a"]

    def eject_and_return() -> float:
        h.fail("a")
        assert a.ejected_until is not None
        duration = a.ejected_until - h.clock.now
        h.clock.now = a.ejected_until
        h.picks(3)
        assert not a.ejected
        return duration

    assert eject_and_return() == pytest.approx(10.0)
    h.clock.advance(49.0)  # un-ejected for less than max_ejection_time: remembered
    assert eject_and_return() == pytest.approx(20.0)
    h.clock.advance(50.5)  # longer: forgiven
    assert eject_and_return() == pytest.approx(10.0)
    assert a.ejections == 1
    assert eject_and_return() == pytest.approx(20.0)


def test_removed_hosts_leave_the_ejection_set() -> None:
    h = Harness(["a", "b", "c", "d"], outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=25))
    h.fail("a")
    assert h["a"].ejected
    h.fail("b")
    assert not h["b"].ejected  # the cap of one is taken by a
    h.pool.update(["b", "c", "d"])
    assert ("removed", "http://a") in h.take()
    h.fail("b")
    assert h["b"].ejected  # a no longer counts
    assert h.take() == [("ejected", "http://b")]
    h.clock.advance(1000.0)
    h.picks(6)
    assert h.take() == [("returned", "http://b")]  # and nothing about a
    # a host that comes back under the same URL starts afresh
    h.pool.update(["a", "b", "c", "d"])
    fresh = next(s for s in h.pool.hosts if s.url == "http://a")
    assert fresh is not h["a"]
    assert (fresh.ejected, fresh.ejections, fresh.consecutive_failures) == (False, 0, 0)


def test_a_removed_host_whose_ejection_ran_out_is_not_reported_as_returned() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0))
    h.fail("a")
    h.clock.now = 115.0  # a's ejection is over, but no request has noticed yet
    h.pool.update(["b", "c"])
    h.picks(4)
    assert [kind for kind, host in h.take() if host == "http://a"] == ["ejected", "removed"]


def test_an_ejection_after_another_ran_out_does_not_strand_it() -> None:
    """Host a's ejection runs out; before the next acquire, host b is ejected. a must still come back."""
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0))
    in_flight = h.lease_on("b")  # a slow request on b, started before a fails
    h.fail("a")
    assert h["a"].ejected_until == pytest.approx(110.0)
    h.clock.now = 115.0
    in_flight.release(failed=True)  # b's failure ejects b while a's time is over
    assert h["b"].ejected
    h.picks(6)
    assert not h["a"].ejected, "a's ejection ran out at 110 but a is still ejected at 115"
    h.clock.now = 1000.0
    assert h.picks(30) == Counter({"a": 10, "b": 10, "c": 10})
    assert h.kinds("a") == ["ejected", "returned"]


def test_ejections_that_ran_out_do_not_let_the_cap_be_exceeded() -> None:
    h = Harness(
        names(4), outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=50)
    )
    slow = [h.lease_on("h2"), h.lease_on("h3")]
    h.fail("h0")
    h.fail("h1")
    h.clock.now = 120.0  # both ejections are over; nothing has returned them yet
    for lease in slow:
        lease.release(failed=True)
    ejected = [name for name, state in h.states.items() if state.ejected]
    assert len(ejected) <= 2, f"{ejected} ejected at once with max_ejection_percent=50 of 4 hosts"


# -- events, and the lock ---------------------------------------------------------------------------------------------


def test_events_are_delivered_outside_the_lock() -> None:
    lock = threading.Lock()
    clock = FakeClock(100.0)
    seen: list[tuple[str, bool]] = []
    pool: Pool | None = None

    def listener(event: PoolEvent) -> None:
        held = lock.locked()
        seen.append((event.kind, held))
        if held or pool is None:
            return  # calling back into the pool now would deadlock; the assertion below reports it
        assert len(pool.hosts) >= 1
        lease = pool.acquire()
        if lease is not None:
            lease.abandon()
        assert lock.acquire(blocking=False)
        lock.release()

    pool = Pool(
        names(4),
        "round_robin",
        clock=clock,
        rng=random.Random(0),
        lock=lock,
        outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0),
        health_check=HealthCheck(healthy_threshold=1, unhealthy_threshold=1),
        slow_start=5.0,
        listener=listener,
    )
    states = pool.hosts

    def fail(state: HostState) -> None:
        for _ in range(50):
            lease = pool.acquire()
            assert lease is not None
            if lease.host is state:
                lease.release(failed=True)
                return
            lease.abandon()

    fail(states[0])  # ejected
    fail(states[1])  # ejected; 2 of 4 left: not yet panic
    pool.report_check(states[2], False, "HTTP 503")  # unhealthy -> panic
    pool.report_check(states[2], True, "HTTP 200")  # healthy -> panic over
    pool.report_check(states[0], True, "HTTP 200")  # returned by a passing check
    clock.advance(100.0)
    returned = sum(kind == "returned" for kind, _ in seen)
    lease = pool.acquire()  # states[1]'s ejection is over: returned by this acquire
    assert lease is not None
    lease.abandon()
    assert sum(kind == "returned" for kind, _ in seen) == returned + 1
    assert not states[1].ejected
    assert len(pool.hosts) == 4
    pool.update([*names(3), "new"])  # removed and added
    clock.advance(100.0)
    lease = pool.acquire()
    assert lease is not None
    lease.release(failed=False)
    kinds = {kind for kind, _ in seen}
    assert {"ejected", "unhealthy", "healthy", "returned", "panic", "panic_over", "added", "removed"} <= kinds
    assert [kind for kind, held in seen if held] == []
    assert not lock.locked()


def test_panic_events_come_and_go() -> None:
    h = Harness(names(4), outlier_detection=outliers(consecutive_failures=1, base_ejection_time=10.0))
    h.fail("h0")
    h.fail("h1")
    assert not h.pool.panic
    assert h.take() == [("ejected", "http://h0"), ("ejected", "http://h1")]
    h.fail("h2")
    assert h.pool.panic
    assert h.take() == [("ejected", "http://h2"), ("panic", None)]
    assert "panic" in repr(h.pool)
    h.clock.now = 110.0
    h.picks(1)
    events = h.take()
    assert ("panic_over", None) in events
    assert ("returned", "http://h0") in events
    assert not h.pool.panic


# -- active health check results --------------------------------------------------------------------------------------


def test_unhealthy_after_threshold_failures_in_a_row() -> None:
    h = Harness(["a", "b", "c"], health_check=HealthCheck(unhealthy_threshold=3, healthy_threshold=2))
    a = h["a"]
    for _ in range(3):
        h.pool.report_check(a, False, "timeout")
        h.pool.report_check(a, False, "timeout")
        h.pool.report_check(a, True, "HTTP 200")
    assert a.healthy
    assert h.events == []
    h.pool.report_check(a, False, "HTTP 500")
    h.pool.report_check(a, False, "HTTP 500")
    assert a.healthy
    h.pool.report_check(a, False, "connection refused")
    assert not a.healthy
    assert not a.available
    [event] = h.events
    assert (event.kind, event.host) == ("unhealthy", "http://a")
    assert "connection refused" in event.reason
    assert set(h.picks(30)) == {"b", "c"}
    h.pool.report_check(a, False, "still down")
    assert len(h.events) == 1  # no second event while it stays unhealthy


def test_healthy_after_threshold_passes_in_a_row() -> None:
    h = Harness(["a", "b", "c"], health_check=HealthCheck(unhealthy_threshold=1, healthy_threshold=2))
    a = h["a"]
    h.pool.report_check(a, False, "down")
    assert not a.healthy
    h.take()
    h.pool.report_check(a, True, "ok")
    assert not a.healthy
    h.pool.report_check(a, False, "down")
    h.pool.report_check(a, True, "ok")
    assert not a.healthy  # the failure in between restarted the count
    assert h.events == []
    h.pool.report_check(a, True, "ok")
    assert a.healthy
    assert h.take() == [("healthy", "http://a")]
    assert h.picks(30) == Counter({"a": 10, "b": 10, "c": 10})


@pytest.mark.parametrize(("healthy", "unhealthy"), [(1, 1), (4, 5), (2, 3)])
def test_thresholds_are_the_configured_ones(healthy: int, unhealthy: int) -> None:
    h = Harness(["a", "b"], health_check=HealthCheck(healthy_threshold=healthy, unhealthy_threshold=unhealthy))
    a = h["a"]
    for i in range(1, unhealthy + 1):
        h.pool.report_check(a, False, "x")
        assert a.healthy == (i < unhealthy)
    for i in range(1, healthy + 1):
        h.pool.report_check(a, True, "x")
        assert a.healthy == (i >= healthy)
    assert h.kinds() == ["unhealthy", "healthy"]


def test_default_thresholds_without_a_health_check_config() -> None:
    h = Harness(["a", "b"])
    a = h["a"]
    h.pool.report_check(a, False, "x")
    h.pool.report_check(a, False, "x")
    assert a.healthy
    h.pool.report_check(a, False, "x")
    assert not a.healthy
    h.pool.report_check(a, True, "x")
    assert not a.healthy
    h.pool.report_check(a, True, "x")
    assert a.healthy


def test_a_passing_check_returns_an_ejected_host_at_once() -> None:
    h = Harness(
        ["a", "b", "c"],
        outlier_detection=outliers(consecutive_failures=1, base_ejection_time=30.0),
        health_check=HealthCheck(healthy_threshold=5, unhealthy_threshold=5),
    )
    h.fail("a")
    assert h["a"].ejected
    h.take()
    h.pool.report_check(h["a"], False, "HTTP 503")
    assert h["a"].ejected
    assert h.events == []
    h.pool.report_check(h["a"], True, "HTTP 200")
    assert not h["a"].ejected
    assert h["a"].ejected_until is None
    [event] = h.events
    assert (event.kind, event.host) == ("returned", "http://a")
    assert "HTTP 200" in event.reason
    assert h.picks(30) == Counter({"a": 10, "b": 10, "c": 10})
    # its ejection count stays, so a quick relapse is ejected for longer
    h.fail("a")
    assert h["a"].ejected_until == pytest.approx(h.clock.now + 60.0)


def test_reports_for_hosts_no_longer_in_the_pool_are_ignored() -> None:
    h = Harness(
        ["a", "b", "c"],
        outlier_detection=outliers(consecutive_failures=1),
        health_check=HealthCheck(healthy_threshold=1, unhealthy_threshold=1),
    )
    old_a = h["a"]
    h.fail("b")
    old_b = h["b"]
    h.pool.update(["c", "d"])
    h.take()
    for _ in range(5):
        h.pool.report_check(old_a, False, "down")
        h.pool.report_check(old_b, True, "up")
    assert h.events == []
    assert (old_a.healthy, old_a.checks_failed, old_a.checks_passed) == (True, 0, 0)
    assert old_b.ejected
    assert old_b.checks_passed == 0
    # a host re-added under the same URL is a new state; the old one stays ignored
    h.pool.update(["a", "c", "d"])
    h.take()
    h.pool.report_check(old_a, False, "down")
    assert h.events == []
    assert all(s.healthy for s in h.pool.hosts)


# -- panic ------------------------------------------------------------------------------------------------------------


def mark_down(h: Harness, *hosts: str) -> None:
    for name in hosts:
        h.pool.report_check(h[name], False, "down")


@pytest.mark.parametrize(
    ("count", "threshold", "down_at_boundary"),
    [(4, 0.5, 2), (10, 0.5, 5), (10, 0.3, 7), (10, 0.7, 3), (5, 0.6, 2), (3, 1.0, 0), (20, 0.1, 18)],
)
def test_panic_threshold_boundary(count: int, threshold: float, down_at_boundary: int) -> None:
    """Exactly ``threshold`` of the hosts available is not panic; one fewer is."""
    h = Harness(names(count), panic_threshold=threshold, health_check=HealthCheck(unhealthy_threshold=1))
    hosts = names(count)
    mark_down(h, *hosts[:down_at_boundary])
    assert not h.pool.panic
    assert "panic" not in h.kinds()
    mark_down(h, hosts[down_at_boundary])
    assert h.pool.panic
    assert h.kinds().count("panic") == 1


def test_panic_spreads_over_all_members() -> None:
    h = Harness(
        [*names(4), {"url": "drained", "weight": 0}],
        outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=100),
        health_check=HealthCheck(unhealthy_threshold=1),
    )
    h.fail("h0")
    mark_down(h, "h1", "h2")
    assert h.pool.panic
    seen = h.picks(400)
    assert seen == Counter({"h0": 100, "h1": 100, "h2": 100, "h3": 100})  # the drained host stays out
    assert h["h0"].ejected  # panic does not return hosts; it only spreads the load


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_panic_spreads_for_every_strategy(strategy: str) -> None:
    h = Harness(names(4), strategy, seed=5, health_check=HealthCheck(unhealthy_threshold=1))
    mark_down(h, "h0", "h1", "h2")
    assert h.pool.panic
    keyed = strategy in HASH_STRATEGIES
    seen = h.picks(400, key=(lambda i: f"k{i}") if keyed else None)
    assert set(seen) == {"h0", "h1", "h2", "h3"}
    assert min(seen.values()) > 40


def test_zero_panic_threshold_never_panics() -> None:
    h = Harness(names(3), panic_threshold=0.0, health_check=HealthCheck(unhealthy_threshold=1))
    mark_down(h, "h0", "h1")
    assert not h.pool.panic
    assert h.picks(20) == Counter({"h2": 20})
    mark_down(h, "h2")
    assert not h.pool.panic
    assert "panic" not in h.kinds()
    assert h.pool.acquire() is None


def test_full_panic_threshold_panics_on_any_loss() -> None:
    h = Harness(names(3), panic_threshold=1.0, health_check=HealthCheck(unhealthy_threshold=1, healthy_threshold=1))
    assert not h.pool.panic
    mark_down(h, "h1")
    assert h.pool.panic
    assert h.picks(30) == Counter({"h0": 10, "h1": 10, "h2": 10})
    h.pool.report_check(h["h1"], True, "ok")
    assert not h.pool.panic
    assert h.kinds() == ["unhealthy", "panic", "healthy", "panic_over"]


@pytest.mark.parametrize("value", [-0.1, 1.1, "0.5", True, None])
def test_panic_threshold_is_validated(value: Any) -> None:
    with pytest.raises(ValueError, match="panic_threshold"):
        Pool(["a"], clock=FakeClock(), rng=random.Random(0), panic_threshold=value)


# -- slow start -------------------------------------------------------------------------------------------------------


def expected_share(elapsed: float, window: float = 10.0) -> float:
    """Slow start in ten steps: 10% at first, then step k of window/10 gives k/10 (never below 10%)."""
    step = int(elapsed / (window / 10) + 1e-9)
    return 1.0 if step >= 10 else max(0.1, step / 10)


def test_a_host_added_by_update_ramps_up_in_steps() -> None:
    h = Harness(["a", "b"], slow_start=10.0)
    assert h["a"].effective_weight == 1.0  # initial hosts do not ramp
    h.pool.update(["a", "b", {"url": "c", "weight": 2}])
    c = next(s for s in h.pool.hosts if s.url == "http://c")
    assert c.effective_weight == pytest.approx(0.2)  # 10% of weight 2
    assert c.weight == 2.0
    values = []
    for tick in range(1, 25):  # every half second, through acquire
        h.clock.now = 100.0 + tick * 0.5
        lease = h.pool.acquire()
        assert lease is not None
        lease.abandon()
        assert c.effective_weight == pytest.approx(2.0 * expected_share(tick * 0.5)), tick * 0.5
        values.append(c.effective_weight)
        assert h["a"].effective_weight == h["b"].effective_weight == 1.0
    assert values == sorted(values)
    assert len(set(values)) == 10  # 0.2, 0.4, ..., 2.0 (0.2 held for the first two steps)
    assert values[-1] == 2.0
    assert c.ramp_started_at is None


def test_slow_start_steps_on_the_hosts_property_too() -> None:
    h = Harness(["a"], slow_start=4.0)
    h.pool.update(["a", "b"])
    b = next(s for s in h.pool.hosts if s.url == "http://b")
    h.clock.now = 102.0
    h.pool.hosts  # noqa: B018 - reading the hosts applies due changes
    h.pool.acquire()
    assert b.effective_weight == pytest.approx(0.5)
    h.clock.now = 104.0
    h.pool.acquire()
    assert b.effective_weight == 1.0


def test_slow_start_zero_gives_full_weight_at_once() -> None:
    h = Harness(["a", "b"], slow_start=0.0)
    h.pool.update(["a", "b", {"url": "c", "weight": 3}])
    c = next(s for s in h.pool.hosts if s.url == "http://c")
    assert c.effective_weight == 3.0
    assert c.ramp_started_at is None


def test_a_host_returning_from_ejection_ramps_up() -> None:
    h = Harness(
        ["a", "b", "c"], slow_start=10.0, outlier_detection=outliers(consecutive_failures=1, base_ejection_time=5.0)
    )
    a = h["a"]
    h.fail("a")
    h.clock.now = 105.0
    h.picks(1)
    assert not a.ejected
    assert a.effective_weight == pytest.approx(0.1)
    for second in range(1, 11):
        h.clock.now = 105.0 + second
        h.picks(1)
        assert a.effective_weight == pytest.approx(expected_share(second)), second
    assert a.effective_weight == 1.0


def test_a_host_turning_healthy_ramps_up() -> None:
    h = Harness(["a", "b"], slow_start=2.0, health_check=HealthCheck(unhealthy_threshold=1, healthy_threshold=1))
    a = h["a"]
    h.pool.report_check(a, False, "down")
    h.pool.report_check(a, True, "up")
    assert a.effective_weight == pytest.approx(0.1)
    h.clock.now = 101.0
    h.picks(1)
    assert a.effective_weight == pytest.approx(0.5)
    h.clock.now = 102.0
    h.picks(1)
    assert a.effective_weight == 1.0


@pytest.mark.parametrize(("strategy", "per_second"), [("weighted_round_robin", 420), ("weighted_random", 2000)])
def test_weighted_strategies_give_a_ramping_host_a_growing_share(strategy: str, per_second: int) -> None:
    h = Harness(["a", "b"], strategy, seed=2, slow_start=10.0)
    h.pool.update(["a", "b", "c"])
    c = next(s for s in h.pool.hosts if s.url == "http://c")
    shares = []
    for second in range(12):
        picked = 0
        for i in range(per_second):
            h.clock.now = 100.0 + second + i / per_second
            lease = h.pool.acquire()
            assert lease is not None
            picked += lease.host is c
            lease.abandon()
        shares.append(picked / per_second)
    expected = [expected_share(s) / (2 + expected_share(s)) for s in range(12)]
    tolerance = 0.01 if strategy == "weighted_round_robin" else 0.035
    for got, want in zip(shares, expected, strict=True):
        assert got == pytest.approx(want, abs=tolerance), (shares, expected)
    assert shares[0] < 0.07
    assert shares[-1] > 0.3
    assert all(later >= earlier - tolerance for earlier, later in itertools.pairwise(shares))


# -- acquire(exclude=...) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_exclude_is_honoured_while_another_candidate_exists(strategy: str) -> None:
    h = Harness(names(5), strategy, seed=4)
    states = list(h.states.values())
    rng = random.Random(99)
    returned: Counter[str] = Counter()
    for i in range(300):
        excluded = rng.sample(states, rng.randint(1, len(states) - 1))
        key = f"key-{i % 7}" if i % 2 else None
        lease = h.pool.acquire(key, exclude=excluded)
        assert lease is not None
        assert lease.host not in excluded, (i, key, lease.host.url, [s.url for s in excluded])
        returned[lease.host.url] += 1
        lease.release(failed=False)
    assert len(returned) == 5
    # the one host left is always the one returned
    for state in states:
        others = [s for s in states if s is not state]
        for key in (None, "k"):
            lease = h.pool.acquire(key, exclude=others)
            assert lease is not None
            assert lease.host is state
            lease.release(failed=False)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_exclude_only_considers_candidates(strategy: str) -> None:
    h = Harness(names(4), strategy, seed=8, outlier_detection=outliers(consecutive_failures=1, max_ejection_percent=25))
    h.fail("h0")
    assert h["h0"].ejected
    tried = [h["h1"], h["h2"]]
    for i in range(50):
        lease = h.pool.acquire(f"k{i}", exclude=tried)
        assert lease is not None
        assert lease.host is h["h3"]
        lease.release(failed=False)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("seed", range(4))
def test_all_excluded_gives_the_strategys_pick(strategy: str, seed: int) -> None:
    for key in (None, f"user-{seed}"):
        plain = Harness(names(5), strategy, seed=seed)
        excluding = Harness(names(5), strategy, seed=seed)
        for _ in range(seed):  # move the rotation along a bit, identically in both
            for harness in (plain, excluding):
                lease = harness.pool.acquire(key)
                assert lease is not None
                lease.release(failed=False)
        expected = plain.pool.acquire(key)
        got = excluding.pool.acquire(key, exclude=list(excluding.states.values()))
        assert expected is not None
        assert got is not None
        assert got.host.url == expected.host.url
        assert got.host.outstanding == 1


# -- leases -----------------------------------------------------------------------------------------------------------


def test_abandon_counts_nothing_but_outstanding() -> None:
    h = Harness(["a"], "least_response_time", outlier_detection=outliers(consecutive_failures=1))
    a = h["a"]
    lease = h.pool.acquire()
    assert lease is not None
    assert (a.outstanding, a.requests) == (1, 1)
    h.clock.advance(3.0)
    lease.abandon()
    assert (a.outstanding, a.requests, a.failures, a.consecutive_failures) == (0, 1, 0, 0)
    assert a.ewma_latency is None
    assert a.peak_ewma is None
    assert not a.ejected
    lease.abandon()
    lease.release(failed=True)  # already ended: nothing more happens
    assert (a.outstanding, a.failures) == (0, 0)
    assert h.events == []


def test_a_failed_release_records_a_latency_penalty() -> None:
    h = Harness(["a", "b"])
    a = h["a"]
    lease = h.lease_on("a")
    lease.release(failed=True)  # failed at once
    assert a.ewma_latency is not None
    assert a.ewma_latency >= 0.25
    assert a.peak_ewma is not None
    assert a.peak_ewma >= 0.25
    assert (a.failures, a.consecutive_failures) == (1, 1)
    # a slow failure is recorded at its real duration
    b = h["b"]
    lease = h.lease_on("b")
    h.clock.advance(2.0)
    lease.release(failed=True)
    assert b.ewma_latency == pytest.approx(2.0)
    # and a failure is never cheaper than twice the host's average
    fast = Harness(["c"], ewma_decay=1e9)
    c = fast["c"]
    for _ in range(3):
        lease = fast.lease_on("c")
        fast.clock.advance(0.4)
        lease.release(failed=False)
    lease = fast.lease_on("c")
    lease.release(failed=True)
    assert c.peak_ewma == pytest.approx(0.8)


def test_a_failed_release_of_a_removed_host_ejects_nothing() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=1))
    lease = h.lease_on("a")
    h.pool.update(["b", "c"])
    h.take()
    lease.release(failed=True)
    assert not h["a"].ejected
    assert h.events == []
    assert h["a"].outstanding == 0


# -- gateway failures, other 5xx, and success-rate ejection (Envoy) -----------------------------------------------


def answer(h: Harness, name: str, status: int, times: int = 1) -> None:
    for _ in range(times):
        h.lease_on(name).release(status=status)


@pytest.mark.parametrize("status", [500, 501, 505, 507, 599])
def test_other_5xx_never_eject_on_a_run(status: int) -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3, success_rate_interval=None))
    answer(h, "a", status, 50)
    assert not h["a"].ejected
    assert (h["a"].failures, h["a"].consecutive_failures, h["a"].consecutive_errors) == (50, 0, 50)
    assert "ejected" not in h.kinds()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_statuses_and_transport_errors_eject_on_a_run(status: int) -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3))
    answer(h, "a", status, 2)
    h.fail("a")
    assert h["a"].ejected
    assert "3 consecutive gateway failures" in h.events[-1].reason


def test_an_answer_that_is_no_gateway_failure_ends_the_run() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3))
    for ending in (500, 200, 404):
        answer(h, "a", 503, 2)
        answer(h, "a", ending)
        assert h["a"].consecutive_failures == 0
    answer(h, "a", 503, 2)
    assert not h["a"].ejected
    answer(h, "a", 503)
    assert h["a"].ejected


def test_consecutive_5xx_keeps_the_former_rule_available() -> None:
    h = Harness(["a", "b", "c"], outlier_detection=outliers(consecutive_failures=3, consecutive_5xx=4))
    answer(h, "a", 500, 2)
    answer(h, "a", 503)
    assert not h["a"].ejected
    h.fail("a")  # four in a row of any kind
    assert h["a"].ejected
    assert "4 consecutive failures (5xx included)" in h.events[-1].reason
    assert (h["a"].consecutive_failures, h["a"].consecutive_errors) == (0, 0)


SUCCESS_RATE = {"success_rate_interval": 10.0, "success_rate_minimum_hosts": 5, "success_rate_request_volume": 20}


def _traffic(h: Harness, statuses: dict[str, int], rounds: int) -> None:
    """``rounds`` answers from each host, with its status."""
    for _ in range(rounds):
        for name, status in statuses.items():
            answer(h, name, status)


def test_a_host_that_fails_where_the_others_do_not_is_ejected_at_the_end_of_the_interval() -> None:
    h = Harness(names(5), outlier_detection=outliers(**SUCCESS_RATE))
    statuses = dict.fromkeys(names(5), 200) | {"h2": 500}
    _traffic(h, statuses, 25)
    assert not h["h2"].ejected  # judged when the interval ends
    h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert h["h2"].ejected
    assert [s.ejected for s in h.states.values()].count(True) == 1
    [event] = [e for e in h.events if e.kind == "ejected"]
    assert "success rate 0.0% is below the pool's threshold" in event.reason
    # The next interval starts afresh: the answer that ended the last one is its first.
    assert (h["h0"].window_requests, h["h2"].window_requests) == (1, 0)


@pytest.mark.parametrize("status", [500, 503])
def test_a_failure_that_every_host_gives_ejects_nobody(status: int) -> None:
    h = Harness(names(6), outlier_detection=outliers(consecutive_failures=1000, **SUCCESS_RATE))
    for _ in range(5):
        _traffic(h, dict.fromkeys(names(6), status), 30)
        _traffic(h, dict.fromkeys(names(6), 200), 10)
        h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert not any(s.ejected for s in h.states.values())
    assert all(s.times_ejected == 0 for s in h.states.values())


def test_success_rate_needs_enough_hosts_with_enough_requests() -> None:
    h = Harness(names(5), outlier_detection=outliers(**SUCCESS_RATE))
    statuses = dict.fromkeys(names(5), 200) | {"h2": 500}
    _traffic(h, statuses, 19)  # one request short of the volume on every host
    h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert not h["h2"].ejected
    _traffic(h, {name: status for name, status in statuses.items() if name != "h4"}, 25)  # 4 hosts qualify
    h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert not h["h2"].ejected


def test_success_rate_ejection_is_capped_like_any_other() -> None:
    h = Harness(names(10), outlier_detection=outliers(max_ejection_percent=10.0, **SUCCESS_RATE))
    statuses = dict.fromkeys(names(10), 200) | {"h3": 500, "h7": 500}
    _traffic(h, statuses, 25)
    h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert [n for n, s in h.states.items() if s.ejected] in (["h3"], ["h7"])


def test_the_default_ejection_share_is_ten_percent_but_one_of_two_can_go() -> None:
    assert OutlierDetection().max_ejection_percent == 10.0
    defaults = {"base_ejection_time": 10.0, "max_ejection_time": 100.0, "consecutive_failures": 3}
    for count, most in [(2, 1), (5, 1), (19, 1), (20, 2), (30, 3)]:
        h = Harness(names(count), outlier_detection=OutlierDetection(**defaults), panic_threshold=0.0)
        for name in names(count):
            h.fail(name, 3)
        assert sum(s.ejected for s in h.states.values()) == most, count


def test_success_rate_can_be_turned_off() -> None:
    h = Harness(names(5), outlier_detection=outliers(**(SUCCESS_RATE | {"success_rate_interval": None})))
    _traffic(h, dict.fromkeys(names(5), 200) | {"h2": 500}, 25)
    h.clock.advance(10.0)
    answer(h, "h0", 200)
    assert not h["h2"].ejected
