"""max_in_flight against real servers: the cap holds per host under 32 concurrent callers (the servers
count their own concurrency), and a pool whose every host is full refuses at once, saying so. Sync, on
asyncio and on trio (the ``flavor`` fixture)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

from lbclient import Host, NoAvailableHostError, PoolEvent
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

WORKERS = 32


async def _run_workers(flavor: Flavor, work: Callable[[], Awaitable[None]], count: int) -> None:
    """``count`` concurrent runs of ``work``: tasks for the async client; for the sync one, threads that
    each run it on an event loop of their own (the sync flavor's calls block, so they run in parallel)."""
    if flavor.is_async:
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(work)
    else:
        with ThreadPoolExecutor(count) as pool:
            for future in [pool.submit(anyio.run, work) for _ in range(count)]:
                future.result(timeout=60)


async def test_the_cap_holds_per_host_under_32_concurrent_callers(
    flavor: Flavor, make_backends: Callable[..., list[Backend]]
) -> None:
    backends = make_backends(3, delay=0.05)
    hosts = [Host(backends[0].url, max_in_flight=1), backends[1].url, backends[2].url]
    caps = [1, 3, 3]
    refusals: list[str] = []
    answers: list[str] = []
    async with flavor.client(hosts, max_in_flight=3, timeout=30.0) as client:
        assert [h.max_in_flight for h in client.pool.hosts] == caps

        async def attempts() -> None:
            for _ in range(12):
                try:
                    response = await flavor.get(client, "/slow")
                except NoAvailableHostError as exc:
                    refusals.append(str(exc))
                else:
                    assert response.status_code == 200
                    answers.append(response.extensions["lb_host"])

        await _run_workers(flavor, attempts, WORKERS)
        stats = client.pool.stats()
        assert [h.outstanding for h in stats.hosts] == [0, 0, 0]
    assert [b.peak_concurrency for b in backends] == caps  # reached, never exceeded
    assert len(answers) + len(refusals) == WORKERS * 12
    assert refusals, "32 callers never filled 7 places"
    assert all("every available host" in message and "max_in_flight" in message for message in refusals)
    assert stats.rejected == len(refusals)
    # A refused request never reached a server.
    assert sum(b.count("GET", "/slow") for b in backends) == len(answers)


@contextlib.asynccontextmanager
async def _held(flavor: Flavor, client: Any, count: int, path: str) -> AsyncIterator[list[httpx.Response]]:
    """``count`` requests in flight in the background while the block runs; their responses after it."""
    responses: list[httpx.Response] = []
    if flavor.is_async:
        async with anyio.create_task_group() as group:

            async def one() -> None:
                responses.append(await client.get(path))

            for _ in range(count):
                group.start_soon(one)
            yield responses
    else:
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(client.get, path) for _ in range(count)]
            yield responses
            responses.extend(future.result(timeout=30) for future in futures)


async def test_with_every_host_full_a_request_fails_at_once_saying_so(
    flavor: Flavor, make_backends: Callable[..., list[Backend]]
) -> None:
    backends = make_backends(2, hang=True)
    events: list[PoolEvent] = []
    async with flavor.client(
        [b.url for b in backends], max_in_flight=1, timeout=30.0, on_event=events.append
    ) as client:
        states = client.pool.hosts
        async with _held(flavor, client, 2, "/held") as held:
            await eventually(lambda: [b.count("GET", "/held") for b in backends] == [1, 1], what="both hosts busy")
            assert [(h.outstanding, h.overloaded) for h in states] == [(1, True), (1, True)]
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(NoAvailableHostError, match=r"every available host .* is at its max_in_flight"):
                    await flavor.get(client, "/refused")
                assert time.monotonic() - started < 0.5
            assert "overloaded=2" in repr(client.pool)
            for backend in backends:
                backend.hang = False
        assert [r.status_code for r in held] == [200, 200]
        assert [(h.outstanding, h.overloaded) for h in states] == [(0, False), (0, False)]
        assert (await flavor.get(client, "/after")).status_code == 200
        assert client.pool.stats().rejected == 3
    assert [b.count("GET", "/refused") for b in backends] == [0, 0]
    assert [e.kind for e in events].count("overloaded") == 1
