"""max_in_flight: a host at its cap is skipped by every strategy; a full pool refuses at once and says so."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from lbclient._core import STRATEGIES, Host, HostState, Lease, Pool, PoolEvent, Strategy
from lbclient._core._pool import OVERLOAD_QUIET
from lbclient.testing import FakeClock


def make_pool(hosts: Any, strategy: Any = "round_robin", **kwargs: Any) -> tuple[Pool, FakeClock, list[PoolEvent]]:
    clock = FakeClock(100.0)
    events: list[PoolEvent] = []
    pool = Pool(hosts, strategy, clock=clock, rng=random.Random(3), listener=events.append, **kwargs)
    return pool, clock, events


def take(pool: Pool, count: int, key: str | None = None) -> list[Lease]:
    leases = [pool.acquire(key) for _ in range(count)]
    assert all(lease is not None for lease in leases), leases
    return [lease for lease in leases if lease is not None]


def per_host(leases: list[Lease]) -> dict[str, int]:
    return dict(Counter(lease.host.url for lease in leases))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("key", [None, "the-same-key"])
def test_every_strategy_skips_a_host_at_its_cap(strategy: str, key: str | None) -> None:
    pool, _, _ = make_pool(["a", "b", "c"], strategy, max_in_flight=2)
    leases = take(pool, 6, key)
    assert per_host(leases) == {"http://a": 2, "http://b": 2, "http://c": 2}
    assert all(h.overloaded and not h.selectable for h in pool.hosts)
    assert pool.acquire(key) is None
    assert pool.saturated
    # One request ends: its host, and only it, takes the next one.
    freed = leases.pop(3)
    freed.release(status=200)
    assert not freed.host.overloaded
    lease = pool.acquire(key)
    assert lease is not None
    assert lease.host is freed.host
    assert pool.acquire(key) is None
    assert pool.stats().rejected == 2


def test_a_hosts_own_cap_wins_over_the_pools() -> None:
    pool, _, _ = make_pool([Host("a", max_in_flight=1), "b"], "least_connections", max_in_flight=3)
    assert [h.max_in_flight for h in pool.hosts] == [1, 3]
    assert per_host(take(pool, 4)) == {"http://a": 1, "http://b": 3}
    assert pool.acquire() is None


def test_without_a_cap_nothing_is_ever_overloaded() -> None:
    pool, _, events = make_pool(["a", "b"])
    leases = take(pool, 1000)
    assert not any(h.overloaded for h in pool.hosts)
    assert all(h.selectable for h in pool.hosts)
    for lease in leases:
        lease.release()
    assert pool.stats().rejected == 0
    assert events == []


def test_panic_honours_the_caps() -> None:
    pool, _, _ = make_pool(["a", "b", "c"], "round_robin", max_in_flight=1)
    for state in pool.hosts[1:]:
        state.healthy = False
    pool.refresh()
    assert pool.panic
    assert per_host(take(pool, 3)) == {"http://a": 1, "http://b": 1, "http://c": 1}
    assert pool.acquire() is None
    assert pool.stats().rejected == 1


def test_a_retry_goes_to_an_untried_host_with_room() -> None:
    strategy = _Stubborn()
    pool, _, _ = make_pool(["a", "b", "c"], strategy, max_in_flight=1)
    a, b, c = pool.hosts
    strategy.choose = b
    take(pool, 1)  # b is full
    strategy.choose = a
    for _ in range(20):  # the strategy proposes a, which was tried: the untried host with room is c
        retry = pool.acquire(exclude=[a])
        assert retry is not None
        assert retry.host is c
        retry.release()
    held = take(pool, 1)[0]
    assert held.host is a  # c is free again, a full now
    retry = pool.acquire(exclude=[b])
    assert retry is not None
    assert retry.host is c
    # Every untried host is full and the tried one too: refused.
    assert pool.acquire(exclude=[a]) is None
    held.release()
    # Every untried host is full, the tried one has room: better than none.
    retry = pool.acquire(exclude=[a])
    assert retry is not None
    assert retry.host is a


def test_the_overloaded_flag_shows_in_stats_and_reprs() -> None:
    pool, _, _ = make_pool(["a", "b"], max_in_flight=1)
    take(pool, 1)
    [a, b] = pool.stats().hosts
    assert sorted([a.overloaded, b.overloaded]) == [False, True]
    assert "overloaded=1" in repr(pool)
    busy = next(h for h in pool.hosts if h.overloaded)
    assert repr(busy).endswith(" overloaded>")
    assert pool.stats().as_dict()["rejected"] == 0


def test_an_overloaded_event_per_episode_not_per_request() -> None:
    pool, clock, events = make_pool(["a", "b"], max_in_flight=1)
    leases = take(pool, 2)
    for _ in range(5):
        assert pool.acquire() is None
        clock.advance(OVERLOAD_QUIET / 10)
    assert [(e.kind, e.host) for e in events] == [("overloaded", None)]
    assert "max_in_flight" in events[0].reason
    # Requests end and start again: the pool is full again, within the same episode.
    leases.pop().release()
    leases.extend(take(pool, 1))
    assert pool.acquire() is None
    assert len(events) == 1
    clock.advance(OVERLOAD_QUIET)
    assert pool.acquire() is None
    assert [e.kind for e in events] == ["overloaded", "overloaded"]
    assert pool.stats().rejected == 7


def test_no_candidate_at_all_is_not_a_refusal() -> None:
    pool, _, events = make_pool(["a", "b"], max_in_flight=1, panic_threshold=0.0)
    for state in pool.hosts:
        state.healthy = False
    pool.refresh()
    assert pool.acquire() is None
    assert not pool.saturated
    assert pool.stats().rejected == 0
    assert [e.kind for e in events] == []


def test_an_update_applies_a_new_cap_to_requests_in_flight() -> None:
    pool, _, _ = make_pool(["a", "b"], "least_connections")
    leases = take(pool, 4)
    assert per_host(leases) == {"http://a": 2, "http://b": 2}
    pool.update([Host("a", max_in_flight=2), "b"])
    a, b = pool.hosts
    assert (a.overloaded, a.selectable, b.overloaded) == (True, False, False)
    assert {take(pool, 1)[0].host.url for _ in range(3)} == {"http://b"}
    pool.update(["a", "b"])
    assert not a.overloaded
    assert a.selectable


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "4"])
def test_the_pools_cap_is_validated(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"max_in_flight must be an int >= 1 or None, got {value!r}"):
        make_pool(["a"], max_in_flight=value)


class _Stubborn(Strategy):
    """Always picks one given host, candidate or not."""

    name = "stubborn"

    def __init__(self, choose: HostState | None = None) -> None:
        super().__init__()
        self.choose = choose

    def pick(self, key: str | None, now: float) -> HostState | None:
        return self.choose if self.choose is not None else (self._view.candidates or (None,))[0]


def test_a_strategy_that_picks_a_host_outside_the_pool_is_an_error() -> None:
    stranger = HostState(Host("http://stranger"))
    pool, _, _ = make_pool(["a", "b"], _Stubborn(stranger))
    with pytest.raises(RuntimeError, match=r"strategy <_Stubborn stubborn> picked host 'http://stranger'.*not in the"):
        pool.acquire()
    assert stranger.outstanding == 0
    assert [h.requests for h in pool.hosts] == [0, 0]


def test_a_strategy_that_picks_an_ejected_host_is_an_error() -> None:
    strategy = _Stubborn()
    pool, _, _ = make_pool(["a", "b", "c"], strategy)
    a = pool.hosts[0]
    a.ejected = True
    pool.refresh()
    strategy.choose = a
    with pytest.raises(RuntimeError, match=r"picked host 'http://a', which is ejected, unhealthy or drained"):
        pool.acquire()
    assert a.outstanding == 0


def test_a_strategy_that_keeps_picking_a_full_host_gets_one_with_room() -> None:
    strategy = _Stubborn()
    pool, _, _ = make_pool(["a", "b", "c"], strategy, max_in_flight=1)
    strategy.choose = pool.hosts[0]
    assert take(pool, 3)[0].host.url == "http://a"
    assert pool.acquire() is None
    assert sorted(h.outstanding for h in pool.hosts) == [1, 1, 1]


PASS_OVER_BY_THEMSELVES = sorted(set(STRATEGIES) - {"round_robin", "weighted_round_robin", "random", "weighted_random"})


@pytest.mark.parametrize("strategy", PASS_OVER_BY_THEMSELVES)
def test_load_and_hash_strategies_pass_a_full_host_over_without_the_pools_fallback(strategy: str) -> None:
    """Their own pick skips the host (infinite load, the other of two choices, a rehash), so the pool
    never has to ask again: the pick keeps the strategy's own quality."""
    pool, clock, _ = make_pool([Host("a", max_in_flight=1), "b", "c"], strategy)
    a, b, c = pool.hosts
    for step in range(100):  # a full at 1 in flight, b and c with more: a looks the least loaded
        if a.overloaded and min(b.outstanding, c.outstanding) >= 2:
            break
        pool.acquire(f"key{step}")
        clock.advance(0.001)
    assert (a.outstanding, a.overloaded) == (1, True)
    picks = {pool.strategy.pick(f"key{i}", clock.now) for i in range(200)}
    assert picks
    assert picks <= {b, c}
