"""lbclient.httpx2: the balancing transports on httpx2 clients, against real servers on 127.0.0.1.

Each test body runs on ``httpx2.Client`` and on ``httpx2.AsyncClient`` (asyncio and trio). The I/O is
httpx2's own (httpcore2); the balancer in between is lbclient's one core. Every wait is a condition with
a deadline.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

try:
    import httpx2
except ImportError:  # pragma: no cover - the test extra installs it
    if os.environ.get("CI"):
        raise
    pytest.skip("httpx2 is not installed (pip install '.[test]' installs it)", allow_module_level=True)

import lbclient
from lbclient import HealthCheck, Hedge
from lbclient.httpx2 import AsyncLoadBalancingTransport, LoadBalancingTransport, NoAvailableHostError
from lbclient.testing import Backend

from conftest import eventually

pytestmark = pytest.mark.anyio

SERVICE = "users"
REPO = Path(__file__).resolve().parents[2]


class Bridge:
    """Drives ``httpx2.Client`` or ``httpx2.AsyncClient`` with the bridge, through the same async test code."""

    def __init__(self, mode: str) -> None:
        self.is_async = mode != "sync"

    def transport(self, hosts: list[str], **options: Any) -> Any:
        cls = AsyncLoadBalancingTransport if self.is_async else LoadBalancingTransport
        return cls(hosts, service=SERVICE, **options)

    @contextlib.asynccontextmanager
    async def client(
        self, hosts: list[str], *, mounted: bool = True, client_options: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[Any]:
        """A client (``client_options`` are its keywords) with the bridge (``options``) mounted for
        ``users``, or as the client's only transport; ``client.bridge`` is the bridge."""
        bridge = self.transport(hosts, **options)
        wiring: dict[str, Any] = {"mounts": {f"all://{SERVICE}": bridge}} if mounted else {"transport": bridge}
        wiring.update(client_options or {})
        if self.is_async:
            async with httpx2.AsyncClient(base_url=f"http://{SERVICE}", **wiring) as client:
                client.bridge = bridge
                yield client
        else:
            with httpx2.Client(base_url=f"http://{SERVICE}", **wiring) as client:
                client.bridge = bridge
                yield client

    async def request(self, client: Any, method: str, url: str, **kwargs: Any) -> httpx2.Response:
        if self.is_async:
            response: httpx2.Response = await client.request(method, url, **kwargs)
        else:
            response = client.request(method, url, **kwargs)
        return response

    async def get(self, client: Any, url: str, **kwargs: Any) -> httpx2.Response:
        return await self.request(client, "GET", url, **kwargs)

    async def send_streaming(self, client: Any, url: str) -> httpx2.Response:
        request = client.build_request("GET", url)
        if self.is_async:
            response: httpx2.Response = await client.send(request, stream=True)
        else:
            response = client.send(request, stream=True)
        return response

    async def read(self, response: httpx2.Response) -> bytes:
        return await response.aread() if self.is_async else response.read()

    async def close(self, response: httpx2.Response) -> None:
        if self.is_async:
            await response.aclose()
        else:
            response.close()

    def body(self, *chunks: bytes) -> Any:
        """A request body that cannot be replayed: a generator (async for the async client)."""

        def sync_body() -> Iterator[bytes]:
            yield from chunks

        async def async_body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return async_body() if self.is_async else sync_body()


@pytest.fixture
def bridge(mode: str) -> Bridge:
    return Bridge(mode)


def urls(backends: list[Backend]) -> list[str]:
    return [b.url for b in backends]


def assert_idle(transport: Any) -> None:
    """Every lease ended: responses that were not returned have been closed."""
    assert [h.outstanding for h in transport.pool.hosts] == [0] * len(transport.pool.hosts)


# -- balancing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mounted", [True, False], ids=["mounts", "transport"])
async def test_requests_spread_over_the_hosts_with_labels(
    bridge: Bridge, backends: list[Backend], mounted: bool
) -> None:
    hosts = urls(backends)
    async with bridge.client(hosts, mounted=mounted, client_options={"headers": {"X-Team": "core"}}) as client:
        responses = [await bridge.get(client, "/api/data?x=1") for _ in range(9)]
        assert_idle(client.bridge)
    assert all(isinstance(r, httpx2.Response) for r in responses)
    assert [b.count("GET", "/api/data") for b in backends] == [3, 3, 3]
    for response in responses:
        body = response.json()
        picked = next(b for b in backends if b.name == body["id"])
        assert response.extensions["lb_host"] == picked.url
        assert response.extensions["lb_attempts"] == 1
        assert body["host"] == f"127.0.0.1:{picked.port}"
        assert body["query"] == "x=1"
        assert body["headers"]["X-Team"] == "core"
        # The caller's request is given back unchanged: it still names the service.
        assert response.request.url == httpx2.URL(f"http://{SERVICE}/api/data?x=1")
        assert response.http_version == "HTTP/1.1"


async def test_io_goes_through_httpx2_transports(bridge: Bridge, backends: list[Backend]) -> None:
    limits = httpx2.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=5.0)
    async with bridge.client(urls(backends), transport_options={"limits": limits, "trust_env": False}) as client:
        responses = [await bridge.get(client, "/io") for _ in range(6)]
        assert_idle(client.bridge)
    # The connection under each answer is httpcore2's: the default per-host pools are httpx2's own.
    for response in responses:
        assert type(response.extensions["network_stream"]).__module__.startswith("httpcore2.")
    assert [b.count("GET", "/io") for b in backends] == [2, 2, 2]


async def test_a_given_httpx2_transport_sends_every_attempt(bridge: Bridge, backends: list[Backend]) -> None:
    seen: list[httpx2.URL] = []
    closed: list[bool] = []
    base = httpx2.AsyncHTTPTransport if bridge.is_async else httpx2.HTTPTransport

    class Counting(base):  # type: ignore[valid-type,misc]
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            seen.append(request.url)
            return super().handle_request(request)  # type: ignore[no-any-return]

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            seen.append(request.url)
            return await super().handle_async_request(request)  # type: ignore[no-any-return]

        def close(self) -> None:
            closed.append(True)
            super().close()

        async def aclose(self) -> None:
            closed.append(True)
            await super().aclose()

    a, b, _ = backends
    async with bridge.client([a.url, b.url], transport=Counting()) as client:
        ids = [(await bridge.get(client, "/given")).json()["id"] for _ in range(4)]
        assert closed == []
    assert sorted(ids) == ["a", "a", "b", "b"]
    # Each attempt reached the inner transport as an httpx2 request for the picked host.
    assert sorted(url.port for url in seen) == sorted([a.port, a.port, b.port, b.port])
    assert {url.path for url in seen} == {"/given"}
    assert closed == [True]  # it closes with the bridge


async def test_request_to_another_host_passes_through(bridge: Bridge, backends: list[Backend]) -> None:
    a, b, outsider = backends
    async with bridge.client([a.url, b.url], mounted=False) as client:
        response = await bridge.get(client, f"{outsider.url}/direct")
        assert response.json()["id"] == "c"
        assert "lb_host" not in response.extensions
        assert type(response.extensions["network_stream"]).__module__.startswith("httpcore2.")
        assert sum(h.requests for h in client.bridge.pool.hosts) == 0
    assert outsider.count("GET", "/direct") == 1
    assert a.count() + b.count() == 0


async def test_bypass_false_keeps_every_request_in_the_pool(bridge: Bridge, backends: list[Backend]) -> None:
    a, _b, outsider = backends
    async with bridge.client([a.url], mounted=False, bypass=False) as client:
        assert (await bridge.get(client, "/x")).json()["id"] == "a"
        for url in (f"{outsider.url}/direct", f"http://{SERVICE}:9999/x"):
            with pytest.raises(httpx2.UnsupportedProtocol, match=url):
                await bridge.get(client, url)
    assert outsider.count() == 0


async def test_request_bodies_arrive_whole(bridge: Bridge, backends: list[Backend]) -> None:
    async with bridge.client(urls(backends)) as client:
        sent = await bridge.request(client, "PUT", "/upload", content=b"payload")
        generated = await bridge.request(client, "PUT", "/upload", content=bridge.body(b"a", b"b"))
        form = await bridge.request(client, "POST", "/form", json={"n": 1})
    assert sent.json()["body"] == "payload"
    assert generated.json()["body"] == "ab"
    assert form.json()["body"] == '{"n":1}'
    assert sum(b.count("PUT", "/upload") for b in backends) == 2


# -- faults: the bridge's errors are classified as httpx's -----------------------------------------------------


async def test_killed_backend_is_retried_on_another_host(bridge: Bridge, backends: list[Backend]) -> None:
    a, b, c = backends
    async with bridge.client(urls(backends)) as client:
        b.kill()
        responses = [await bridge.get(client, "/after") for _ in range(12)]
        assert [r.status_code for r in responses] == [200] * 12
        assert b.url not in {r.extensions["lb_host"] for r in responses}
        # Round robin hands the dead host some of the twelve: each of those was retried elsewhere.
        assert any(r.extensions["lb_attempts"] == 2 for r in responses)
        dead = client.bridge.pool.hosts[1]
        assert dead.failures >= 1
        assert dead.failures == sum(r.extensions["lb_attempts"] - 1 for r in responses)
        assert_idle(client.bridge)
    assert a.count("GET", "/after") + c.count("GET", "/after") == 12


async def test_post_is_retried_after_connection_refused(bridge: Bridge, make_backends: Any) -> None:
    dead, live = make_backends(2)
    dead.kill()
    async with bridge.client([dead.url, live.url], outlier_detection=None) as client:
        responses = [await bridge.request(client, "POST", "/orders", json={"n": n}) for n in range(4)]
        assert_idle(client.bridge)
    # A refused connection never reached a server: even a POST goes to the next host.
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.json()["body"] for r in responses] == [f'{{"n":{n}}}' for n in range(4)]
    assert any(r.extensions["lb_attempts"] == 2 for r in responses)
    assert live.count("POST", "/orders") == 4


@pytest.mark.parametrize("fault", ["drop", "reset"])
async def test_post_that_may_have_arrived_is_not_sent_again(
    bridge: Bridge, backends: list[Backend], fault: str
) -> None:
    for backend in backends:
        setattr(backend, fault, True)
    async with bridge.client(urls(backends)) as client:
        with pytest.raises(httpx2.TransportError) as caught:
            await bridge.request(client, "POST", "/orders", json={"n": 1})
        assert isinstance(caught.value, (httpx2.ReadError, httpx2.RemoteProtocolError))
        assert not isinstance(caught.value, httpx.HTTPError)
        assert_idle(client.bridge)
        assert sum(b.count("POST", "/orders") for b in backends) == 1
        # The same failure on a GET is retried: the classification is httpx's, through the bridge.
        with pytest.raises(httpx2.TransportError):
            await bridge.get(client, "/orders")
        assert sum(b.count("GET", "/orders") for b in backends) == 3
        assert_idle(client.bridge)


async def test_reset_in_the_middle_of_the_body_is_retried(bridge: Bridge, make_backends: Any) -> None:
    resetting, good = make_backends(2)
    resetting.reset = True
    async with bridge.client([resetting.url, good.url], outlier_detection=None) as client:
        responses = [await bridge.get(client, "/mid") for _ in range(2)]
        assert_idle(client.bridge)
    # Round robin sent at least one of the two GETs to the resetting host first: the body failed after
    # the headers, and the GET was sent again to the other host.
    assert [r.json()["id"] for r in responses] == ["b", "b"]
    assert resetting.count("GET", "/mid") >= 1
    assert sum(r.extensions["lb_attempts"] - 1 for r in responses) == resetting.count("GET", "/mid")
    assert good.count("GET", "/mid") == 2


async def test_errors_leave_as_httpx2_errors_with_their_notes(bridge: Bridge, backends: list[Backend]) -> None:
    for backend in backends:
        backend.kill()
    async with bridge.client(urls(backends), outlier_detection=None) as client:
        with pytest.raises(httpx2.ConnectError) as caught:
            await bridge.get(client, "/down")
        assert_idle(client.bridge)
    error = caught.value
    assert not isinstance(error, httpx.HTTPError)
    assert error.request.url == httpx2.URL(f"http://{SERVICE}/down")
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith("lbclient: 3 attempts failed")
    assert all(b.url in notes[0] for b in backends)
    assert isinstance(error.__cause__, httpx.ConnectError)  # as the balancer saw it


async def test_no_available_host_is_an_httpx2_transport_error(bridge: Bridge, backends: list[Backend]) -> None:
    async with bridge.client(urls(backends), panic_threshold=0.0) as client:
        for host in client.bridge.pool.hosts:
            host.ejected = True
        client.bridge.pool.refresh()
        with pytest.raises(NoAvailableHostError) as caught:
            await bridge.get(client, "/x")
    assert isinstance(caught.value, httpx2.TransportError)
    assert not isinstance(caught.value, httpx.HTTPError)
    assert isinstance(caught.value.__cause__, lbclient.NoAvailableHostError)
    assert SERVICE in str(caught.value)
    assert sum(b.count() for b in backends) == 0


async def test_a_full_pool_is_an_httpx2_transport_error_saying_so(bridge: Bridge, backends: list[Backend]) -> None:
    async with bridge.client(urls(backends), max_in_flight=1) as client:
        pool = client.bridge.pool
        assert [h.max_in_flight for h in pool.hosts] == [1] * len(backends)
        streams = [await bridge.send_streaming(client, "/stream?chunks=2") for _ in backends]
        with pytest.raises(NoAvailableHostError, match="max_in_flight"):
            await bridge.get(client, "/x")
        for response in streams:
            await bridge.close(response)
        assert (await bridge.get(client, "/x")).status_code == 200
    assert pool.stats().rejected == 1


# -- streamed bodies and leases ---------------------------------------------------------------------------------


async def test_streamed_body_holds_its_host_until_closed(bridge: Bridge, backends: list[Backend]) -> None:
    async with bridge.client(urls(backends)) as client:
        pool = client.bridge.pool
        response = await bridge.send_streaming(client, "/stream?chunks=4")
        by_url = {h.url: h.outstanding for h in pool.hosts}
        assert by_url == {b.url: int(b.url == response.extensions["lb_host"]) for b in backends}
        body = await bridge.read(response)
        assert body.decode().splitlines() == [f"{response.headers['x-backend-id']} {i}" for i in range(4)]
        await bridge.close(response)
        assert_idle(client.bridge)

        # Closed early, with most of a large body unread: the lease ends, and the pool still serves.
        size = 1_000_000
        response = await bridge.send_streaming(client, f"/bytes?n={size}")
        assert sum(h.outstanding for h in pool.hosts) == 1
        if not bridge.is_async:  # an async body left half read is reported by trio, with plain httpx2 too
            with contextlib.closing(response.iter_raw()) as chunks:
                first = next(chunks)
            assert 0 < len(first) < size
            assert first == bytes(i % 256 for i in range(len(first)))
        await bridge.close(response)
        assert_idle(client.bridge)
        assert (await bridge.get(client, "/after")).status_code == 200
        assert_idle(client.bridge)


async def test_full_large_body_crosses_the_bridge_intact(bridge: Bridge, backends: list[Backend]) -> None:
    size = 300_000
    async with bridge.client(urls(backends)) as client:
        response = await bridge.get(client, f"/bytes?n={size}")
        assert_idle(client.bridge)
    assert response.content == bytes(i % 256 for i in range(size))


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
async def test_a_hedge_overtakes_a_slow_host_and_the_loser_is_cancelled(
    bridge: Bridge, make_backends: Any, mode: str
) -> None:
    (slow,) = make_backends(1, delay=2.0)
    (fast,) = make_backends(1)
    hedge = Hedge(delay=0.05, budget_ratio=1.0)
    async with bridge.client([slow.url, fast.url], hedge=hedge, client_options={"timeout": 10.0}) as client:
        responses = [await bridge.get(client, "/h") for _ in range(2)]
        pool = client.bridge.pool
        # The losers' requests to the slow host were cancelled inside the inner httpx2 transport.
        await eventually(lambda: all(h.outstanding == 0 for h in pool.hosts), what="every lease released")
        assert pool.hosts[0].failures == 0  # a cancelled loser is not the host's failure
    # Round robin sent at least one of the two GETs to the slow host first; the hedge answered it.
    assert [r.json()["id"] for r in responses] == [fast.name, fast.name]
    assert slow.count("GET", "/h") >= 1
    assert sum(r.extensions["lb_attempts"] - 1 for r in responses) == slow.count("GET", "/h")
    assert fast.count("GET", "/h") == 2


# -- health checks run inside the bridge too -------------------------------------------------------------------


def health_runners(is_async: bool) -> set[object]:
    """The health checkers running: anyio tasks for the async bridge, threads for the sync one."""
    if is_async:
        return {t.id for t in anyio.get_running_tasks() if t.name and t.name.startswith("lbclient-health-")}
    return {t for t in threading.enumerate() if t.name.startswith("lbclient-health-")}


async def test_health_checks_run_and_stop_with_the_client(bridge: Bridge, backends: list[Backend]) -> None:
    b = backends[1]
    b.health_status = 503
    check = HealthCheck(interval=0.05, timeout=1.0, unhealthy_threshold=1, healthy_threshold=1)
    before = health_runners(bridge.is_async)
    async with bridge.client(urls(backends), health_check=check) as client:
        pool = client.bridge.pool
        await eventually(lambda: not pool.hosts[1].healthy, what="b marked unhealthy")
        assert health_runners(bridge.is_async) - before
        ids = {(await bridge.get(client, "/x")).json()["id"] for _ in range(6)}
        assert ids == {"a", "c"}
    assert not health_runners(bridge.is_async) - before
    assert b.count("GET", "/x") == 0


# -- the exception table ----------------------------------------------------------------------------------------

TRANSPORT_ERRORS = [
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "ReadError",
    "WriteError",
    "CloseError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "ProxyError",
    "UnsupportedProtocol",
    "DecodingError",
    "TooManyRedirects",
]


@pytest.mark.parametrize("name", TRANSPORT_ERRORS)
def test_each_error_crosses_by_name_both_ways(name: str) -> None:
    from lbclient.httpx2 import _TO_HTTPX, _TO_HTTPX2

    request = httpx.Request("GET", "http://users/x")
    original = getattr(httpx2, name)("boom", request=httpx2.Request("GET", "http://users/x"))
    original.add_note("a note")
    there = _TO_HTTPX.convert(original, request)
    assert type(there) is getattr(httpx, name)
    assert str(there) == "boom"
    assert there.__notes__ == ["a note"]  # type: ignore[union-attr]
    assert there.request is request  # type: ignore[union-attr]
    back = _TO_HTTPX2.convert(there, None)
    assert type(back) is getattr(httpx2, name)
    assert back.__notes__ == ["a note"]  # type: ignore[union-attr]


def test_stream_errors_and_strangers() -> None:
    from lbclient.httpx2 import _TO_HTTPX, _TO_HTTPX2

    assert type(_TO_HTTPX.convert(httpx2.StreamConsumed(), None)) is httpx.StreamConsumed
    assert type(_TO_HTTPX2.convert(httpx.InvalidURL("bad"), None)) is httpx2.InvalidURL

    class Custom(httpx.ReadTimeout):
        pass

    assert type(_TO_HTTPX2.convert(Custom("slow"), None)) is httpx2.ReadTimeout  # the nearest named base
    assert _TO_HTTPX2.convert(ValueError("mine"), None) is None  # not an httpx error: passes unchanged
    assert _TO_HTTPX.convert(httpx2.HTTPStatusError("x", request=None, response=None), None) is None  # type: ignore[arg-type]


# -- the other way to full support: httpx2.alias_httpx() --------------------------------------------------------


def test_alias_httpx_makes_lbclient_an_httpx2_client(backends: list[Backend]) -> None:
    """README: an application that calls ``httpx2.alias_httpx()`` before importing lbclient gets LBClient
    as an ``httpx2.Client``. It changes the whole process, so it runs in a child process."""
    code = textwrap.dedent(
        f"""
        import httpx2
        httpx2.alias_httpx()
        import lbclient
        assert issubclass(lbclient.LBClient, httpx2.Client)
        with lbclient.LBClient({[b.url for b in backends]!r}) as client:
            response = client.get("/aliased")
            assert isinstance(response, httpx2.Response)
            print(response.json()["id"], response.extensions["lb_attempts"])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    name, attempts = result.stdout.split()
    assert name in {"a", "b", "c"}
    assert attempts == "1"
    assert sum(b.count("GET", "/aliased") for b in backends) == 1
