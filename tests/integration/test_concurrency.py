"""Exact counters under threads and tasks; outstanding returns to 0 after cancelled requests."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from lbclient import AsyncLBClient, LBClient
from lbclient.testing import Backend


def test_sync_client_shared_between_threads_keeps_exact_counts(backends: list[Backend]) -> None:
    threads, per_thread = 8, 50
    errors: list[BaseException] = []
    with LBClient([b.url for b in backends], strategy="least_connections") as client:

        def work() -> None:
            try:
                for _ in range(per_thread):
                    assert client.get("/t").status_code == 200
            except BaseException as exc:  # collected and re-raised by the test thread
                errors.append(exc)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert not errors
        states = client.pool.hosts
        assert sum(h.requests for h in states) == threads * per_thread
        assert all(h.outstanding == 0 for h in states)
    assert sum(b.count("GET", "/t") for b in backends) == threads * per_thread


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["asyncio", "trio"])
async def test_concurrent_tasks_keep_exact_counts(mode: str, backends: list[Backend]) -> None:
    async with AsyncLBClient([b.url for b in backends], strategy="power_of_two_choices") as client:

        async def work() -> None:
            for _ in range(20):
                assert (await client.get("/t")).status_code == 200

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(work)
        assert sum(h.requests for h in client.pool.hosts) == 320
        assert all(h.outstanding == 0 for h in client.pool.hosts)


async def _wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await anyio.sleep(0.005)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["asyncio", "trio"])
async def test_cancelled_requests_release_their_host(mode: str, make_backends: object) -> None:
    (slow,) = make_backends(1, delay=5.0)  # type: ignore[operator]
    async with AsyncLBClient([slow.url]) as client:
        host = client.pool.hosts[0]
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client.get, "/slow")
                await _wait_until(lambda: host.outstanding == 3)
                scope.cancel()
        assert scope.cancelled_caught
        assert host.outstanding == 0
        assert host.requests == 3


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["asyncio", "trio"])
async def test_cancelled_stream_releases_its_host(mode: str, backends: list[Backend]) -> None:
    async with AsyncLBClient([backends[0].url]) as client:
        host = client.pool.hosts[0]
        with anyio.move_on_after(0.5) as scope:
            async with client.stream("GET", "/stream?chunks=100&delay=0.05") as response:
                async for _ in response.aiter_lines():
                    assert host.outstanding == 1
        assert scope.cancelled_caught
        assert host.outstanding == 0
