"""The pool: leases and counters, latency bookkeeping on a fake clock, run-time updates, strategy ownership."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import pytest

from lbclient._core import (
    DEFAULT_EWMA_DECAY,
    DEFAULT_PANIC_THRESHOLD,
    PEAK_RELAX,
    STRATEGIES,
    HostState,
    Pool,
    RoundRobin,
)
from lbclient.testing import FakeClock


def make_pool(hosts: Any, strategy: Any = "round_robin", *, seed: int = 0, **kwargs: Any) -> tuple[Pool, FakeClock]:
    clock = FakeClock(100.0)
    return Pool(hosts, strategy, clock=clock, rng=random.Random(seed), **kwargs), clock


def state_of(pool: Pool, name: str) -> Any:
    return next(h for h in pool.hosts if h.url == f"http://{name}")


def test_defaults() -> None:
    assert DEFAULT_PANIC_THRESHOLD == 0.5
    assert DEFAULT_EWMA_DECAY > 0
    pool, _ = make_pool(["a"])
    assert pool.strategy.name == "round_robin"
    assert not pool.panic
    state = pool.hosts[0]
    assert (state.url, state.weight, state.healthy, state.ejected) == ("http://a", 1.0, True, False)
    assert (state.outstanding, state.requests, state.failures, state.ewma_latency) == (0, 0, 0, None)
    assert "http://a" in repr(state)
    assert "round_robin" in repr(pool)


def test_hosts_is_a_new_list_of_live_states() -> None:
    pool, _ = make_pool(["a", "b"])
    listing = pool.hosts
    listing.clear()
    assert len(pool.hosts) == 2
    live = pool.hosts
    lease = pool.acquire()
    assert lease is not None
    assert any(lease.host is state for state in live)
    assert [state.outstanding for state in live] == [int(lease.host is state) for state in live]


def test_counters_and_idempotent_release() -> None:
    pool, _ = make_pool(["a"])
    state = pool.hosts[0]
    leases = []
    for _ in range(3):
        lease = pool.acquire()
        assert lease is not None
        leases.append(lease)
    assert state.outstanding == 3
    assert state.requests == 3
    leases[0].release(failed=True)
    leases[0].release(failed=True)  # a second release changes nothing
    leases[0].release(failed=False)
    assert (state.outstanding, state.failures) == (2, 1)
    leases[1].release(failed=False)
    leases[2].release(failed=True)
    assert (state.outstanding, state.requests, state.failures) == (0, 3, 2)


def test_latency_comes_from_the_injected_clock() -> None:
    pool, clock = make_pool(["a"], ewma_decay=10.0)
    state = pool.hosts[0]
    lease = pool.acquire()
    assert lease is not None
    assert lease.started_at == 100.0
    clock.advance(0.25)
    lease.release(failed=False)
    assert state.ewma_latency == pytest.approx(0.25, abs=1e-12)
    assert state.peak_ewma == pytest.approx(0.25, abs=1e-12)
    # a second sample 5 s later is folded in with weight max(1 - exp(-5 / 10), 1 / 2): the plain mean
    clock.advance(4.95)
    lease = pool.acquire()
    assert lease is not None
    clock.advance(0.05)
    lease.release(failed=False)
    assert state.ewma_latency == pytest.approx((0.25 + 0.05) / 2)
    # peak EWMA: a faster sample pulls the peak down, but not below the sample
    assert state.peak_ewma is not None
    assert 0.05 < state.peak_ewma < 0.25
    # a slower sample becomes the peak at once
    lease = pool.acquire()
    assert lease is not None
    clock.advance(2.0)
    lease.release(failed=False)
    assert state.peak_ewma == pytest.approx(2.0)
    assert state.ewma_latency is not None
    assert state.ewma_latency < 2.0
    # the peak relaxes toward the EWMA within about PEAK_RELAX, the whole toward 0 within the decay
    ewma = state.ewma_latency
    assert state.peak_ewma_at(clock.now, 10.0) == pytest.approx(2.0)
    later = state.peak_ewma_at(clock.now + PEAK_RELAX, 10.0)
    relaxed = ewma + (2.0 - ewma) / math.e
    assert later == pytest.approx(relaxed * math.exp(-PEAK_RELAX / 10.0))
    assert state.peak_ewma_at(clock.now + 10.0, 10.0) == pytest.approx(ewma / math.e, rel=1e-3)


def _samples(pool: Pool, clock: FakeClock, latencies: list[float], gap: float = 0.0) -> HostState:
    """Sends one request per latency through a one-host pool, ``gap`` seconds apart; returns the host."""
    for latency in latencies:
        lease = pool.acquire()
        assert lease is not None
        clock.advance(latency)
        lease.release(failed=False)
        clock.advance(gap)
    return pool.hosts[0]


def test_ewma_time_constant_is_configurable() -> None:
    slow, slow_clock = make_pool(["a"], ewma_decay=1000.0)
    fast, fast_clock = make_pool(["a"], ewma_decay=0.001)
    for pool, clock in ((slow, slow_clock), (fast, fast_clock)):
        _samples(pool, clock, [1.0] * 100 + [0.1])
    assert slow.hosts[0].ewma_latency == pytest.approx(1.0, abs=0.01)
    assert fast.hosts[0].ewma_latency == pytest.approx(0.1, abs=0.01)


def test_a_slow_first_sample_does_not_outweigh_the_samples_after_it() -> None:
    """A first request with a connection set-up in it must not weigh for a whole time constant: until the
    host has that much history, its EWMA is the plain mean of its samples."""
    pool, clock = make_pool(["a"], ewma_decay=10.0)
    state = _samples(pool, clock, [0.100] + [0.005] * 99, gap=0.001)
    assert state.ewma_latency == pytest.approx((0.100 + 99 * 0.005) / 100)


def test_a_latency_spike_is_forgotten_within_a_second_but_a_slow_host_stays_slow() -> None:
    spiked, spiked_clock = make_pool(["a"], ewma_decay=10.0)
    state = _samples(spiked, spiked_clock, [0.005] * 200 + [0.120], gap=0.001)
    assert state.peak_ewma == pytest.approx(0.120)  # the spike counts at once
    state = _samples(spiked, spiked_clock, [0.005] * 200, gap=0.001)  # ~1.2 s of normal answers
    assert state.peak_ewma is not None
    assert state.peak_ewma < 0.009
    slowed, slowed_clock = make_pool(["a"], ewma_decay=10.0)
    state = _samples(slowed, slowed_clock, [0.005] * 200 + [0.120] * 20, gap=0.001)
    # twenty slow answers in a row moved the EWMA itself: the host still costs over 10x a fast one later
    assert state.ewma_latency is not None
    assert state.ewma_latency > 0.020
    assert state.peak_ewma_at(slowed_clock.now + PEAK_RELAX, 10.0) > 10 * 0.005


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_update_keeps_state_of_hosts_that_stay(strategy: str) -> None:
    pool, clock = make_pool(["a", "b", "c"], strategy)
    for _ in range(9):
        lease = pool.acquire()
        assert lease is not None
        clock.advance(0.1)
        lease.release(failed=lease.host.url == "http://b")
    held = [pool.acquire() for _ in range(6)]
    b = state_of(pool, "b")
    b.ejected = True
    pool.refresh()
    b_before = (b.requests, b.failures, b.outstanding, b.ewma_latency)
    c = state_of(pool, "c")
    c_before = (c.requests, c.failures, c.outstanding, c.ewma_latency, c.peak_ewma)
    assert c.ewma_latency is not None

    pool.update([{"url": "c", "weight": 2}, "b:80", "d"])

    assert [h.url for h in pool.hosts] == ["http://c", "http://b", "http://d"]
    assert state_of(pool, "b") is b
    assert state_of(pool, "c") is c
    assert (b.requests, b.failures, b.outstanding, b.ewma_latency) == b_before
    assert b.ejected  # health stays too
    assert (c.requests, c.failures, c.outstanding, c.ewma_latency, c.peak_ewma) == c_before
    assert c.weight == 2.0
    assert c.host.weight == 2.0
    d = state_of(pool, "d")
    assert (d.requests, d.failures, d.outstanding, d.ewma_latency, d.healthy, d.ejected) == (
        0,
        0,
        0,
        None,
        True,
        False,
    )
    # removed host: never picked again, its leases still release cleanly
    a_leases = [lease for lease in held if lease is not None and lease.host.url == "http://a"]
    assert a_leases
    a_state = a_leases[0].host
    for i in range(60):
        lease = pool.acquire(f"k{i}")
        assert lease is not None
        assert lease.host.url in ("http://c", "http://d")
        lease.release(failed=False)
    for lease in held:
        assert lease is not None
        lease.release(failed=False)
    assert a_state.outstanding == 0
    assert all(h.outstanding == 0 for h in pool.hosts)


def test_update_back_and_forth() -> None:
    pool, _ = make_pool(["a", "b"], "least_connections")
    lease_a = pool.acquire()
    assert lease_a is not None
    old_a = lease_a.host
    pool.update(["b"])
    pool.update(["a", "b"])
    new_a = state_of(pool, "a")
    assert new_a is not old_a  # a host that left and came back starts fresh
    assert new_a.outstanding == 0
    lease_a.release(failed=False)
    assert old_a.outstanding == 0
    assert new_a.outstanding == 0
    picked = [pool.acquire() for _ in range(4)]
    assert sorted(lease.host.url for lease in picked if lease is not None) == ["http://a"] * 2 + ["http://b"] * 2


def test_update_with_drain_stops_new_requests() -> None:
    pool, _ = make_pool(["a", "b"])
    first, second = pool.acquire(), pool.acquire()  # round robin: one of the two on each host
    assert first is not None
    assert second is not None
    held, other = (first, second) if first.host.url == "http://a" else (second, first)
    assert (held.host.url, other.host.url) == ("http://a", "http://b")
    other.release(failed=False)
    pool.update([{"url": "a", "weight": 0}, "b"])
    a = state_of(pool, "a")
    assert a.outstanding == 1  # in flight, kept
    for _ in range(5):
        lease = pool.acquire()
        assert lease is not None
        assert lease.host.url == "http://b"
        lease.release(failed=False)
    held.release(failed=False)
    assert a.outstanding == 0


def test_refresh_after_weight_change_by_hand() -> None:
    pool, _ = make_pool(["a", "b"], "weighted_round_robin")
    state_of(pool, "a").weight = 3
    pool.refresh()
    sequence = []
    for _ in range(8):
        lease = pool.acquire()
        assert lease is not None
        sequence.append(lease.host.url[-1])
        lease.release(failed=False)
    assert "".join(sequence) == "aaba" * 2  # nginx smooth WRR for weights 3:1


def test_a_strategy_object_serves_one_pool() -> None:
    strategy = RoundRobin()
    make_pool(["a"], strategy)
    with pytest.raises(ValueError, match="another pool"):
        make_pool(["b"], strategy)


def test_the_lock_is_held_around_state_changes() -> None:
    class RecordingLock:
        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.entries = 0
            self.depth = 0

        def __enter__(self) -> None:
            self.inner.acquire()
            self.entries += 1
            self.depth += 1

        def __exit__(self, *exc: object) -> None:
            self.depth -= 1
            self.inner.release()

    lock = RecordingLock()
    pool = Pool(["a", "b"], "least_connections", clock=FakeClock(), rng=random.Random(0), lock=lock)
    lease = pool.acquire()
    assert lease is not None
    assert lock.entries == 1
    lease.release(failed=False)
    assert lock.entries == 2
    pool.refresh()
    pool.update(["a"])
    assert lock.entries == 4
    assert lock.depth == 0


def test_rng_of_the_pool_is_given_to_the_strategy() -> None:
    rng = random.Random(3)
    pool = Pool(["a", "b"], "random", clock=FakeClock(), rng=rng)
    assert pool.strategy.rng is rng
    assert pool.clock() == 0.0
