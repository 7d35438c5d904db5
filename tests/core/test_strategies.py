"""Strategies (CONTRACT section 3), driven through the pure Pool with a fake clock and seeded generators."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbclient._core import (
    STRATEGIES,
    HostState,
    Lease,
    LeastConnections,
    LeastResponseTime,
    PeakEwma,
    Pool,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    WeightedLeastConnections,
    WeightedRandom,
    WeightedRoundRobin,
)
from lbclient.testing import FakeClock

HASH_STRATEGIES = ("ip_hash", "url_hash", "consistent_hash")
RANDOM_STRATEGIES = ("random", "weighted_random", "power_of_two_choices", "peak_ewma")
LEAST_LOADED = ("least_connections", "weighted_least_connections", "least_response_time")


def make_pool(hosts: Any, strategy: Any = "round_robin", *, seed: int = 0, **kwargs: Any) -> tuple[Pool, FakeClock]:
    clock = FakeClock()
    return Pool(hosts, strategy, clock=clock, rng=random.Random(seed), **kwargs), clock


def names(count: int) -> list[str]:
    return [f"h{i}" for i in range(count)]


def url(name: str) -> str:
    return f"http://{name}"


def pick(pool: Pool, key: str | None = None) -> str:
    """One complete request: acquire and release at once; returns the host's name."""
    lease = pool.acquire(key)
    assert lease is not None
    lease.release(failed=False)
    return lease.host.url.removeprefix("http://")


def picks(pool: Pool, count: int, key: str | None = None) -> list[str]:
    return [pick(pool, key) for _ in range(count)]


def hold(pool: Pool, count: int, key: str | None = None) -> list[Lease]:
    leases = []
    for _ in range(count):
        lease = pool.acquire(key)
        assert lease is not None
        leases.append(lease)
    return leases


def in_panic(pool: Pool) -> bool:
    return pool.panic  # a call, so that type checkers do not narrow the property across refresh()


def by_url(pool: Pool) -> dict[str, HostState]:
    return {h.url.removeprefix("http://"): h for h in pool.hosts}


def assert_turns(sequence: list[str], order: list[str]) -> None:
    """``sequence`` takes ``order``'s hosts in turn (cyclically), from wherever it starts."""
    start = order.index(sequence[0])
    assert sequence == [order[(start + i) % len(order)] for i in range(len(sequence))], (sequence, order)


def assert_repeats(sequence: list[str], hosts: list[str]) -> None:
    """Every host once per round, in one order (any order) that repeats round after round."""
    first = sequence[: len(hosts)]
    assert sorted(first) == sorted(hosts), sequence
    assert sequence == [first[i % len(hosts)] for i in range(len(sequence))], sequence


def test_strategy_table_is_complete() -> None:
    assert set(STRATEGIES) == {
        "round_robin",
        "weighted_round_robin",
        "random",
        "weighted_random",
        "least_connections",
        "weighted_least_connections",
        "least_response_time",
        "power_of_two_choices",
        "peak_ewma",
        "ip_hash",
        "url_hash",
        "consistent_hash",
    }
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        pool, _ = make_pool(["a"], name)
        assert pool.strategy.name == name


# --- every strategy: candidates, panic, nothing to pick -------------------------------------------


def least_loaded_cost(name: str, host: HostState) -> tuple[int, float]:
    """Reference cost of the least-loaded strategies, written from their documentation."""
    if name == "least_connections":
        return (0, host.outstanding)
    if name == "weighted_least_connections":
        return (0, host.outstanding / host.weight)
    latency = host.ewma_latency
    if latency is None or latency <= 0:  # unprobed: free while idle, then one request at a time
        return (0, 0.0) if host.outstanding == 0 else (1, host.outstanding)
    return (0, latency * (host.outstanding + 1) / host.weight)


_configs = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3]), st.booleans(), st.booleans()), min_size=1, max_size=6
).filter(lambda cs: any(w > 0 for w, _, _ in cs))
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from([None, "k1", "k2", "/x", "10.0.0.1", "user-7"])),
        st.tuples(st.just("acquire"), st.just(None)),
        st.tuples(st.just("release"), st.integers(0, 99), st.booleans()),
        st.tuples(st.just("toggle"), st.integers(0, 99), st.sampled_from(["healthy", "ejected", "weight"])),
        st.tuples(st.just("advance"), st.floats(0.001, 3.0)),
    ),
    max_size=60,
)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@settings(derandomize=True, database=None, max_examples=60, deadline=None)
@given(config=_configs, threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]), ops=_ops)
def test_only_candidates_are_picked(
    strategy: str, config: list[tuple[int, bool, bool]], threshold: float, ops: list[tuple[Any, ...]]
) -> None:
    """Outside panic only available hosts are picked; in panic any non-drained member; ``None`` when there
    is nothing to pick. Counters add up and ``outstanding`` returns to 0."""
    hosts = [{"url": f"h{i}", "weight": w} for i, (w, _, _) in enumerate(config)]
    pool, clock = make_pool(hosts, strategy, panic_threshold=threshold)
    states = pool.hosts
    for state, (_, healthy, ejected) in zip(states, config, strict=True):
        state.healthy = healthy
        state.ejected = ejected
    pool.refresh()
    held: list[Lease] = []
    started: Counter[str] = Counter()
    failed: Counter[str] = Counter()

    for op in ops:
        if op[0] == "acquire":
            members = [s for s in states if s.weight > 0]
            available = [s for s in members if s.healthy and not s.ejected]
            panic = len(available) < threshold * len(members)
            assert pool.panic is panic
            allowed = members if panic else available
            lease = pool.acquire(op[1])
            if not allowed:
                assert lease is None
                continue
            assert lease is not None
            assert any(lease.host is s for s in allowed), (lease.host, allowed)
            assert lease.started_at == clock.now
            if strategy in LEAST_LOADED:
                # the cost before this pick: undo the count the pool just added
                lease.host.outstanding -= 1
                best = min(least_loaded_cost(strategy, s) for s in allowed)
                got = least_loaded_cost(strategy, lease.host)
                lease.host.outstanding += 1
                assert got[0] == best[0]
                assert math.isclose(got[1], best[1], rel_tol=1e-9, abs_tol=1e-12), (got, best)
            started[lease.host.url] += 1
            held.append(lease)
        elif op[0] == "release" and held:
            lease = held.pop(op[1] % len(held))
            lease.release(failed=op[2])
            if op[2]:
                failed[lease.host.url] += 1
        elif op[0] == "toggle":
            state = states[op[1] % len(states)]
            if op[2] == "weight":
                state.weight = 0.0 if state.weight > 0 else float(1 + op[1] % 3)
            else:
                setattr(state, op[2], not getattr(state, op[2]))
            pool.refresh()
        elif op[0] == "advance":
            clock.advance(op[1])

    for lease in held:
        lease.release(failed=False)
    for state in states:
        assert state.outstanding == 0
        assert state.requests == started[state.url]
        assert state.failures == failed[state.url]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_unavailable_hosts_are_skipped(strategy: str) -> None:
    hosts = [*names(5), {"url": "drained", "weight": 0}]
    pool, clock = make_pool(hosts, strategy)
    state = by_url(pool)
    state["h1"].ejected = True
    state["h3"].healthy = False
    pool.refresh()
    assert not pool.panic
    seen: Counter[str] = Counter()
    for i in range(300):
        lease = pool.acquire(f"key-{i}" if strategy in HASH_STRATEGIES else None)
        assert lease is not None
        clock.advance(0.01)
        lease.release(failed=False)
        seen[lease.host.url] += 1
    assert set(seen) == {url("h0"), url("h2"), url("h4")}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_panic_spreads_over_every_member(strategy: str) -> None:
    hosts = [*names(5), {"url": "drained", "weight": 0}]
    pool, clock = make_pool(hosts, strategy, panic_threshold=0.5)
    state = by_url(pool)
    state["h0"].ejected = state["h1"].ejected = True
    pool.refresh()
    assert not in_panic(pool)  # 3 of 5 available
    state["h2"].healthy = False
    pool.refresh()
    assert in_panic(pool)  # 2 of 5 available: 40% < 50%
    seen: Counter[str] = Counter()
    for i in range(400):
        lease = pool.acquire(f"key-{i}" if strategy in HASH_STRATEGIES else None)
        assert lease is not None
        clock.advance(1 / 128)  # exact in binary: equal latencies are equal, not decided by float noise
        lease.release(failed=False)
        seen[lease.host.url] += 1
    assert set(seen) == {url(n) for n in names(5)}
    # not piled on the two hosts that are left
    assert seen[url("h3")] + seen[url("h4")] < 300
    # once enough hosts are back, panic ends and only available hosts are picked again
    state["h0"].ejected = False
    pool.refresh()
    assert not in_panic(pool)
    rest = {pick(pool, f"key-{i}" if strategy in HASH_STRATEGIES else None) for i in range(200)}
    if strategy in ("least_response_time", "peak_ewma"):
        assert rest <= {"h0", "h3", "h4"}  # equal latencies: float noise decides, never an unavailable host
    else:
        assert rest == {"h0", "h3", "h4"}


def test_panic_threshold_boundaries() -> None:
    pool, _ = make_pool(names(4), panic_threshold=0.5)
    states = pool.hosts
    states[0].ejected = states[1].ejected = True
    pool.refresh()
    assert not in_panic(pool)  # exactly half available is not "fewer than half"
    states[2].ejected = True
    pool.refresh()
    assert in_panic(pool)
    # drained hosts are not members: one of two members available is half
    pool2, _ = make_pool(["a", "b", {"url": "c", "weight": 0}, {"url": "d", "weight": 0}], panic_threshold=0.5)
    pool2.hosts[0].healthy = False
    pool2.refresh()
    assert not in_panic(pool2)
    assert set(picks(pool2, 10)) == {"b"}
    # threshold 1: any unavailable host means panic; threshold 0: never
    pool3, _ = make_pool(names(4), panic_threshold=1.0)
    pool3.hosts[0].ejected = True
    pool3.refresh()
    assert in_panic(pool3)
    assert set(picks(pool3, 8)) == set(names(4))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("attr", ["ejected", "healthy"])
def test_none_when_nothing_can_be_picked(strategy: str, attr: str) -> None:
    pool, _ = make_pool(names(3), strategy, panic_threshold=0)
    for state in pool.hosts:
        setattr(state, attr, attr == "ejected")
    pool.refresh()
    assert not pool.panic
    for key in (None, "k", "/path", "10.1.2.3"):
        assert pool.acquire(key) is None
    assert all(s.requests == 0 and s.outstanding == 0 for s in pool.hosts)
    # and the pool recovers when a host comes back
    setattr(pool.hosts[1], attr, attr == "healthy")
    pool.refresh()
    assert {pick(pool, k) for k in ("k", None, "x")} == {"h1"}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_none_when_every_host_is_drained_by_hand(strategy: str) -> None:
    pool, _ = make_pool(names(3), strategy)
    for state in pool.hosts:
        state.weight = 0
    pool.refresh()
    assert pool.acquire(None) is None
    assert pool.acquire("k") is None


# --- round robin --------------------------------------------------------------------------------------


def test_round_robin_order() -> None:
    pool, _ = make_pool(names(3))
    assert_turns(picks(pool, 7), names(3))


def test_round_robin_ignores_weights_and_skips_unavailable() -> None:
    pool, _ = make_pool(["h0", {"url": "h1", "weight": 5}, "h2", "h3"])
    assert_turns(picks(pool, 4), names(4))
    by_url(pool)["h1"].ejected = True
    pool.refresh()
    sequence = picks(pool, 9)
    assert "h1" not in sequence
    assert_turns(sequence, ["h0", "h2", "h3"])
    assert Counter(sequence) == {"h0": 3, "h2": 3, "h3": 3}
    # held leases do not change the order
    pool2, _ = make_pool(names(3))
    assert_turns([lease.host.url.removeprefix("http://") for lease in hold(pool2, 4)], names(3))


def first_picks(strategy: str, hosts: list[Any], pools: int = 100) -> Counter[str]:
    """The first pick of each of ``pools`` pools, each with its own seed: a fleet started together."""
    return Counter(pick(make_pool(hosts, strategy, seed=seed)[0]) for seed in range(pools))


@pytest.mark.parametrize("strategy", ["round_robin", "weighted_round_robin", *LEAST_LOADED, "url_hash"])
def test_a_fleet_of_pools_does_not_start_at_the_same_host(strategy: str) -> None:
    """Pools with different generators start their rotation (or break their first ties) at different
    hosts, as Envoy's round robin does: a fleet started together does not send every first request to
    the first host, its second to the second, and so on."""
    counts = first_picks(strategy, names(10))
    assert set(counts) == set(names(10)), counts
    assert max(counts.values()) <= 25, counts  # 10 expected of 100
    # and the second picks are as spread: the fleet does not walk the hosts in step
    seconds = Counter(picks(make_pool(names(10), strategy, seed=seed)[0], 2)[1] for seed in range(100))
    assert max(seconds.values()) <= 25, seconds


def test_weighted_round_robin_spreads_the_first_picks_within_a_weight_class() -> None:
    hosts = [{"url": f"h{i}", "weight": 2 if i < 4 else 1} for i in range(10)]
    counts = first_picks("weighted_round_robin", hosts)
    # the heavy class comes first in nginx's cycle; which of its hosts comes first is random
    assert set(counts) == {"h0", "h1", "h2", "h3"}, counts
    assert min(counts.values()) >= 10, counts


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "weighted_least_connections"])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_equal_shares_over_whole_rounds_from_any_start(strategy: str, count: int) -> None:
    hosts = names(count)
    for seed in range(20):
        pool, _ = make_pool(hosts, strategy, seed=seed)
        sequence = picks(pool, 5 * count)
        assert Counter(sequence) == dict.fromkeys(hosts, 5)
        if strategy == "round_robin":
            assert_turns(sequence, hosts)
        else:
            assert_repeats(sequence, hosts)


@pytest.mark.parametrize("strategy", ["round_robin", "weighted_round_robin", *LEAST_LOADED])
def test_a_seeded_strategy_object_repeats_its_order(strategy: str) -> None:
    """For a fixed order in your own tests: a strategy object with a seeded generator."""
    hosts = [{"url": f"h{i}", "weight": 1 + i % 2} for i in range(8)]
    cls = STRATEGIES[strategy]
    runs = [picks(make_pool(hosts, cls(rng=random.Random(42)), seed=seed)[0], 40) for seed in range(5)]
    assert all(run == runs[0] for run in runs[1:])  # the pool's own generator does not matter
    others = {tuple(picks(make_pool(hosts, cls(rng=random.Random(s)))[0], 40)) for s in range(10)}
    assert len(others) > 1  # while other seeds start elsewhere


# --- smooth weighted round robin ----------------------------------------------------------------------


def nginx_smooth_wrr(weights: list[int], count: int) -> list[int]:
    """nginx's ngx_http_upstream_get_peer, written out plainly."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(count):
        best = -1
        for i, weight in enumerate(weights):
            current[i] += weight
            if best == -1 or current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


def nginx_orders(weights: list[int], count: int) -> list[list[int]]:
    """nginx's sequence for every configuration that rotates the hosts of each weight class among that
    class's places (the orders weighted_round_robin may start with), as host indices."""
    classes: dict[int, list[int]] = {}
    for i, weight in enumerate(weights):
        classes.setdefault(weight, []).append(i)
    orders = []
    for shifts in itertools.product(*(range(len(places)) for places in classes.values())):
        order = list(range(len(weights)))  # order[place] = the host configured there
        for places, shift in zip(classes.values(), shifts, strict=True):
            for j, place in enumerate(places):
                order[place] = places[(j + shift) % len(places)]
        orders.append([order[place] for place in nginx_smooth_wrr(weights, count)])
    return orders


def test_weighted_round_robin_nginx_example() -> None:
    pool, _ = make_pool(
        [{"url": "a", "weight": 5}, {"url": "b", "weight": 1}, {"url": "c", "weight": 1}], "weighted_round_robin"
    )
    assert "".join(picks(pool, 21)) in ("aabacaa" * 3, "aacabaa" * 3)
    seen = set()
    for seed in range(20):
        pool, _ = make_pool(
            [{"url": "a", "weight": 5}, {"url": "b", "weight": 1}, {"url": "c", "weight": 1}],
            "weighted_round_robin",
            seed=seed,
        )
        seen.add("".join(picks(pool, 7)))
    assert seen == {"aabacaa", "aacabaa"}


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 12), min_size=1, max_size=8).filter(any), seed=st.integers(0, 2**32))
def test_weighted_round_robin_matches_nginx(weights: list[int], seed: int) -> None:
    """nginx's smooth sequence for the configuration with each weight class rotated at random; every cycle
    of sum(weights) picks gives each host exactly its weight."""
    hosts = [{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)]
    pool, _ = make_pool(hosts, "weighted_round_robin", seed=seed)
    live = [i for i, w in enumerate(weights) if w > 0]
    count = 2 * sum(weights) + 5
    got = picks(pool, count)
    expected = [[f"h{live[i]}" for i in order] for order in nginx_orders([weights[i] for i in live], count)]
    assert got in expected
    total = sum(weights)
    for cycle in (got[:total], got[total : 2 * total]):
        assert Counter(cycle) == {f"h{i}": w for i, w in enumerate(weights) if w}


def test_weighted_round_robin_rotations_cover_every_host_of_a_class() -> None:
    weights = [3, 1, 3, 1, 3]
    starts: Counter[tuple[str, str]] = Counter()
    for seed in range(200):
        pool, _ = make_pool(
            [{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)], "weighted_round_robin", seed=seed
        )
        sequence = picks(pool, sum(weights))
        starts[(sequence[0], next(s for s in sequence if s in ("h1", "h3")))] += 1
    # the first heavy host and the first light host are each drawn independently from their class
    assert set(starts) == {(a, b) for a in ("h0", "h2", "h4") for b in ("h1", "h3")}, starts


def test_weighted_round_robin_at_max_classes_is_still_exact() -> None:
    weights = list(range(1, WeightedRoundRobin.max_classes + 1))
    pool, _ = make_pool([{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)], "weighted_round_robin")
    total = sum(weights)
    assert picks(pool, total + 10) == [f"h{i}" for i in nginx_smooth_wrr(weights, total + 10)]


def test_weighted_round_robin_fractional_weights_scale() -> None:
    pool, _ = make_pool(
        [{"url": "h0", "weight": 1.5}, {"url": "h1", "weight": 0.5}, {"url": "h2", "weight": 1}], "weighted_round_robin"
    )
    assert picks(pool, 18) == [f"h{i}" for i in nginx_smooth_wrr([3, 1, 2], 18)]


def test_weighted_round_robin_follows_ejection() -> None:
    pool, _ = make_pool(
        [{"url": "a", "weight": 5}, {"url": "b", "weight": 1}, {"url": "c", "weight": 1}], "weighted_round_robin"
    )
    picks(pool, 3)
    by_url(pool)["a"].ejected = True
    pool.refresh()
    assert Counter(picks(pool, 10)) == {"b": 5, "c": 5}


@settings(derandomize=True, database=None, max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 80), unique=True, min_size=WeightedRoundRobin.max_classes + 1, max_size=45).map(
        lambda ws: [*ws, ws[0], ws[1]]
    )  # equal weights, too
)
def test_weighted_round_robin_many_weights_shares_per_period(weights: list[int]) -> None:
    """More than max_classes distinct weights: an EDF heap. Each period of sum(weights) picks gives every
    host exactly its weight."""
    assert len(set(weights)) > WeightedRoundRobin.max_classes
    pool, _ = make_pool([{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)], "weighted_round_robin")
    total = sum(weights)
    expected = {f"h{i}": w for i, w in enumerate(weights)}
    for _ in range(2):
        assert Counter(picks(pool, total)) == expected


def test_weighted_round_robin_edf_is_interleaved() -> None:
    weights = [100, *range(1, 40)]
    pool, _ = make_pool([{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)], "weighted_round_robin")
    sequence = picks(pool, sum(weights))
    assert Counter(sequence)["h0"] == 100
    # a heavy host is spread over the period, not sent a burst of 100 requests at once
    longest = max(len(run) for run in "".join("x" if s == "h0" else "." for s in sequence).split("."))
    assert longest <= 2
    # the many-weights path also skips ejected hosts and keeps exact shares on the rest
    by_url(pool)["h0"].ejected = True
    pool.refresh()
    assert Counter(picks(pool, sum(weights) - 100)) == {f"h{i}": w for i, w in enumerate(weights) if i}


# --- random strategies ---------------------------------------------------------------------------------


def test_random_is_uniform() -> None:
    pool, _ = make_pool(["a", {"url": "b", "weight": 9}, "c"], "random", seed=1)
    counts = Counter(picks(pool, 6000))
    for name in "abc":
        assert 1800 <= counts[name] <= 2200, counts


def test_weighted_random_follows_weights() -> None:
    weights = {"a": 1, "b": 2, "c": 7, "d": 0}
    pool, _ = make_pool([{"url": n, "weight": w} for n, w in weights.items()], "weighted_random", seed=2)
    counts = Counter(picks(pool, 10000))
    assert counts["d"] == 0
    for name in "abc":
        assert abs(counts[name] / 10000 - weights[name] / 10) < 0.03, counts


def test_weighted_random_fractional_weights() -> None:
    pool, _ = make_pool([{"url": "a", "weight": 0.25}, {"url": "b", "weight": 0.75}], "weighted_random", seed=3)
    share = Counter(picks(pool, 8000))["a"] / 8000
    assert 0.21 < share < 0.29


def test_power_of_two_choices_balances_in_flight_per_weight() -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    pool, _ = make_pool([{"url": n, "weight": w} for n, w in weights.items()], "power_of_two_choices", seed=4)
    hold(pool, 1000)
    state = by_url(pool)
    for name, weight in weights.items():
        assert abs(state[name].outstanding / 1000 - weight / 10) < 0.03, {n: s.outstanding for n, s in state.items()}


def test_power_of_two_choices_prefers_the_less_loaded_of_two() -> None:
    pool, _ = make_pool(["a", "b"], "power_of_two_choices", seed=5)
    state = by_url(pool)
    leases = hold(pool, 6)
    assert state["a"].outstanding == state["b"].outstanding == 3
    for lease in leases:
        if lease.host is state["a"]:
            lease.release(failed=False)
    # with two hosts both are always compared: the idle one wins until it catches up
    assert [lease.host.url for lease in hold(pool, 3)] == [url("a")] * 3


def test_power_of_two_choices_spreads_sequential_requests() -> None:
    pool, _ = make_pool(names(4), "power_of_two_choices", seed=6)
    counts = Counter(picks(pool, 4000))
    assert set(counts) == set(names(4))
    assert min(counts.values()) > 700


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_same_seed_same_sequence(strategy: str) -> None:
    def run(seed: int) -> list[str]:
        pool, clock = make_pool([{"url": f"h{i}", "weight": 1 + i % 3} for i in range(6)], strategy, seed=seed)
        driver = random.Random(99)  # the test's own schedule, identical in both runs
        held: list[Lease] = []
        sequence = []
        for i in range(400):
            lease = pool.acquire(f"k{driver.randrange(50)}" if i % 3 else None)
            assert lease is not None
            sequence.append(lease.host.url)
            held.append(lease)
            clock.advance(driver.random() * 0.05)
            while held and driver.random() < 0.6:
                held.pop(driver.randrange(len(held))).release(failed=driver.random() < 0.1)
        return sequence

    assert run(7) == run(7)
    if strategy in RANDOM_STRATEGIES:
        assert run(7) != run(8)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_global_random_is_not_used(strategy: str) -> None:
    state = random.getstate()
    try:
        random.seed(1)
        first = picks(make_pool(names(5), strategy, seed=3)[0], 50)
        random.seed(2)
        marker = random.getstate()
        second = picks(make_pool(names(5), strategy, seed=3)[0], 50)
        assert random.getstate() == marker
        assert first == second
    finally:
        random.setstate(state)


def test_strategy_keeps_its_own_generator() -> None:
    own = RandomChoice(rng=random.Random(11))
    pool, _ = make_pool(names(5), own, seed=0)
    assert pool.strategy.rng is own.rng
    reference, _ = make_pool(names(5), RandomChoice(rng=random.Random(11)), seed=12345)
    assert picks(pool, 50) == picks(reference, 50)


@pytest.mark.parametrize(
    "cls",
    [RoundRobin, WeightedRoundRobin, RandomChoice, WeightedRandom, PowerOfTwoChoices, PeakEwma, LeastConnections],
)
def test_strategy_objects_can_be_passed(cls: type) -> None:
    strategy = cls()
    pool, _ = make_pool(names(3), strategy)
    assert pool.strategy is strategy
    assert set(picks(pool, 30)) <= set(names(3))


# --- least connections ------------------------------------------------------------------------------


def test_least_connections_picks_fewest_in_flight() -> None:
    pool, _ = make_pool(names(3), "least_connections")
    state = by_url(pool)
    leases = hold(pool, 3)
    assert sorted(lease.host.url for lease in leases) == [url(n) for n in names(3)]
    next(lease for lease in leases if lease.host is state["h1"]).release(failed=False)  # h1: none in flight
    assert [lease.host.url for lease in hold(pool, 1)] == [url("h1")]
    more = hold(pool, 30)
    assert all(s.outstanding == 11 for s in state.values())
    # free five slots on h2: the next five go there
    for lease in [lease for lease in more if lease.host is state["h2"]][:5]:
        lease.release(failed=True)
    assert {lease.host.url for lease in hold(pool, 5)} == {url("h2")}
    for lease in [*leases, *more]:
        lease.release(failed=False)


def test_least_connections_ties_rotate() -> None:
    pool, _ = make_pool(names(3), "least_connections")
    assert_repeats(picks(pool, 7), names(3))
    # weights are ignored by least_connections
    pool2, _ = make_pool([{"url": "a", "weight": 10}, "b"], "least_connections")
    assert Counter(picks(pool2, 100)) == {"a": 50, "b": 50}


def test_weighted_least_connections_in_flight_per_weight() -> None:
    pool, _ = make_pool([{"url": "a", "weight": 3}, {"url": "b", "weight": 1}], "weighted_least_connections")
    state = by_url(pool)
    held = hold(pool, 8)
    assert (state["a"].outstanding, state["b"].outstanding) == (6, 2)
    held += hold(pool, 400)
    assert (state["a"].outstanding, state["b"].outstanding) == (306, 102)
    for lease in held:
        lease.release(failed=False)
    assert state["a"].outstanding == state["b"].outstanding == 0
    assert state["a"].requests + state["b"].requests == 408


@pytest.mark.parametrize("strategy", LEAST_LOADED)
def test_least_loaded_long_run_stays_exact(strategy: str) -> None:
    """Thousands of load changes (the heap compacts itself) and the pick is still the least loaded."""
    pool, clock = make_pool([{"url": f"h{i}", "weight": 1 + i % 4} for i in range(7)], strategy)
    driver = random.Random(5)
    held: list[Lease] = []
    for step in range(3000):
        if step % 500 == 250:
            target = pool.hosts[driver.randrange(7)]
            target.ejected = not target.ejected
            pool.refresh()
        if held and driver.random() < 0.5:
            clock.advance(driver.random() * 0.1)
            held.pop(driver.randrange(len(held))).release(failed=driver.random() < 0.2)
            continue
        lease = pool.acquire()
        assert lease is not None
        allowed = [s for s in pool.hosts if s.selectable]
        lease.host.outstanding -= 1
        best = min(least_loaded_cost(strategy, s) for s in allowed)
        got = least_loaded_cost(strategy, lease.host)
        lease.host.outstanding += 1
        assert got[0] == best[0]
        assert math.isclose(got[1], best[1], rel_tol=1e-9, abs_tol=1e-12)
        held.append(lease)
    for lease in held:
        lease.release(failed=False)
    assert all(s.outstanding == 0 for s in pool.hosts)


# --- latency-aware strategies ---------------------------------------------------------------------------


def serve(pool: Pool, clock: FakeClock, latency: dict[str, float], count: int) -> list[str]:
    """Sequential requests, each taking its host's latency on the fake clock."""
    out = []
    for _ in range(count):
        lease = pool.acquire()
        assert lease is not None
        name = lease.host.url.removeprefix("http://")
        clock.advance(latency[name])
        lease.release(failed=False)
        out.append(name)
    return out


def test_least_response_time_prefers_the_faster_host() -> None:
    pool, clock = make_pool(["slow", "fast"], "least_response_time")
    latency = {"slow": 0.1, "fast": 0.03}
    warmup = serve(pool, clock, latency, 2)
    assert sorted(warmup) == ["fast", "slow"]
    state = by_url(pool)
    assert state["slow"].ewma_latency == pytest.approx(0.1)
    assert state["fast"].ewma_latency == pytest.approx(0.03)
    assert serve(pool, clock, latency, 100) == ["fast"] * 100
    # in flight counts: 0.03 x 1, 2, 3 < 0.1 < 0.03 x 4
    assert [lease.host.url for lease in hold(pool, 4)] == [url("fast")] * 3 + [url("slow")]


@pytest.mark.parametrize("strategy", ["least_response_time", "peak_ewma"])
def test_unprobed_host_gets_one_request_at_a_time(strategy: str) -> None:
    pool, clock = make_pool(["a"], strategy)
    serve(pool, clock, {"a": 0.05}, 5)
    pool.update(["a", "new"])
    state = by_url(pool)
    assert state["a"].ewma_latency == pytest.approx(0.05)
    assert state["new"].ewma_latency is None
    leases = hold(pool, 20)
    assert state["new"].outstanding == 1
    assert state["a"].outstanding == 19
    first_new = next(lease for lease in leases if lease.host is state["new"])
    clock.advance(0.01)
    first_new.release(failed=False)
    assert state["new"].ewma_latency == pytest.approx(0.01)
    for lease in leases:
        lease.release(failed=False)
    # now measured as faster, the new host takes the sequential traffic
    assert serve(pool, clock, {"a": 0.05, "new": 0.01}, 20) == ["new"] * 20


def test_peak_ewma_prefers_the_faster_host_and_probes_the_slow_one_later() -> None:
    pool, clock = make_pool(["slow", "fast"], "peak_ewma", seed=1)
    latency = {"slow": 0.1, "fast": 0.01}
    assert sorted(serve(pool, clock, latency, 2)) == ["fast", "slow"]
    assert serve(pool, clock, latency, 300) == ["fast"] * 300
    # the slow host's peak EWMA decays while it gets no samples (10 s time constant), so it is
    # probed again after a while
    sequence = serve(pool, clock, latency, 4000)
    assert 1 <= sequence.count("slow") <= 40
    assert sequence.count("fast") > 3900


def test_peak_ewma_jumps_to_a_slow_sample() -> None:
    pool, clock = make_pool(["a", "b"], "peak_ewma")
    serve(pool, clock, {"a": 0.01, "b": 0.02}, 40)
    state = by_url(pool)
    assert state["a"].latency_samples >= 20
    lease = pool.acquire()
    assert lease is not None
    assert lease.host is state["a"]
    clock.advance(0.5)  # one very slow answer from a
    lease.release(failed=False)
    assert state["a"].peak_ewma == pytest.approx(0.5)
    assert state["a"].ewma_latency is not None
    assert state["a"].ewma_latency < 0.1
    assert serve(pool, clock, {"a": 0.01, "b": 0.02}, 10) == ["b"] * 10


def test_failed_requests_record_a_latency_penalty() -> None:
    pool, clock = make_pool(["a"], "least_response_time")
    lease = pool.acquire()
    assert lease is not None
    clock.advance(0.001)
    lease.release(failed=True)
    state = pool.hosts[0]
    assert state.ewma_latency is not None
    assert state.ewma_latency >= 0.25
    assert state.failures == 1
    assert state.outstanding == 0


def test_cancelled_requests_record_nothing_but_the_end() -> None:
    pool, clock = make_pool(["a"], "least_response_time")
    lease = pool.acquire()
    assert lease is not None
    clock.advance(5.0)
    lease.abandon()
    state = pool.hosts[0]
    assert (state.ewma_latency, state.failures, state.outstanding, state.requests) == (None, 0, 0, 1)


@pytest.mark.parametrize("strategy", ["least_response_time", "peak_ewma"])
def test_latency_aware_strategies_avoid_a_host_that_fails_fast(strategy: str) -> None:
    pool, clock = make_pool(["good", "bad"], strategy, seed=3)
    counts: Counter[str] = Counter()
    for _ in range(200):
        lease = pool.acquire()
        assert lease is not None
        name = lease.host.url.removeprefix("http://")
        counts[name] += 1
        clock.advance(0.0001 if name == "bad" else 0.01)
        lease.release(failed=name == "bad")
    assert counts["bad"] < 20, counts


@pytest.mark.parametrize("cls", [LeastResponseTime, WeightedLeastConnections])
def test_weight_divides_load(cls: type) -> None:
    pool, clock = make_pool([{"url": "a", "weight": 4}, {"url": "b", "weight": 1}], cls())
    serve(pool, clock, {"a": 0.02, "b": 0.02}, 2)
    held = hold(pool, 50)
    state = by_url(pool)
    assert state["a"].outstanding == 40
    assert state["b"].outstanding == 10
    for lease in held:
        lease.release(failed=False)


# --- state changes that change nothing must not disturb the rotation -----------------------------------


@pytest.mark.parametrize("via", ["refresh", "update"])
@pytest.mark.parametrize(
    "strategy",
    ["round_robin", "weighted_round_robin", "least_connections", "weighted_least_connections", "url_hash"],
)
def test_no_op_refresh_keeps_sequential_traffic_spread(strategy: str, via: str) -> None:
    """``refresh()`` (after a health round that changed nothing) or ``update()`` with the same hosts (a
    service-discovery poll) between requests must not send every request to the first host."""
    hosts = names(3)
    pool, _ = make_pool(hosts, strategy)
    counts: Counter[str] = Counter()
    for _ in range(300):
        counts[pick(pool)] += 1
        if via == "refresh":
            pool.refresh()
        else:
            pool.update(hosts)
    assert counts == {"h0": 100, "h1": 100, "h2": 100}


@pytest.mark.parametrize("via", ["refresh", "update"])
def test_no_op_refresh_does_not_starve_a_light_host_under_weighted_round_robin(via: str) -> None:
    hosts = [{"url": "heavy", "weight": 100}, {"url": "light", "weight": 1}]
    pool, _ = make_pool(hosts, "weighted_round_robin")
    counts: Counter[str] = Counter()
    for i in range(1010):
        counts[pick(pool)] += 1
        if i % 50 == 49:  # e.g. a health round or a discovery poll every 50 requests
            if via == "refresh":
                pool.refresh()
            else:
                pool.update(hosts)
    assert counts["light"] >= 8, counts  # nginx gives it 10 of 1010


@pytest.mark.parametrize("strategy", ["least_response_time", "peak_ewma"])
def test_a_host_measured_at_zero_latency_is_not_treated_as_unprobed(strategy: str) -> None:
    """A host that answered faster than the clock can measure (latency sample 0.0, as on a fake clock or
    a coarse monotonic clock) has been probed: it must not be limited to one request in flight while a
    slower host takes the rest."""
    pool, clock = make_pool(["fast", "slow"], strategy)
    serve(pool, clock, {"fast": 0.0, "slow": 0.05}, 2)
    state = by_url(pool)
    assert state["fast"].ewma_latency == 0.0
    assert state["slow"].ewma_latency == pytest.approx(0.05)
    leases = hold(pool, 10)
    assert state["fast"].outstanding >= state["slow"].outstanding, {n: s.outstanding for n, s in state.items()}
    for lease in leases:
        lease.release(failed=False)


@pytest.mark.parametrize("strategy", ["weighted_least_connections", "power_of_two_choices"])
def test_idle_hosts_share_sequential_requests_by_weight(strategy: str) -> None:
    pool, _ = make_pool([{"url": "a", "weight": 3}, {"url": "b", "weight": 1}], strategy, seed=7)
    counts = Counter(picks(pool, 400))
    assert 0.68 <= counts["a"] / 400 <= 0.82, counts


def test_least_connections_ignores_weights_on_ties() -> None:
    pool, _ = make_pool([{"url": "a", "weight": 3}, {"url": "b", "weight": 1}], "least_connections")
    assert_repeats(picks(pool, 6), ["a", "b"])


@pytest.mark.parametrize("weights", [[3, 1], [1, 2, 3], [5, 1, 1, 2], [1, 1, 1, 1, 4]])
def test_weighted_least_connections_ties_share_by_weight_exactly(weights: list[int]) -> None:
    """Idle hosts (every load 0) take turns by weight from a random start: each span of sum(weights)
    picks gives each host exactly its weight, whatever the seed."""
    hosts = [{"url": f"h{i}", "weight": w} for i, w in enumerate(weights)]
    total = sum(weights)
    expected = {f"h{i}": w for i, w in enumerate(weights)}
    firsts = set()
    for seed in range(100):
        pool, _ = make_pool(hosts, "weighted_least_connections", seed=seed)
        sequence = picks(pool, 4 * total)
        firsts.add(sequence[0])
        for cycle in range(4):
            assert Counter(sequence[cycle * total : (cycle + 1) * total]) == expected, (seed, sequence)
    assert len(firsts) == len(weights)  # and every host may come first


def test_a_joining_host_is_neither_flooded_nor_starved() -> None:
    pool, _ = make_pool(["a", "b"], "least_connections")
    picks(pool, 100)
    pool.update([url("a"), url("b"), url("c")])
    assert Counter(picks(pool, 30)) == {"a": 10, "b": 10, "c": 10}


@pytest.mark.parametrize("strategy", ["least_connections", "weighted_least_connections"])
def test_a_host_that_joins_every_pool_at_once_is_not_sent_every_next_request(strategy: str) -> None:
    """A fleet's pools all learn of a new host at the same moment (a deploy, a discovery push): each pool
    takes it at its own point of the round, not at its next pick."""
    soon = 0
    for seed in range(100):
        pool, _ = make_pool(names(5), strategy, seed=seed)
        picks(pool, 7 + seed % 5)
        pool.update([url(n) for n in names(6)])
        soon += "h5" in picks(pool, 2)
        assert Counter(picks(pool, 6 * 4)) == dict.fromkeys(names(6), 4)  # then plain turns, exact shares
    assert 15 <= soon <= 55, soon  # its 2 of 6 places in a round: a third of the pools


def test_peak_ewma_sees_a_host_that_stopped_answering_before_it_answers() -> None:
    pool, clock = make_pool(["stuck", "busy"], "peak_ewma", seed=5)
    for _ in range(20):  # both answer in 10 ms
        lease = pool.acquire()
        assert lease is not None
        clock.advance(0.01)
        lease.release(failed=False)
    states = by_url(pool)
    stuck, busy = states["stuck"], states["busy"]
    held = [pool.acquire(None, exclude=[busy])]
    clock.advance(1.0)  # the stuck host's one request is 1 s old and has not come back
    held += [pool.acquire(None, exclude=[stuck]) for _ in range(3)]
    assert (stuck.outstanding, busy.outstanding) == (1, 3)
    # By latency x load alone the stuck host (10 ms x 2) looks cheaper than busy (10 ms x 4).
    new = [pool.acquire() for _ in range(10)]
    assert all(lease is not None and lease.host is busy for lease in new)
    for lease in held + new:
        assert lease is not None
        lease.abandon()
