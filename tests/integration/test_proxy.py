"""The reverse proxy (``lbclient.proxy``) with real servers: uvicorn serving the ASGI app on 127.0.0.1 (in a
thread, or as ``lbclient proxy`` in a subprocess whose memory is measured), real ``Backend``s behind it and
a real httpx client in front. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from servers import proxy_process, serving

from lbclient import HealthCheck
from lbclient.__main__ import main
from lbclient.proxy import LBProxy, make_app, strip_hop_by_hop
from lbclient.testing import Backend

from conftest import eventually

uvicorn = pytest.importorskip("uvicorn")

pytestmark = pytest.mark.anyio

MakeBackends = Callable[..., list[Backend]]
MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs the proxy on asyncio in its own thread; the client side runs on asyncio too."""
    return "asyncio"


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@contextlib.asynccontextmanager
async def proxied(hosts: list[str], **options: Any) -> AsyncIterator[tuple[LBProxy, httpx.AsyncClient]]:
    """A proxy over ``hosts`` (``make_app`` options) and a plain httpx client pointed at it."""
    app = make_app(hosts, **options)
    with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            yield app, client


# -- forwarding --------------------------------------------------------------------------------------------


async def test_get_and_post_round_trip_with_query_headers_and_body(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url]) as (app, client):
        response = await client.get("/api/a%2Fb/items?q=caf%C3%A9&x=1&x=2", headers={"X-Custom": "kept"})
        assert response.status_code == 200
        echo = response.json()
        assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/api/a%2Fb/items", "q=caf%C3%A9&x=1&x=2")
        assert lowered(echo["headers"])["x-custom"] == "kept"
        assert echo["body"] == ""
        assert response.headers["x-backend-id"] == backend.name

        response = await client.post("/submit?id=7", content=b"hello, upstream")
        echo = response.json()
        assert (echo["method"], echo["path"], echo["query"], echo["body"]) == (
            "POST",
            "/submit",
            "id=7",
            "hello, upstream",
        )

        async def chunks() -> AsyncIterator[bytes]:
            for index in range(64):
                yield f"{index:04d}".encode() * 4096  # 64 chunks of 16 KiB: several ASGI messages

        response = await client.put("/upload", content=chunks())
        echo = response.json()
        assert echo["method"] == "PUT"
        assert echo["body"] == "".join(f"{index:04d}" * 4096 for index in range(64))

        response = await client.request("DELETE", "/items/3")
        assert (response.status_code, response.json()["method"]) == (200, "DELETE")
        response = await client.head("/bytes?n=1000")
        assert (response.status_code, response.headers["content-length"], response.content) == (200, "1000", b"")
        response = await client.get("/redirect?to=/elsewhere")  # passed back, not followed
        assert (response.status_code, response.headers["location"]) == (302, "/elsewhere")
        response = await client.get("/stream?chunks=3")  # chunked upstream: re-framed by the server
        assert response.text == "a 0\na 1\na 2\n"
        response = await client.get("/set-cookie?name=session&value=s1", headers={"Cookie": "theirs=1"})
        assert response.headers["set-cookie"] == "session=s1; Path=/"  # reaches the caller...
        assert not app.client.cookies  # ...and is not kept by the proxy's client
        assert lowered((await client.get("/echo", headers={"Cookie": "theirs=1"})).json()["headers"])["cookie"] == (
            "theirs=1"
        )
        backend.status = 404
        assert (await client.get("/missing")).status_code == 404  # upstream statuses pass through
    assert backend.count("GET", "/api/a%2Fb/items") == 1


async def test_hop_by_hop_headers_are_dropped_both_ways_and_forwarded_headers_set(
    make_backends: MakeBackends,
) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url]) as (_, client):
        proxy_netloc = client.base_url.netloc.decode()
        response = await client.get(
            "/echo",
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic c2VjcmV0",
                "TE": "trailers",
                "Trailer": "X-Checksum",
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Host": "spoofed.example",
                "X-End-To-End": "yes",
            },
        )
        seen = lowered(response.json()["headers"])
        for name in ("connection", "x-hop", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade"):
            assert name not in seen, name
        assert seen["x-end-to-end"] == "yes"
        assert seen["x-forwarded-for"] == "127.0.0.1"  # the caller is no trusted proxy: its claim is dropped
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == proxy_netloc  # set, whatever the caller claimed
        assert seen["host"] == f"127.0.0.1:{backend.port}"  # the picked host, as the balancer sets it

        response = await client.get(
            "/headers",
            params=[
                ("Connection", "X-Hop-Answer"),
                ("X-Hop-Answer", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Upgrade", "h2c"),
                ("Trailer", "X-Checksum"),
                ("X-Kept", "yes"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
        )
        assert response.status_code == 200
        for name in ("x-hop-answer", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
            assert name not in response.headers, name
        assert response.headers["x-kept"] == "yes"
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert response.headers.get("connection") is None


def test_strip_hop_by_hop_drops_what_connection_names() -> None:
    headers = [
        (b"Connection", b"close, X-A"),
        (b"Connection", b"x-b"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-C", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-c", b"3")]
    assert strip_hop_by_hop([(b"Host", b"h"), (b"X-C", b"3")], drop=frozenset({b"host"})) == [(b"x-c", b"3")]


# -- health and failures -----------------------------------------------------------------------------------


async def test_health_is_200_while_hosts_are_available_then_503_and_requests_502(
    make_backends: MakeBackends,
) -> None:
    backends = make_backends(2)
    check = HealthCheck(interval=0.05, timeout=0.5, jitter=0.0, healthy_threshold=1, unhealthy_threshold=1)
    # panic_threshold=0: with every host down, no host can be picked at all (NoAvailableHostError).
    async with proxied([b.url for b in backends], health_check=check, panic_threshold=0.0) as (_, client):
        response = await client.get("/health")
        assert response.status_code == 200
        state = response.json()
        assert (state["status"], state["available"]) == ("ok", 2)
        assert [host["url"] for host in state["hosts"]] == [b.url for b in backends]
        assert all(host["healthy"] and not host["ejected"] for host in state["hosts"])
        # The checks run: lifespan opened the client.
        await eventually(lambda: backends[0].count("GET", "/health") >= 1, what="a health check")

        for backend in backends:
            backend.kill()

        async def unavailable() -> bool:
            return (await client.get("/health")).status_code == 503

        await eventually(unavailable, what="/health 503 with every backend down")
        state = (await client.get("/health")).json()
        assert (state["status"], state["available"]) == ("unavailable", 0)
        assert not any(host["healthy"] for host in state["hosts"])
        response = await client.get("/x")
        assert response.status_code == 502
        assert "lbclient.invalid" not in response.text  # no internals leak to the caller

        backends[1].start()

        async def available() -> bool:
            return (await client.get("/health")).status_code == 200

        await eventually(available, what="/health 200 again once a backend is back")
        assert (await client.get("/x")).json()["id"] == backends[1].name
        assert (await client.head("/health")).content == b""
        assert (await client.post("/health")).status_code == 405


async def test_connect_failure_is_502_and_timeout_504(make_backends: MakeBackends) -> None:
    down, slow = make_backends(2)
    down.kill()
    async with proxied([down.url], retries=2, outlier_detection=False) as (_, client):
        assert (await client.get("/x")).status_code == 502
        assert (await client.post("/x", content=b"body")).status_code == 502
    slow.hang = True
    try:
        async with proxied([slow.url], retries=1, timeout=0.3) as (_, client):
            started = time.monotonic()
            response = await client.get("/x")
            assert response.status_code == 504
            assert time.monotonic() - started < 5
    finally:
        slow.hang = False


async def test_a_streamed_body_is_never_sent_twice_but_a_failed_connect_is_retried(
    make_backends: MakeBackends,
) -> None:
    down, dropper, good = make_backends(3)
    down.kill()
    dropper.drop = True  # reads the whole request, then resets the connection: it may have been processed

    async def body() -> AsyncIterator[bytes]:
        for _ in range(16):
            yield b"x" * (64 * 1024)  # 1 MiB: more than one ASGI message, so the proxy streams it upstream

    async with proxied([down.url, good.url], outlier_detection=False) as (_, client):
        for _ in range(2):  # round robin: one of the two starts on the dead host and moves on
            response = await client.post("/sink", content=body())
            assert (response.status_code, response.json()["received"]) == (200, MiB)
    assert good.count("POST", "/sink") == 2
    good.reset_counts()
    async with proxied([dropper.url, good.url], outlier_detection=False) as (_, client):
        # Idempotent, yet its body cannot be replayed: one attempt each, so round robin sends one of the two
        # to the dropper first, and that one fails rather than going on to the good host.
        statuses = sorted([(await client.put("/sink", content=body())).status_code for _ in range(2)])
        assert statuses == [200, 502]
    assert (dropper.count("PUT"), good.count("PUT")) == (1, 1)


async def test_a_backend_killed_under_load_costs_no_request(make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    victim = backends[0]
    statuses: list[int] = []
    errors: list[BaseException] = []
    async with proxied([b.url for b in backends], retries=3) as (app, client):

        async def worker(index: int) -> None:
            sequence = 0
            while len(statuses) < 400:
                sequence += 1
                try:
                    response = await client.get(f"/load?worker={index}&n={sequence}")
                except httpx.HTTPError as exc:
                    errors.append(exc)
                else:
                    statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for index in range(8):
                group.start_soon(worker, index)
            await eventually(lambda: len(statuses) >= 80, what="load through the proxy")
            victim.kill()
            killed_at = len(statuses)
            await eventually(lambda: len(statuses) >= killed_at + 200, timeout=30, what="load after the kill")
    assert not errors
    assert len(statuses) >= 280
    assert set(statuses) == {200}, sorted(set(statuses))
    assert app.client.pool.hosts[0].failures >= 1  # the proxy met the dead backend, and retried past it
    assert sum(b.count("GET", "/load") for b in backends[1:]) >= 200


async def test_a_caller_that_leaves_mid_download_releases_the_upstream(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url]) as (_, client):
        # 2,000 lines, 5 ms apart: 10 s if the proxy kept reading for a caller that is gone.
        async with client.stream("GET", "/stream?chunks=2000&delay=0.005") as response:
            async for _ in response.aiter_raw():
                break

        async def released() -> bool:
            hosts = (await client.get("/health")).json()["hosts"]
            return hosts[0]["outstanding"] == 0

        await eventually(released, timeout=5, what="the upstream request released")


async def test_a_caller_that_leaves_mid_upload_is_not_the_hosts_failure(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url]) as (app, client):
        host, port = client.base_url.host, client.base_url.port
        with socket.create_connection((host, port)) as raw:
            raw.sendall(b"POST /sink HTTP/1.1\r\nHost: proxy\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 300_000)
            await eventually(lambda: app.client.pool.hosts[0].outstanding == 1, what="the upload under way")
        await eventually(lambda: app.client.pool.hosts[0].outstanding == 0, what="the upstream request ended")
        assert app.client.pool.hosts[0].failures == 0
        assert (await client.get("/x")).status_code == 200


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_app_runs_on_asyncio_and_trio(anyio_backend: str, make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    proxy = make_app([backend.url])
    async with proxy, httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://proxy") as client:
        response = await client.post("/x?y=1", content=b"body", headers={"X-Forwarded-For": "198.51.100.1"})
        echo = response.json()
        assert (echo["path"], echo["query"], echo["body"]) == ("/x", "y=1", "body")
        seen = lowered(echo["headers"])
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-host"] == "proxy"
        assert (await client.get("/health")).json()["available"] == 1
    assert proxy.client.is_closed


# -- the command, and memory with 100 MB bodies ------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the proxy's memory from /proc")
async def test_streaming_100_mb_each_way_keeps_the_proxy_memory_flat(
    tmp_path: Path, make_backends: MakeBackends
) -> None:
    (backend,) = make_backends(1)
    size = 100 * MiB
    piece = b"\xab" * (64 * 1024)
    pattern = bytes(range(256)) * (4 * MiB // 256 + 1)

    async def upload(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // len(piece)):
            yield piece

    async def download(client: httpx.AsyncClient, total: int) -> int:
        received = 0
        async with client.stream("GET", f"/bytes?n={total}") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(total)
            async for chunk in response.aiter_raw():
                assert len(chunk) <= 4 * MiB
                start = received % 256
                assert chunk == pattern[start : start + len(chunk)]
                received += len(chunk)
        return received

    with proxy_process(tmp_path, "--hosts", backend.url) as (process, url):
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            # Warm up every path first, so imports and first-use allocations are in the baseline.
            assert (await client.post("/sink", content=upload(2 * MiB))).json()["received"] == 2 * MiB
            assert await download(client, 2 * MiB) == 2 * MiB
            rss_start = _status_kib(process.pid, "VmRSS")
            hwm_start = _status_kib(process.pid, "VmHWM")

            started = time.monotonic()
            response = await client.post("/sink", content=upload(size))
            assert response.status_code == 200
            assert response.json()["received"] == size
            upload_seconds = time.monotonic() - started
            started = time.monotonic()
            assert await download(client, size) == size
            download_seconds = time.monotonic() - started
            peak = _status_kib(process.pid, "VmHWM")
    growth_mib = (peak - rss_start) / 1024
    print(
        f"\nproxy RSS at start {rss_start / 1024:.1f} MiB (peak so far {hwm_start / 1024:.1f} MiB), "
        f"peak after 100 MiB up ({upload_seconds:.2f} s) and down ({download_seconds:.2f} s) "
        f"{peak / 1024:.1f} MiB: growth {growth_mib:.1f} MiB"
    )
    assert growth_mib < 50


def test_the_command_without_uvicorn_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["proxy", "--hosts", "127.0.0.1:9"]) == 2
    assert "pip install 'lbclient[proxy]'" in capsys.readouterr().err


def test_the_command_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--listen", "nowhere", "--hosts", "127.0.0.1:9"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["proxy", "--hosts", "ftp://x"]) == 2
    assert "ftp://x" in capsys.readouterr().err
