"""Closing a client that is busy: it returns at once, cuts what is in flight with a clear error, starts
no attempt after, and leaves no connection open, even when a discovery source blocks.

Server-side counters prove what was sent; ``/proc/net/tcp`` shows which client connections are open.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from lbclient import AsyncLBClient, ClientClosedError, LBClient
from lbclient._discovery import Discovery, Resolution
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

IN_FLIGHT = 8


def client_connections(ports: set[int]) -> int:
    """Established TCP connections from this process's clients to ``ports`` on 127.0.0.1 (the client's end:
    the remote port is the server's)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port in ports and fields[3] == "01":  # 01: ESTABLISHED
            count += 1
    return count


def test_close_with_requests_in_flight_in_other_threads(backends: list[Backend]) -> None:
    for backend in backends:
        backend.hang = True
    ports = {b.port for b in backends}
    client = LBClient([b.url for b in backends], timeout=30.0)
    outcomes: list[BaseException | int] = []

    def one() -> None:
        try:
            outcomes.append(client.get("/x").status_code)
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(b.count() for b in backends) < IN_FLIGHT:
        assert time.monotonic() < deadline, "the requests never reached the servers"
        time.sleep(0.01)
    started = time.monotonic()
    client.close()
    took = time.monotonic() - started
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive(), "a request was not cut by close()"
    assert took < 1.0, f"close() took {took:.2f}s"
    assert len(outcomes) == IN_FLIGHT
    assert all(isinstance(outcome, ClientClosedError) for outcome in outcomes), outcomes
    assert "closed while GET" in str(outcomes[0])
    # Every thread is done: a retry after the close would have reached a server by now.
    assert sum(b.count() for b in backends) == IN_FLIGHT
    assert client._balancer._connections.registry is not None
    assert client._balancer._connections.registry.open == 0
    assert client_connections(ports) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_aclose_with_requests_in_flight_in_other_tasks(anyio_backend: str, backends: list[Backend]) -> None:
    for backend in backends:
        backend.hang = True
    ports = {b.port for b in backends}
    outcomes: list[BaseException | int] = []
    client = AsyncLBClient([b.url for b in backends], timeout=30.0)
    await client.__aenter__()

    async def one() -> None:
        try:
            outcomes.append((await client.get("/x")).status_code)
        except Exception as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(IN_FLIGHT):
            group.start_soon(one)
        await eventually(lambda: sum(b.count() for b in backends) == IN_FLIGHT, what="all requests at the servers")
        started = time.monotonic()
        await client.aclose()
        took = time.monotonic() - started
        with anyio.fail_after(5):
            await eventually(lambda: len(outcomes) == IN_FLIGHT, what="every request cut")
    assert took < 1.0, f"aclose() took {took:.2f}s"
    assert all(isinstance(outcome, ClientClosedError) for outcome in outcomes), outcomes
    assert sum(b.count() for b in backends) == IN_FLIGHT
    await eventually(lambda: client_connections(ports) == 0, timeout=2, what="every client connection closed")


async def test_a_request_after_close_is_refused_and_sends_nothing(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends]) as client:
        assert (await flavor.get(client, "/x")).status_code == 200
    transport = client._balancer
    request = httpx.Request("GET", f"http://{transport.service}/x")
    send = transport.handle_async_request if flavor.is_async else transport.handle_request

    async def sent() -> Any:
        result = send(request)
        return await result if flavor.is_async else result

    with pytest.raises(ClientClosedError, match="closed before GET"):
        await sent()
    assert sum(b.count() for b in backends) == 1


class _Stuck(Discovery):
    """A discovery source whose ``resolve()`` blocks from its second call on, until released."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(min_interval=0.01, max_interval=0.01)
        self.hosts = hosts
        self.calls = 0
        self.release = threading.Event()

    def resolve(self) -> Resolution:
        self.calls += 1
        if self.calls > 1:
            self.release.wait(30)
        return Resolution(self.hosts)


async def test_close_returns_while_a_discovery_source_blocks(flavor: Flavor, backends: list[Backend]) -> None:
    source = _Stuck([b.url for b in backends])
    try:
        client: Any = AsyncLBClient(source) if flavor.is_async else LBClient(source)
        if flavor.is_async:
            await client.__aenter__()
        await eventually(lambda: source.calls >= 2, what="resolve() blocked")
        started = time.monotonic()
        if flavor.is_async:
            await client.aclose()
        else:
            client.close()
        took = time.monotonic() - started
        assert took < 1.0, f"close took {took:.2f}s"
    finally:
        source.release.set()


@pytest.mark.parametrize("ttl", [math.nan, math.inf, -1.0, "5"])
def test_a_bad_ttl_is_refused(ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        Resolution(["127.0.0.1:1"], ttl=ttl)


class _FullBacklog:
    """A listening socket whose accept queue is full: a client's connect stays in progress until the test
    starts accepting. ``received()`` then accepts what is queued and returns the bytes each sent."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def received(self, until: Callable[[], bool]) -> list[bytes]:
        """Accept every queued connection (the queued connects then complete) until ``until()`` is true,
        and return what each sent."""
        self.listener.settimeout(0.05)
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while not until():
            assert time.monotonic() < deadline, "the client never finished"
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                try:
                    got.append(conn.recv(65536))
                except TimeoutError:
                    got.append(b"")
        return got

    def close(self) -> None:
        for sock in [self.listener, *self.fillers]:
            sock.close()


async def test_a_post_still_connecting_when_close_begins_is_never_sent(flavor: Flavor) -> None:
    server = _FullBacklog()
    outcome: list[BaseException | int] = []
    try:
        client: Any = (AsyncLBClient if flavor.is_async else LBClient)([f"127.0.0.1:{server.port}"], timeout=10.0)
        if flavor.is_async:
            await client.__aenter__()

            async def post() -> None:
                try:
                    outcome.append((await client.post("/charge", content=b"x")).status_code)
                except Exception as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(post)
                await eventually(lambda: client.pool.hosts[0].outstanding == 1, what="the POST connecting")
                await client.aclose()
                # Accept the queued connection now: its connect completes, after the close began.
                accepted = await anyio.to_thread.run_sync(server.received, lambda: bool(outcome))
        else:
            thread = threading.Thread(target=lambda: outcome.append(_post(client)))
            thread.start()
            await eventually(lambda: client.pool.hosts[0].outstanding == 1, what="the POST connecting")
            client.close()
            accepted = server.received(lambda: not thread.is_alive())
        assert len(outcome) == 1
        assert isinstance(outcome[0], ClientClosedError), outcome
        assert all(data == b"" for data in accepted), accepted  # not one byte of the POST was sent
    finally:
        server.close()


def _post(client: LBClient) -> BaseException | int:
    try:
        return client.post("/charge", content=b"x").status_code
    except Exception as exc:
        return exc
