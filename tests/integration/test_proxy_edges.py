"""The reverse proxy at its edges, with real sockets on 127.0.0.1: callers that stall their uploads, never
read their answers, sit idle or trickle; a proxy with 1,024 file descriptors under 1,100 idle connections;
forged forwarded headers; malformed requests. The proxy's own counters (``proxy.callers``), the pool's
and the backends' prove each outcome; every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from servers import proxy_process, serving, wait_for
from test_proxy import lowered, proxied

from lbclient.__main__ import main
from lbclient.proxy import make_app
from lbclient.testing import Backend

from conftest import eventually

pytestmark = pytest.mark.anyio

MakeBackends = Callable[..., list[Backend]]
MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def address(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    assert parsed.port is not None
    return parsed.host, parsed.port


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list for raw connections; every one is closed at the end."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def connect(url: str, *, receive_buffer: int | None = None) -> socket.socket:
    """A raw connection to the proxy; ``receive_buffer`` shrinks its receive window (set before connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(address(url))
    return sock


def read_answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the proxy sends until it closes the connection (or a reset)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def closed_by_peer(sock: socket.socket) -> bool:
    """Has the other side closed (or reset) this connection? Never blocks; whatever was sent is dropped."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            del chunk
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    return True


def has_data(sock: socket.socket) -> bool:
    """Has something arrived on this connection (left unread)?"""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


async def timed_gets(client: httpx.AsyncClient, count: int) -> list[tuple[int, float]]:
    results = []
    for index in range(count):
        started = time.monotonic()
        response = await client.get(f"/ordinary?n={index}")
        results.append((response.status_code, time.monotonic() - started))
    return results


# -- callers that hold on --------------------------------------------------------------------------------


async def test_150_stalled_uploads_and_150_callers_that_never_read_leave_gets_answering(
    tmp_path: Path, make_backends: MakeBackends
) -> None:
    """As ``lbclient proxy`` in its own process, with its defaults (httpx's pool would allow 100
    connections per host, and every stalled upload used to take one)."""
    (backend,) = make_backends(1)
    with proxy_process(tmp_path, "--hosts", backend.url) as (_, url), sockets() as held:
        for _ in range(150):  # 1 KB of a 1 MB upload, then nothing
            sock = connect(url)
            sock.sendall(b"POST /sink HTTP/1.1\r\nHost: proxy\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
            held.append(sock)
        for _ in range(150):  # 4 MiB asked for (more than the proxy reads whole), not a byte read
            sock = connect(url, receive_buffer=4096)
            sock.sendall(b"GET /bytes?n=4194304 HTTP/1.1\r\nHost: proxy\r\n\r\n")
            held.append(sock)
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:

            async def held_up() -> bool:  # the proxy has relayed all it can: each download waits on its caller
                return bool((await client.get("/health")).json()["callers"]["waiting_to_send"] == 150)

            await eventually(held_up, timeout=30, what="150 answers waiting for their callers to read")
            results = await timed_gets(client, 20)
            state = (await client.get("/health")).json()
        seconds = [round(elapsed, 3) for _, elapsed in results]
        print(f"\n20 GETs beside 150 stalled uploads and 150 callers that never read: {seconds}")
        assert [status for status, _ in results] == [200] * 20
        assert max(seconds) < 1.0
        assert state["callers"]["open"] == 301  # the 300 are still there (and this client)
        # The stalled uploads were never sent on; the downloads each hold their own upstream connection.
        assert backend.count("POST") == 0
        assert state["hosts"][0]["outstanding"] == 150
    assert backend.count("GET", "/ordinary") == 20


async def test_an_answer_within_the_response_buffer_frees_the_upstream_before_the_caller_reads(
    make_backends: MakeBackends,
) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url], response_buffer=512 * 1024) as (app, client):
        with sockets() as held:
            for _ in range(20):
                sock = connect(str(client.base_url), receive_buffer=4096)
                sock.sendall(b"GET /bytes?n=400000 HTTP/1.1\r\nHost: proxy\r\n\r\n")
                held.append(sock)
            await eventually(lambda: backend.count("GET", "/bytes") == 20, what="20 answers asked for")
            await eventually(
                lambda: app.client.pool.hosts[0].outstanding == 0, what="the upstream requests done, unread"
            )
            assert app.callers.open == 20  # the callers are still there, their answers unread


async def test_send_timeout_aborts_a_caller_that_reads_nothing_and_frees_its_upstream(
    make_backends: MakeBackends,
) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url], send_timeout=0.5) as (app, client):
        with sockets() as held:
            sock = connect(str(client.base_url), receive_buffer=4096)
            sock.sendall(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: proxy\r\n\r\n")
            held.append(sock)
            await eventually(lambda: app.callers.send_timeouts == 1, what="the send timeout")
            await eventually(lambda: app.client.pool.hosts[0].outstanding == 0, what="the upstream freed")
            assert closed_by_peer(sock)
            assert app.client.pool.hosts[0].failures == 0  # the caller's fault, not the host's
            assert (await client.get("/x")).status_code == 200


async def test_body_timeout_answers_408_and_a_stalled_upload_reaches_no_host(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url], body_timeout=0.5, request_buffer=8192) as (app, client):
        url = str(client.base_url)
        with sockets() as held:
            small = connect(url)  # within the buffer: no host is picked
            small.sendall(b"POST /sink HTTP/1.1\r\nHost: proxy\r\nContent-Length: 5000\r\n\r\n" + b"x" * 1000)
            large = connect(url)  # beyond it: streamed to the host, then cut
            large.sendall(b"POST /sink HTTP/1.1\r\nHost: proxy\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 20000)
            held += [small, large]
            assert read_answer(small).startswith(b"HTTP/1.1 408 ")
            answer = read_answer(large)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")  # the unread body may reset it first
            await eventually(lambda: app.callers.body_timeouts == 2, what="two body timeouts")
            await eventually(lambda: app.client.pool.hosts[0].outstanding == 0, what="the streamed upload ended")
        assert app.client.pool.hosts[0].failures == 0
        assert backend.count("POST", "/sink") <= 1  # only the large one, whose body never ended
        assert (await client.get("/x")).status_code == 200


async def test_header_timeout_closes_idle_and_trickling_connections(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url], header_timeout=0.5) as (app, client):
        url = str(client.base_url)
        with sockets() as held:
            idle = connect(url)
            trickle = connect(url)
            held += [idle, trickle]
            started = time.monotonic()
            request = b"GET /x HTTP/1.1\r\nHost: proxy\r\nX-Slow: " + b"y" * 100
            sent = 0
            while not closed_by_peer(trickle) and sent < len(request):  # a byte every 20 ms: 2 s in all
                trickle.send(request[sent : sent + 1])
                sent += 1
                await anyio.sleep(0.02)  # the trickle's pace, not a wait for an outcome
            elapsed = time.monotonic() - started
            assert sent < len(request), "the trickling caller was never cut off"
            assert elapsed < 2.0
            await eventually(lambda: closed_by_peer(idle), what="the idle connection closed")
            assert app.callers.header_timeouts == 2
        assert backend.count() == 0
        assert (await client.get("/x")).status_code == 200  # a caller that sends its request is served


async def test_at_max_connections_the_longest_idle_gives_way_and_with_none_idle_a_fast_503(
    make_backends: MakeBackends,
) -> None:
    (backend,) = make_backends(1)
    async with proxied([backend.url], max_connections=4) as (app, client):
        url = str(client.base_url)
        with sockets() as held:
            held += [connect(url) for _ in range(4)]
            await eventually(lambda: app.callers.open == 4, what="4 idle connections")
            started = time.monotonic()
            response = await client.get("/x")
            assert response.status_code == 200
            assert time.monotonic() - started < 1.0
            assert app.callers.evicted == 1
            assert closed_by_peer(held[0])  # the longest idle went
            assert not closed_by_peer(held[1])

        with sockets() as busy:
            for _ in range(4):  # four uploads under way: nobody is idle
                sock = connect(url)
                sock.sendall(b"POST /sink HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\nxx")
                busy.append(sock)
            await eventually(lambda: app.callers.open == 4, what="4 busy connections")
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=url) as fresh:
                response = await fresh.get("/x")
            assert response.status_code == 503
            assert time.monotonic() - started < 1.0
            assert app.callers.shed == 1
    assert backend.count("GET", "/x") == 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux: RLIMIT_NOFILE and a 1,100-socket flood")
async def test_1100_idle_connections_against_1024_file_descriptors_leave_the_proxy_serving(
    tmp_path: Path, make_backends: MakeBackends
) -> None:
    (backend,) = make_backends(1)
    with proxy_process(tmp_path, "--hosts", backend.url, nofile=1024) as (process, url), sockets() as idle:
        for _ in range(1100):
            idle.append(connect(url))
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:

            async def flood_taken() -> bool:
                callers = (await client.get("/health")).json()["callers"]
                return bool(callers["accepted"] >= 1100)

            await eventually(flood_taken, timeout=20, what="the 1,100 connections accepted")
            results = await timed_gets(client, 20)
            state = (await client.get("/health")).json()
        statuses = [status for status, _ in results]
        slowest = max(seconds for _, seconds in results)
        print(f"\n20 GETs after 1,100 idle connections, 1,024 descriptors: slowest {slowest:.3f} s; {state['callers']}")
        assert statuses == [200] * 20
        assert slowest < 1.0
        callers = state["callers"]
        assert callers["evicted"] >= 1100 - 384  # the default cap with 1,024 descriptors: (1024 - 256) / 2
        assert callers["open"] <= 384
        assert process.poll() is None
    errors = (tmp_path / "proxy.err").read_text()
    assert "Too many open files" not in errors
    assert "Traceback" not in errors


# -- forwarded headers -----------------------------------------------------------------------------------


async def test_forged_forwarded_headers_reach_no_backend_and_do_not_steer_ip_hash(
    make_backends: MakeBackends,
) -> None:
    backends = make_backends(3)
    async with proxied([b.url for b in backends], strategy="ip_hash") as (_, client):
        netloc = client.base_url.netloc.decode()
        answered_by = set()
        for index in range(30):
            forged = f"198.51.100.{index}"
            response = await client.get(
                "/echo",
                headers={
                    "X-Forwarded-For": f"{forged}, 10.0.0.1",
                    "X-Real-IP": forged,
                    "Forwarded": f"for={forged};proto=https",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "spoofed.example",
                },
            )
            seen = lowered(response.json()["headers"])
            answered_by.add(response.json()["id"])
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-real-ip"] == "127.0.0.1"
            assert seen["forwarded"] == f'for=127.0.0.1;host="{netloc}";proto=http'
            assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("http", netloc)
            assert forged not in str(seen)
        assert len(answered_by) == 1  # every request keyed on the one real peer


async def test_a_trusted_proxys_forwarded_headers_are_kept_appended_to_and_key_ip_hash(
    make_backends: MakeBackends,
) -> None:
    backends = make_backends(3)
    trusted = ["127.0.0.0/8", "10.0.0.0/8"]
    async with proxied([b.url for b in backends], strategy="ip_hash", trusted_proxies=trusted) as (_, client):

        async def echo(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
            response = await client.get("/echo", headers=headers)
            return response.json()["id"], lowered(response.json()["headers"])

        # A client behind two trusted proxies (10.0.0.1, then this caller, 127.0.0.1); what the client
        # itself claimed (6.6.6.6) sits left of the first untrusted address and is dropped.
        host, seen = await echo(
            {
                "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.0.0.1",
                "X-Real-IP": "203.0.113.9",
                "Forwarded": "for=203.0.113.9",
                "X-Forwarded-Proto": "https",
            }
        )
        assert seen["x-forwarded-for"] == "203.0.113.9, 10.0.0.1, 127.0.0.1"
        assert seen["x-real-ip"] == "203.0.113.9"
        assert seen["forwarded"].startswith("for=203.0.113.9, for=127.0.0.1;")
        assert seen["x-forwarded-proto"] == "https"
        # ip_hash keys on the real client: the same client goes to the same host, whatever it forged.
        for forged in ("7.7.7.7", "8.8.8.8", "garbage"):
            again, _ = await echo({"X-Forwarded-For": f"{forged}, 203.0.113.9, 10.0.0.1"})
            assert again == host
        clients = {(await echo({"X-Forwarded-For": f"192.0.2.{index}"}))[0] for index in range(30)}
        assert len(clients) == 3  # different real clients spread over the hosts


# -- malformed requests ----------------------------------------------------------------------------------

MALFORMED = {
    "content-length and transfer-encoding": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "a # in the path": b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "a # in the query": b"GET /x?a=1#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "a # in the health path": b"GET /health#x HTTP/1.1\r\nHost: a\r\n\r\n",
    "a control character in a value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
    "DEL in a value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: \x7f\r\n\r\n",
    "a bad percent escape": b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    "a NUL escape": b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n",
    "a lower-case method": b"get /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "a space in Host": b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
    "two Content-Lengths": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "a bad chunk size": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    "an absolute-form target": b"GET http://evil/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "an asterisk target": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "no Host": b"GET /x HTTP/1.1\r\n\r\n",
}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorded(*names: str) -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def exchange(url: str, raw: bytes) -> bytes:
    with connect(url) as sock:
        sock.sendall(raw)
        return read_answer(sock, timeout=5.0)


async def test_malformed_requests_get_400_and_no_traceback(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    app = make_app([backend.url])
    with serving(app) as url, recorded("uvicorn", "uvicorn.error", "lbclient") as log:
        for what, raw in MALFORMED.items():
            answer = exchange(url, raw)
            assert answer.startswith(b"HTTP/1.1 400 "), (what, answer[:80])
        assert app.callers.bad_requests == len(MALFORMED)
        assert exchange(url, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert not [record for record in log.records if record.exc_info or record.levelno >= logging.ERROR]
    assert backend.count() == 1


async def test_fuzzed_requests_never_get_a_500_nor_log_a_traceback(make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    valid = (
        b"POST /a/b?c=d&e=f HTTP/1.1\r\nHost: proxy:8080\r\nContent-Length: 5\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"Forwarded: for=1.2.3.4\r\nCookie: a=b\r\n\r\nhello"
    )
    alphabet = b"\x00\x01\t\r\n #%:;,=?/\\\"'[]@\x7f\x80\xff0aZ-"
    rng = random.Random(7)
    statuses: dict[bytes, int] = {}
    with (
        serving(make_app([backend.url], header_timeout=1.0, body_timeout=1.0)) as url,
        recorded("uvicorn", "uvicorn.error", "lbclient") as log,
    ):
        for _ in range(150):
            raw = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(raw))
                choice = rng.random()
                if choice < 0.5:
                    raw[position] = rng.choice(alphabet)
                elif choice < 0.75:
                    raw.insert(position, rng.choice(alphabet))
                else:
                    del raw[position]
            answer = exchange(url, bytes(raw) + b"\r\n\r\n")
            status = answer[9:12]
            statuses[status] = statuses.get(status, 0) + 1
            # 501 is the backend's own answer to a method it does not know; the proxy makes none of these.
            assert status not in (b"500", b"502", b"503", b"504"), (bytes(raw), answer[:200])
    print(f"\nfuzzed statuses: {dict(sorted(statuses.items()))}")
    assert not [record for record in log.records if record.exc_info or record.levelno >= logging.ERROR]


# -- /health ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "headers", "detail"),
    [
        ("127.0.0.1", {}, True),
        ("203.0.113.5", {}, False),
        ("10.1.2.3", {}, True),  # a trusted proxy asking for itself
        ("10.1.2.3", {"X-Forwarded-For": "203.0.113.5"}, False),  # ... or for a caller behind it
        ("203.0.113.5", {"X-Forwarded-For": "127.0.0.1"}, False),  # a forged loopback claim
    ],
)
async def test_health_lists_hosts_to_local_and_trusted_callers_only(
    make_backends: MakeBackends, peer: str, headers: dict[str, str], detail: bool
) -> None:
    (backend,) = make_backends(1)
    proxy = make_app([backend.url], trusted_proxies=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=proxy, client=(peer, 4321))
    async with proxy, httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        response = await client.get("/health", headers=headers)
        assert response.status_code == 200
        state = response.json()
        assert state["status"] == "ok"
        assert ("hosts" in state) is detail
        assert (backend.url in response.text) is detail


# -- ejection --------------------------------------------------------------------------------------------


async def test_caller_requests_that_make_every_backend_answer_500_cannot_eject_a_healthy_host(
    make_backends: MakeBackends,
) -> None:
    backends = make_backends(2)
    async with proxied([b.url for b in backends], retries=1) as (app, client):
        for backend in backends:
            backend.status = 500  # what a caller's bad request makes every host answer
        for index in range(20):
            assert (await client.get(f"/bad-input?n={index}")).status_code == 500
        for backend in backends:
            backend.status = 200
        assert not [host.url for host in app.client.pool.hosts if host.ejected]
        answered = {(await client.get("/x")).json()["id"] for _ in range(4)}
        assert answered == {b.name for b in backends}


# -- the command -----------------------------------------------------------------------------------------


def test_the_command_rejects_bad_caller_limits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--hosts", "127.0.0.1:9", "--trusted-proxy", "10.0.0.0/33"]) == 2
    assert "10.0.0.0/33" in capsys.readouterr().err
    for flag, value in (("--header-timeout", "0"), ("--max-connections", "0"), ("--request-buffer", "-1")):
        with pytest.raises(SystemExit):
            main(["proxy", "--hosts", "127.0.0.1:9", flag, value])
        assert value in capsys.readouterr().err


def test_bad_caller_limits_fail_at_construction() -> None:
    for options, named in (
        ({"header_timeout": 0}, "header_timeout"),
        ({"send_timeout": float("nan")}, "send_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"response_buffer": -1}, "response_buffer"),
        ({"trusted_proxies": ["nonsense"]}, "nonsense"),
    ):
        with pytest.raises(ValueError, match=named):
            make_app(["127.0.0.1:9"], **options)


async def test_the_command_serves_with_its_caller_limits(tmp_path: Path, make_backends: MakeBackends) -> None:
    (backend,) = make_backends(1)
    args = [
        "--hosts",
        backend.url,
        "--header-timeout",
        "0.5",
        "--max-connections",
        "50",
        "--trusted-proxy",
        "10.0.0.0/8",
    ]
    with proxy_process(tmp_path, *args) as (_, url), sockets() as held:
        held.append(connect(url))
        wait_for(lambda: closed_by_peer(held[0]), timeout=10, what="the idle connection closed by the proxy")
        async with httpx.AsyncClient(base_url=url) as client:
            callers = (await client.get("/health")).json()["callers"]
        assert callers["header_timeouts"] == 1
