"""Hash strategies: stable keys across pools and processes, stickiness while hosts are up, and the
consistent hash ring moving only about 1/n of the keys."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from hashlib import blake2b
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lbclient._core
from lbclient._core import ConsistentHash, Pool, hash64
from lbclient.testing import FakeClock

HASH_STRATEGIES = ("ip_hash", "url_hash", "consistent_hash")
REPO = Path(lbclient._core.__file__).resolve().parents[2]

#: hash64("some-key"): pinned, because every process and machine (and every release) must agree on it.
SOME_KEY_HASH = 8501553350748105294


def make_pool(hosts: Any, strategy: Any, *, seed: int = 0, **kwargs: Any) -> Pool:
    return Pool(hosts, strategy, clock=FakeClock(), rng=random.Random(seed), **kwargs)


def servers(count: int) -> list[str]:
    return [f"http://10.0.0.{i}:8080" for i in range(count)]


def route(pool: Pool, key: str | None) -> str:
    lease = pool.acquire(key)
    assert lease is not None
    lease.release(failed=False)
    return lease.host.url


def routes(pool: Pool, keys: list[str]) -> dict[str, str]:
    return {key: route(pool, key) for key in keys}


KEYS = [f"/items/{i}" for i in range(2000)]


# --- hash64 -----------------------------------------------------------------------------------------


def test_hash64_is_pinned_blake2b() -> None:
    assert hash64("some-key") == SOME_KEY_HASH
    assert hash64("some-key") == int.from_bytes(blake2b(b"some-key", digest_size=8).digest(), "big")
    assert 0 <= hash64("") < 1 << 64
    assert hash64("a") != hash64("b")
    # non-ASCII and lone surrogates (from surrogateescape'd bytes) do not raise
    assert hash64("caf\u00e9") != hash64("cafe")
    assert isinstance(hash64("\udcff"), int)


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(key=st.text(max_size=40))
def test_hash64_is_a_64_bit_function_of_the_key(key: str) -> None:
    assert hash64(key) == hash64(str(key))
    assert 0 <= hash64(key) < 1 << 64


_CHILD = """
import json, random, sys
from lbclient._core import Pool, hash64

class Clock:
    def __call__(self):
        return 0.0

hosts = [f"http://10.0.0.{i}:8080" for i in range(7)]
out = {"hash": hash64("some-key"), "builtin": hash("some-key"), "routes": {}}
for name in ("ip_hash", "url_hash", "consistent_hash"):
    pool = Pool(hosts, name, clock=Clock(), rng=random.Random(12345))
    routes = []
    for i in range(200):
        lease = pool.acquire(f"key-{i}")
        lease.release(failed=False)
        routes.append(lease.host.url)
    out["routes"][name] = routes
print(json.dumps(out))
"""


def run_child(hash_seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_same_key_same_host_in_other_processes() -> None:
    one = run_child("1")
    two = run_child("2")
    # control: the child processes really have differently salted str hashes
    assert one["builtin"] != two["builtin"]
    assert one["hash"] == two["hash"] == hash64("some-key") == SOME_KEY_HASH
    hosts = servers(7)
    for name in HASH_STRATEGIES:
        pool = make_pool(hosts, name, seed=1)
        here = [route(pool, f"key-{i}") for i in range(200)]
        assert one["routes"][name] == here
        assert two["routes"][name] == here
        assert len(set(here)) == 7  # and the keys are actually spread


# --- same key, same host ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
def test_same_key_same_host_across_pools(strategy: str) -> None:
    first = make_pool(servers(5), strategy, seed=1)
    second = make_pool(servers(5), strategy, seed=2)
    mapping = routes(first, KEYS)
    assert routes(second, KEYS) == mapping
    # and again on the same pool: sticky
    assert routes(first, KEYS) == mapping
    counts = Counter(mapping.values())
    assert set(counts) == set(servers(5))
    assert min(counts.values()) > 250  # about 400 each


def test_consistent_hash_does_not_depend_on_configuration_order() -> None:
    hosts = servers(6)
    mapping = routes(make_pool(hosts, "consistent_hash"), KEYS)
    assert routes(make_pool(list(reversed(hosts)), "consistent_hash"), KEYS) == mapping


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
def test_hash_honours_weights(strategy: str) -> None:
    pool = make_pool([{"url": "a", "weight": 1}, {"url": "b", "weight": 3}], strategy)
    counts = Counter(routes(pool, [f"user-{i}" for i in range(4000)]).values())
    assert 0.17 < counts["http://a"] / 4000 < 0.33, counts


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
def test_key_none_goes_round_robin(strategy: str) -> None:
    pool = make_pool(servers(3), strategy)
    sequence = [route(pool, None) for _ in range(7)]
    start = servers(3).index(sequence[0])  # a random start, as round robin's, then turns
    assert sequence == [servers(3)[(start + i) % 3] for i in range(7)]
    starts = {route(make_pool(servers(3), strategy, seed=seed), None) for seed in range(30)}
    assert starts == set(servers(3))
    pool.hosts[1].ejected = True
    pool.refresh()
    assert [route(pool, None) for _ in range(4)].count(servers(3)[1]) == 0


# --- keys of hosts that stay up do not move ----------------------------------------------------------


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
@pytest.mark.parametrize("attr", ["ejected", "healthy"])
def test_keys_of_up_hosts_do_not_move_when_another_host_fails(strategy: str, attr: str) -> None:
    pool = make_pool(servers(6), strategy)
    before = routes(pool, KEYS)
    down = {pool.hosts[2], pool.hosts[4]}
    for state in down:
        setattr(state, attr, attr == "ejected")
    pool.refresh()
    assert not pool.panic
    after = routes(pool, KEYS)
    down_urls = {s.url for s in down}
    moved = {k for k in KEYS if after[k] != before[k]}
    assert moved == {k for k in KEYS if before[k] in down_urls}
    assert not set(after.values()) & down_urls
    # the displaced keys spread over the hosts that are left rather than all landing on one
    assert len({after[k] for k in moved}) >= 3
    # and when the hosts come back, every key returns
    for state in down:
        setattr(state, attr, attr != "ejected")
    pool.refresh()
    assert routes(pool, KEYS) == before


@pytest.mark.parametrize("strategy", ["ip_hash", "url_hash"])
def test_rehash_falls_back_when_almost_every_host_is_down(strategy: str) -> None:
    pool = make_pool(servers(30), strategy, panic_threshold=0)
    for state in pool.hosts[1:]:
        state.ejected = True
    pool.refresh()
    assert set(routes(pool, KEYS[:300]).values()) == {servers(30)[0]}


@pytest.mark.parametrize("strategy", HASH_STRATEGIES)
def test_in_panic_keys_keep_their_hosts(strategy: str) -> None:
    pool = make_pool(servers(4), strategy, panic_threshold=0.5)
    before = routes(pool, KEYS)
    for state in pool.hosts[:3]:
        state.healthy = False
    pool.refresh()
    assert pool.panic
    assert routes(pool, KEYS) == before


# --- consistent hash ring ----------------------------------------------------------------------------


RING_KEYS = [f"/objects/{i}" for i in range(5000)]


@pytest.mark.parametrize("removed", [0, 3, 9])
def test_consistent_hash_removing_one_of_ten_moves_about_a_tenth(removed: int) -> None:
    hosts = servers(10)
    pool = make_pool(hosts, "consistent_hash")
    before = routes(pool, RING_KEYS)
    gone = hosts[removed]
    pool.update([h for h in hosts if h != gone])
    after = routes(pool, RING_KEYS)
    moved = [k for k in RING_KEYS if after[k] != before[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in RING_KEYS if before[k] == gone)
    assert 0.05 <= len(moved) / len(RING_KEYS) <= 0.16, len(moved)
    # the removed host's keys spread over the rest
    assert len({after[k] for k in moved}) >= 5


def test_consistent_hash_adding_a_host_only_takes_keys_for_it() -> None:
    hosts = servers(10)
    pool = make_pool(hosts, "consistent_hash")
    before = routes(pool, RING_KEYS)
    pool.update([*hosts, "http://10.0.1.1:8080"])
    after = routes(pool, RING_KEYS)
    moved = [k for k in RING_KEYS if after[k] != before[k]]
    assert {after[k] for k in moved} == {"http://10.0.1.1:8080"}
    assert 0.045 <= len(moved) / len(RING_KEYS) <= 0.15, len(moved)


def test_consistent_hash_ejecting_moves_only_its_own_keys() -> None:
    pool = make_pool(servers(10), "consistent_hash")
    before = routes(pool, RING_KEYS)
    victim = pool.hosts[6]
    victim.ejected = True
    pool.refresh()
    after = routes(pool, RING_KEYS)
    moved = [k for k in RING_KEYS if after[k] != before[k]]
    assert moved
    assert all(before[k] == victim.url for k in moved)
    assert all(after[k] != victim.url for k in RING_KEYS)
    # ejecting walks each key to its next point on the same ring: the same hosts as removing it
    removed = make_pool([h for h in servers(10) if h != victim.url], "consistent_hash")
    assert routes(removed, RING_KEYS) == after


def test_consistent_hash_vnodes() -> None:
    with pytest.raises(ValueError, match="0"):
        ConsistentHash(vnodes=0)
    with pytest.raises(ValueError, match="True"):
        ConsistentHash(vnodes=True)
    few = make_pool(servers(10), ConsistentHash(vnodes=1))
    many = make_pool(servers(10), ConsistentHash(vnodes=400))
    spread_few = Counter(routes(few, RING_KEYS).values())
    spread_many = Counter(routes(many, RING_KEYS).values())
    # more points per host: a more even spread
    assert max(spread_many.values()) - min(spread_many.values()) < max(spread_few.values()) - min(
        spread_few.get(h, 0) for h in servers(10)
    )
    assert max(spread_many.values()) < 700
