"""Hedged requests against real loopback servers, on asyncio and trio."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from lbclient import AsyncLBClient, Hedge, LBClient
from lbclient.testing import Backend

from conftest import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("mode", ["asyncio", "trio"])]

MakeBackends = Callable[..., list[Backend]]


def slow_then_fast(make_backends: MakeBackends) -> tuple[Backend, Backend]:
    (slow,) = make_backends(1, delay=2.0)
    (fast,) = make_backends(1)
    return slow, fast


async def test_a_slow_first_attempt_is_overtaken_by_the_hedge(mode: str, make_backends: MakeBackends) -> None:
    slow, fast = slow_then_fast(make_backends)
    hedge = Hedge(delay=0.05, budget_ratio=1.0)
    async with AsyncLBClient([slow.url], hedge=hedge, timeout=10.0) as client:
        client.pool.update([slow.url, fast.url])  # round robin keeps its place: slow first
        started = time.monotonic()
        response = await client.get("/x")
        elapsed = time.monotonic() - started
        assert response.json()["id"] == fast.name
        assert response.extensions["lb_attempts"] == 2
        assert elapsed < 1.5  # the slow host would have taken 2 s
        await eventually(lambda: all(h.outstanding == 0 for h in client.pool.hosts), what="both leases released")
        states = {h.url: h for h in client.pool.hosts}
        assert states[slow.url].failures == 0  # a cancelled loser is not the host's failure
        # ...but its time so far tells the balancer the host is slow.
        assert states[slow.url].ewma_latency is not None
        assert states[slow.url].ewma_latency >= 0.04
    assert slow.count("GET", "/x") == 1
    assert fast.count("GET", "/x") == 1


async def test_a_fast_answer_is_not_hedged(mode: str, backends: list[Backend]) -> None:
    async with AsyncLBClient([b.url for b in backends], hedge=Hedge(delay=1.0, budget_ratio=1.0)) as client:
        for _ in range(6):
            assert (await client.get("/x")).extensions["lb_attempts"] == 1
    assert sum(b.count() for b in backends) == 6


@pytest.mark.parametrize(
    ("method", "headers", "extensions"),
    [("POST", {}, {}), ("GET", {}, {"lb_hedge": False})],
)
async def test_requests_that_must_not_be_hedged(
    mode: str, make_backends: MakeBackends, method: str, headers: dict[str, str], extensions: dict[str, object]
) -> None:
    (slow,) = make_backends(1, delay=0.3)
    (fast,) = make_backends(1)
    async with AsyncLBClient([slow.url], hedge=Hedge(delay=0.02, budget_ratio=1.0), timeout=10.0) as client:
        client.pool.update([slow.url, fast.url])  # round robin keeps its place: slow first
        response = await client.request(method, "/x", headers=headers, extensions=extensions)
        assert response.json()["id"] == slow.name
        assert response.extensions["lb_attempts"] == 1
    assert fast.count() == 0


async def test_a_post_with_an_idempotency_key_is_hedged(mode: str, make_backends: MakeBackends) -> None:
    slow, fast = slow_then_fast(make_backends)
    async with AsyncLBClient([slow.url, fast.url], hedge=Hedge(delay=0.05, budget_ratio=1.0), timeout=10.0) as client:
        response = await client.post("/x", content=b"x", headers={"Idempotency-Key": "k1"})
    assert response.json()["id"] == fast.name


async def test_the_hedging_budget_caps_extra_requests(mode: str, make_backends: MakeBackends) -> None:
    (slow,) = make_backends(1, delay=0.1)
    (fast,) = make_backends(1)
    hedge = Hedge(delay=0.01, budget_ratio=0.1)
    async with AsyncLBClient([slow.url], hedge=hedge, timeout=10.0) as client:
        client.pool.update([slow.url, fast.url])  # slow stays first in round robin order
        for _ in range(20):
            await client.get("/x")
    hedged = slow.count() + fast.count() - 20  # arrivals beyond one per request
    assert 1 <= hedged <= 0.1 * 20


async def test_percentile_hedging_waits_for_enough_samples(mode: str, make_backends: MakeBackends) -> None:
    slow, fast = slow_then_fast(make_backends)
    slow.delay = 0.0
    async with AsyncLBClient([slow.url, fast.url], hedge=Hedge(percentile=0.9, budget_ratio=1.0), timeout=10.0) as c:
        assert c._balancer.pool.latency_percentile(0.9) is None
        for _ in range(80):
            await c.get("/warm")
        assert c._balancer.pool.latency_percentile(0.9) is not None
        slow.delay = 2.0
        started = time.monotonic()
        responses = [await c.get("/x") for _ in range(2)]
        assert time.monotonic() - started < 1.5
        assert {r.json()["id"] for r in responses} == {fast.name}


async def test_when_both_attempts_fail_retries_take_over(mode: str, make_backends: MakeBackends) -> None:
    a, b, c = make_backends(3, status=503)
    a.delay = 0.2
    async with AsyncLBClient([a.url, b.url, c.url], hedge=Hedge(delay=0.02, budget_ratio=1.0), timeout=10.0) as cl:
        response = await cl.get("/x")
        assert response.status_code == 503
        assert response.extensions["lb_attempts"] == 3
        await eventually(lambda: all(h.outstanding == 0 for h in cl.pool.hosts), what="leases released")


async def test_cancelling_a_hedged_request_releases_both_hosts(mode: str, make_backends: MakeBackends) -> None:
    (slow,) = make_backends(1, delay=2.0)
    (slower,) = make_backends(1, delay=3.0)
    async with AsyncLBClient([slow.url, slower.url], hedge=Hedge(delay=0.02, budget_ratio=1.0), timeout=10.0) as c:
        with anyio.move_on_after(0.3) as scope:
            await c.get("/x")
        assert scope.cancelled_caught
        assert all(h.outstanding == 0 for h in c.pool.hosts)
        assert all(h.failures == 0 for h in c.pool.hosts)


def test_the_sync_client_does_not_take_hedge(mode: str) -> None:
    with pytest.raises(TypeError, match="hedge"):
        LBClient(["a:1"], hedge=0.05)  # type: ignore[call-arg]
