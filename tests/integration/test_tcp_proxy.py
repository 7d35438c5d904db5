"""The TCP forwarder against real TCP servers on 127.0.0.1: spread, open connections counted, half-close,
large transfers both ways, killed and resetting backends, idle timeout, TCP health checks, the connection
cap, running out of file descriptors (in a child process with a low RLIMIT_NOFILE), the CLI."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.abc
import pytest

from lbclient import HealthCheck, OutlierDetection
from lbclient.tcp_proxy import TCPProxy, _Exhaustion, default_max_connections

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _Handler(socketserver.BaseRequestHandler):
    """One command line, then:
    ``name``: answer the server's name, then wait for the caller's end; ``echo``: echo every byte until the
    caller's end, then ``END <name>``; ``download N``: N pattern bytes, then close; ``reset``: the name,
    then a reset."""

    server: _Server

    def handle(self) -> None:
        backend = self.server.backend
        sock: socket.socket = self.request
        with backend.lock:
            backend.connections += 1
            backend.active.add(sock)
            backend.peak = max(backend.peak, len(backend.active))
        try:
            self._serve(backend, sock)
        except OSError:
            pass  # the test killed the server, or the caller reset: nothing to answer
        finally:
            with backend.lock:
                backend.active.discard(sock)

    def _serve(self, backend: TCPBackend, sock: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                return
            line += chunk
        command, _, argument = line.strip().decode().partition(" ")
        name = backend.name.encode()
        if command == "name":
            sock.sendall(name + b"\n")
            while sock.recv(65536):
                pass
        elif command == "echo":
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
            sock.sendall(b"END " + name + b"\n")
        elif command == "download":
            left = int(argument)
            block = pattern(65536)
            while left > 0:
                sock.sendall(block[: min(left, len(block))])
                left -= len(block)
        elif command == "reset":
            sock.sendall(name + b"\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # now, before socketserver's orderly shutdown(SHUT_WR) could send a FIN first


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5. The proxy opens up to its cap (22 under 64 descriptors) of
    # upstream connections at once; under load this thread accepts more slowly than they come, and Linux,
    # its accept queue full, answers with SYN cookies and then drops the handshake's last ACK. The proxy's
    # side is established, ours never exists, and a caller that sends nothing never brings it back.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, backend: TCPBackend, port: int) -> None:
        self.backend = backend
        super().__init__(("127.0.0.1", port), _Handler)


class TCPBackend:
    """A real TCP server on 127.0.0.1 in threads; ``kill()`` closes it and every connection it has,
    ``start()`` brings it back on the same port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.active: set[socket.socket] = set()
        self.peak = 0  # the most connections open at once
        self.port = 0
        self._server: _Server | None = None
        self._serving = False
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.listen()
        self.serve()

    def listen(self) -> None:
        """Listening: connections are made (into the listen backlog), none taken until :meth:`serve`."""
        server = self._server = _Server(self, self.port)
        self.port = server.server_address[1]
        self._serving = False

    def serve(self) -> None:
        """Taking and answering connections, in a thread."""
        assert self._server is not None
        self._serving = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def kill(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._serving:  # shutdown() waits for serve_forever to return: forever if it never ran
            server.shutdown()
        server.server_close()
        with self.lock:
            for sock in list(self.active):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@pytest.fixture
def tcp_backends() -> Iterator[Callable[[int], list[TCPBackend]]]:
    made: list[TCPBackend] = []

    def make(count: int) -> list[TCPBackend]:
        new = [TCPBackend(chr(ord("a") + len(made) + i)) for i in range(count)]
        made.extend(new)
        return new

    yield make
    for backend in made:
        backend.kill()


@contextlib.asynccontextmanager
async def running(proxy: TCPProxy) -> AsyncIterator[tuple[str, int]]:
    async with anyio.create_task_group() as group:
        address: tuple[str, int] = await group.start(proxy.serve, "127.0.0.1", 0)
        yield address
        group.cancel_scope.cancel()


async def receive_all(stream: anyio.abc.SocketStream) -> bytes:
    data = bytearray()
    with anyio.fail_after(DEADLINE):
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return bytes(data)


async def receive_to_end(stream: anyio.abc.SocketStream) -> tuple[bytes, Exception]:
    """What arrives before the stream ends, and how it ended: EndOfStream (FIN) or BrokenResourceError (RST)."""
    data = b""
    with anyio.fail_after(DEADLINE):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as end:
                return data, end


async def ask_name(address: tuple[str, int]) -> tuple[anyio.abc.SocketStream, str]:
    stream = await anyio.connect_tcp(*address)
    await stream.send(b"name\n")
    with anyio.fail_after(DEADLINE):
        line = await stream.receive()
    return stream, line.decode().strip()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(DEADLINE):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


async def echo_through(stream: anyio.abc.SocketStream, data: bytes) -> None:
    """``data`` through an ``echo`` connection and back, whole."""
    await stream.send(data)
    got = b""
    with anyio.fail_after(DEADLINE):
        while len(got) < len(data):
            got += await stream.receive()
    assert got == data


def outstanding(proxy: TCPProxy) -> dict[str, int]:
    return {h.url.removeprefix("http://"): h.outstanding for h in proxy.pool.hosts}


# -- spreading and counting -----------------------------------------------------------------------------


async def test_round_robin_spreads_connections(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    backends = tcp_backends(3)
    proxy = TCPProxy([b.address for b in backends], strategy="round_robin")
    async with running(proxy) as address:
        names = []
        for _ in range(9):
            stream, name = await ask_name(address)
            names.append(name)
            await stream.aclose()
    assert sorted(names) == sorted("abc" * 3)
    assert [b.connections for b in backends] == [3, 3, 3]


async def test_least_connections_counts_open_connections(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    backends = tcp_backends(3)
    proxy = TCPProxy([b.address for b in backends])  # least_connections is the default
    async with running(proxy) as address:
        held = [await ask_name(address) for _ in range(3)]
        assert sorted(name for _, name in held) == ["a", "b", "c"]  # one open connection each
        assert sorted(outstanding(proxy).values()) == [1, 1, 1]
        await held[1][0].aclose()  # that host is now the least loaded
        await wait_for(lambda: sum(outstanding(proxy).values()) == 2, "the closed connection freed its host")
        stream, name = await ask_name(address)
        assert name == held[1][1]
        for s, _ in [*held, (stream, name)]:
            await s.aclose()
        await wait_for(lambda: sum(outstanding(proxy).values()) == 0, "every hold ended")
    latencies = [h.ewma_latency for h in proxy.pool.hosts]
    assert all(latency is not None and latency < 1.0 for latency in latencies), latencies  # the connect time


async def test_ip_hash_keeps_a_caller_on_one_host(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    backends = tcp_backends(4)
    proxy = TCPProxy([b.address for b in backends], strategy="ip_hash")
    async with running(proxy) as address:
        names = set()
        for _ in range(6):
            stream, name = await ask_name(address)
            names.add(name)
            await stream.aclose()
    assert len(names) == 1


# -- bytes both ways --------------------------------------------------------------------------------------


async def test_half_close_reaches_the_host_and_the_answer_still_comes_back(
    tcp_backends: Callable[[int], list[TCPBackend]],
) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address])
    async with running(proxy) as address:
        stream = await anyio.connect_tcp(*address)
        payload = pattern(300_000)
        await stream.send(b"echo\n" + payload)
        await stream.send_eof()  # our sending ends; the host sees it and only then says END
        answer = await receive_all(stream)
        await stream.aclose()
    assert answer == payload + b"END a\n"


async def test_large_transfers_both_ways_at_once(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address])
    size = 16 * 1024 * 1024
    async with running(proxy) as address:
        stream = await anyio.connect_tcp(*address)
        sent = hashlib.sha256()
        received = hashlib.sha256()
        count = 0

        async def upload() -> None:
            await stream.send(b"echo\n")
            block = os.urandom(65536)
            for _ in range(size // len(block)):
                sent.update(block)
                await stream.send(block)
            await stream.send_eof()

        async with anyio.create_task_group() as group:
            group.start_soon(upload)
            data = bytearray()
            with anyio.fail_after(60):
                while True:
                    try:
                        chunk = await stream.receive()
                    except anyio.EndOfStream:
                        break
                    count += len(chunk)
                    data += chunk
                    if len(data) > 65536 + 16:
                        keep = data[-16:]
                        received.update(data[:-16])
                        data = keep
            received.update(data[: -len(b"END a\n")])
            tail = bytes(data[-len(b"END a\n") :])
        await stream.aclose()
        download = await anyio.connect_tcp(*address)
        await download.send(b"download 5000000\n")
        body = await receive_all(download)
        await download.aclose()
    assert count == size + len(b"END a\n")
    assert tail == b"END a\n"
    assert received.hexdigest() == sent.hexdigest()
    assert body == (pattern(65536) * 77)[:5_000_000]


# -- failures -----------------------------------------------------------------------------------------------


async def test_a_killed_host_costs_no_connection_and_gets_ejected(
    tcp_backends: Callable[[int], list[TCPBackend]],
) -> None:
    backends = tcp_backends(3)
    backends[1].kill()
    proxy = TCPProxy(
        [b.address for b in backends],
        strategy="round_robin",
        outlier_detection=OutlierDetection(consecutive_failures=2),
    )
    async with running(proxy) as address:
        names = []
        for _ in range(12):
            stream, name = await ask_name(address)
            names.append(name)
            await stream.aclose()
    assert set(names) == {"a", "c"}  # every connection answered, none by the dead host
    dead = proxy.pool.hosts[1]
    assert dead.failures >= 2
    assert dead.ejected
    await wait_for(lambda: sum(outstanding(proxy).values()) == 0, "failed connects hold nothing")


async def test_no_host_left_closes_the_caller(
    tcp_backends: Callable[[int], list[TCPBackend]], caplog: pytest.LogCaptureFixture
) -> None:
    backends = tcp_backends(2)
    for backend in backends:
        backend.kill()
    proxy = TCPProxy([b.address for b in backends], retries=2)
    with caplog.at_level(logging.WARNING, logger="lbclient.tcp"):
        async with running(proxy) as address:
            stream = await anyio.connect_tcp(*address)
            await stream.send(b"name\n")
            # Closed with nothing forwarded: an orderly end, or a reset when our line was still unread.
            with contextlib.suppress(anyio.BrokenResourceError):
                assert await receive_all(stream) == b""
            await stream.aclose()
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped, caplog.text
    assert all(b.address in dropped[0] for b in backends), dropped[0]  # both attempts named


async def test_a_reset_by_the_host_resets_the_caller(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address])
    async with running(proxy) as address:
        stream = await anyio.connect_tcp(*address)
        await stream.send(b"reset\n")
        received, end = await receive_to_end(stream)
        assert isinstance(end, anyio.BrokenResourceError), end  # a reset, not a clean end (EndOfStream)
        await stream.aclose()
        await wait_for(lambda: sum(outstanding(proxy).values()) == 0, "the hold ended")
    assert received in (b"", b"a\n")
    assert proxy.pool.hosts[0].failures == 0  # after the connect, the protocol's business


async def test_a_caller_that_leaves_closes_the_upstream(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address])
    async with running(proxy) as address:
        stream, name = await ask_name(address)
        assert name == "a"
        assert len(backend.active) == 1
        await stream.aclose()
        await wait_for(lambda: not backend.active, "the host saw the connection end")
        await wait_for(lambda: sum(outstanding(proxy).values()) == 0, "the hold ended")


async def test_idle_timeout_closes_a_silent_connection(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address], idle_timeout=0.3)
    async with running(proxy) as address:
        stream = await anyio.connect_tcp(*address)
        await stream.send(b"echo\n")
        for _ in range(5):  # traffic keeps it open past the timeout
            await stream.send(b"ping")
            with anyio.fail_after(DEADLINE):
                assert await stream.receive() == b"ping"
            last = time.monotonic()
            await anyio.sleep(0.1)
        received, end = await receive_to_end(stream)  # then silence: cut, with a reset (not a clean end)
        assert (received, type(end)) == (b"", anyio.BrokenResourceError)
        assert time.monotonic() - last >= 0.25
        await stream.aclose()
        await wait_for(lambda: not backend.active, "the upstream was closed too")


async def test_tcp_health_checks_mark_a_dead_host_and_its_return(
    tcp_backends: Callable[[int], list[TCPBackend]],
) -> None:
    backends = tcp_backends(2)
    check = HealthCheck(interval=0.05, timeout=1.0, healthy_threshold=1, unhealthy_threshold=1)
    proxy = TCPProxy([b.address for b in backends], health_check=check, outlier_detection=False)
    async with running(proxy):
        states = proxy.pool.hosts
        backends[1].kill()
        await wait_for(lambda: not states[1].healthy, "the killed host turned unhealthy")
        assert states[0].healthy
        backends[1].start()
        await wait_for(lambda: states[1].healthy, "the host came back")


# -- input and the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "options", "named"),
    [
        (["127.0.0.1"], {}, "'127.0.0.1'"),
        (["http://127.0.0.1:80"], {}, "'http://127.0.0.1:80'"),
        (["127.0.0.1:5432"], {"connect_timeout": 0}, "0"),
        (["127.0.0.1:5432"], {"idle_timeout": -1.0}, "-1.0"),
        (["127.0.0.1:5432"], {"strategy": "fastest"}, "'fastest'"),
        ([], {}, "[]"),
        (["127.0.0.1:99999"], {}, "'127.0.0.1:99999'"),
        (["127.0.0.1:0"], {}, "'127.0.0.1:0'"),
        (["127.0.0.1:5432/db"], {}, "'127.0.0.1:5432/db'"),
        ([{"url": "tcp://127.0.0.1", "weight": 2}], {}, "'tcp://127.0.0.1'"),
        (["127.0.0.1:5432"], {"max_connections": 0}, "0"),
        (["127.0.0.1:5432"], {"max_connections": -3}, "-3"),
        (["127.0.0.1:5432"], {"max_connections": 2.5}, "2.5"),
        (["127.0.0.1:5432"], {"max_connections": True}, "True"),
        (["127.0.0.1:5432"], {"max_connections": "many"}, "'many'"),
    ],
)
def test_bad_input_names_the_value(hosts: list[str], options: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError) as info:
        TCPProxy(hosts, **options)  # type: ignore[arg-type]
    assert named in str(info.value) or (named == "[]" and "empty" in str(info.value)), str(info.value)


def test_the_command_forwards_and_stops_on_sigint(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    command = [sys.executable, "-m", "lbclient", "tcp-proxy", "--listen", "127.0.0.1:0", "--hosts", backend.address]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "listening on 127.0.0.1:" in line, line
            port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
                sock.sendall(b"name\n")
                assert sock.recv(100) == b"a\n"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=DEADLINE) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_the_command_rejects_a_host_without_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lbclient", "tcp-proxy", "--hosts", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "'127.0.0.1'" in result.stderr


def test_hosts_as_mappings_take_tcp_urls() -> None:
    proxy = TCPProxy([{"url": "tcp://127.0.0.1:5432", "weight": 3}, "tcp://127.0.0.1:5433"])
    assert [(h.url, h.weight) for h in proxy.pool.hosts] == [("http://127.0.0.1:5432", 3), ("http://127.0.0.1:5433", 1)]


async def test_a_host_that_stops_reading_pushes_back_on_the_caller() -> None:
    """The proxy holds at most a little of what it cannot forward: the caller's sends block. (On asyncio an
    accepted stream read eagerly, and the proxy took 1.5 GB in 4 s before reading was paused.)"""
    deaf = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never reads
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        deaf.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(deaf.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    proxy = TCPProxy([f"127.0.0.1:{deaf.getsockname()[1]}"])
    limit = 256 * 1024 * 1024
    try:
        async with running(proxy) as address:

            def push() -> int:
                sent = 0
                block = b"x" * (1024 * 1024)
                with socket.create_connection(address, timeout=DEADLINE) as sock:
                    sock.settimeout(1.0)
                    with contextlib.suppress(TimeoutError):
                        while sent < limit:
                            sent += sock.send(block)
                return sent

            sent = await anyio.to_thread.run_sync(push)
    finally:
        stop.set()
        acceptor.join()
        for sock in held:
            sock.close()
        deaf.close()
    # Kernel buffers on both hops hold some megabytes; without backpressure the caller reaches the limit.
    assert sent < 64 * 1024 * 1024, f"the caller pushed {sent / 1e6:.0f} MB into a host that reads nothing"


async def test_shutting_down_resets_open_connections(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address])
    async with anyio.create_task_group() as group:
        address = await group.start(proxy.serve, "127.0.0.1", 0)
        stream, name = await ask_name(address)
        assert name == "a"
        group.cancel_scope.cancel()
    received, end = await receive_to_end(stream)
    await stream.aclose()
    assert (received, type(end)) == (b"", anyio.BrokenResourceError)  # cut, not a clean end
    assert proxy.pool.hosts[0].outstanding == 0


def test_the_command_says_when_it_cannot_listen() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "lbclient", "tcp-proxy", "--listen", f"127.0.0.1:{port}", "--hosts", "127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# -- the connection cap ----------------------------------------------------------------------------------------


async def test_max_connections_holds_the_next_caller_in_the_backlog_until_one_closes(
    tcp_backends: Callable[[int], list[TCPBackend]],
) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address], max_connections=2)
    async with running(proxy) as address:
        held = [await ask_name(address) for _ in range(2)]
        assert [name for _, name in held] == ["a", "a"]
        third = await anyio.connect_tcp(*address)  # the kernel completes the handshake: it waits in the backlog
        await third.send(b"name\n")
        with anyio.move_on_after(0.3) as waiting:
            early = await third.receive()
        assert waiting.cancelled_caught, f"connection 3 of at most 2 was served: {early!r}"
        assert backend.connections == 2  # no upstream connection was opened for it
        await held[0][0].aclose()
        with anyio.fail_after(DEADLINE):
            assert await third.receive() == b"a\n"  # its bytes were kept, and it is served now
        assert (backend.connections, backend.peak) == (3, 2)
        for stream in (held[1][0], third):
            await stream.aclose()
        await wait_for(lambda: sum(outstanding(proxy).values()) == 0, "every hold ended")


async def test_max_connections_is_never_exceeded_under_a_burst(tcp_backends: Callable[[int], list[TCPBackend]]) -> None:
    (backend,) = tcp_backends(1)
    proxy = TCPProxy([backend.address], max_connections=3)
    answers: dict[int, bytes] = {}
    async with running(proxy) as address:

        async def echo(index: int) -> None:
            stream = await anyio.connect_tcp(*address)
            await stream.send(b"echo\n" + pattern(100_000) + bytes([index]))
            await stream.send_eof()
            answers[index] = await receive_all(stream)
            await stream.aclose()

        async with anyio.create_task_group() as group:
            for index in range(12):
                group.start_soon(echo, index)
    assert all(answers[i] == pattern(100_000) + bytes([i]) + b"END a\n" for i in range(12))
    assert backend.connections == 12
    assert backend.peak <= 3, backend.peak


def test_the_default_cap_leaves_two_descriptors_a_connection_and_a_reserve() -> None:
    assert default_max_connections(64) == 22  # 64 - (16 + 4) = 44 descriptors: 22 callers and their upstreams
    assert default_max_connections(1024) == 472
    assert default_max_connections(10) == 1
    assert TCPProxy(["127.0.0.1:5432"]).max_connections == default_max_connections()
    assert TCPProxy(["127.0.0.1:5432"], max_connections=None).max_connections is None


def test_the_command_rejects_a_bad_max_connections() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lbclient", "tcp-proxy", "--hosts", "127.0.0.1:5432", "--max-connections", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "'0'" in result.stderr, result.stderr


# -- running out of file descriptors ----------------------------------------------------------------------------

#: Runs the proxy in a child with RLIMIT_NOFILE lowered: ``LIMIT cli ARGS...`` runs ``lbclient ARGS`` (on
#: asyncio); ``LIMIT trio HOST:PORT CAP`` serves ``TCPProxy([HOST:PORT], max_connections=CAP)`` on trio. Either
#: prints ``listening on 127.0.0.1:PORT`` first.
LIMITED = """\
import logging, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
if sys.argv[2] == "cli":
    from lbclient.__main__ import main
    sys.exit(main(sys.argv[3:]))
import anyio
from lbclient.tcp_proxy import TCPProxy
async def serve(address, cap):
    proxy = TCPProxy([address], max_connections=None if cap == "none" else cap if cap == "auto" else int(cap))
    async with anyio.create_task_group() as group:
        host, port = await group.start(proxy.serve, "127.0.0.1", 0)
        print(f"listening on {host}:{port}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # until told to stop
        group.cancel_scope.cancel()
logging.basicConfig(level="INFO", format="%(levelname)s: %(name)s: %(message)s")
anyio.run(serve, sys.argv[3], sys.argv[4], backend=sys.argv[2])
"""


class LimitedProxy:
    """A proxy in a child process whose descriptor limit is ``limit``; its stderr lines are collected."""

    def __init__(self, limit: int, *args: str) -> None:
        self.cli = args[0] == "cli"
        self.process = subprocess.Popen(
            [sys.executable, "-c", LIMITED, str(limit), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.errors: list[str] = []
        errors = self.process.stderr
        self._reader = threading.Thread(target=lambda: self.errors.extend(line for line in errors), daemon=True)
        self._reader.start()
        line = self.process.stdout.readline()
        assert "listening on 127.0.0.1:" in line, (line, self.errors)
        self.address = ("127.0.0.1", int(line.split("listening on 127.0.0.1:")[1].split()[0]))

    @classmethod
    def serving(cls, limit: int, backend: str, host: str, cap: str) -> LimitedProxy:
        if backend == "trio":
            return cls(limit, "trio", host, cap)
        return cls(limit, "cli", "tcp-proxy", "--listen", "127.0.0.1:0", "--hosts", host, "--max-connections", cap)

    def lines(self, text: str) -> list[str]:
        return [line for line in list(self.errors) if text in line]

    def stop(self) -> int:
        """End the child (SIGINT for the command, a line on stdin for the trio one); its exit code."""
        if self.process.poll() is None:
            if self.cli:
                self.process.send_signal(signal.SIGINT)
            else:
                assert self.process.stdin is not None
                self.process.stdin.write("stop\n")
                self.process.stdin.flush()
        try:
            return self.process.wait(timeout=DEADLINE)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(DEADLINE)
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()


def wait_until(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    """Until ``condition()``; at the deadline, fail with ``what()``: the state then, not at the start."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.01)


def echo_both_ways(sock: socket.socket, data: bytes) -> None:
    """``data`` through an ``echo`` connection and back, whole."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended after {len(got)} of {len(data)} bytes"
        got += chunk
    assert got == data


def test_the_backend_keeps_a_burst_of_connections_it_has_not_taken_yet(
    tcp_backends: Callable[[int], list[TCPBackend]],
) -> None:
    """The flood test's burst of upstream connections, all opened at once (as the proxy does) before the
    backend takes any: it keeps them all in its listen backlog and serves each once it takes them. With
    socketserver's backlog of 5, the kernel completed the rest with SYN cookies and dropped them on the
    backend's side: established for the caller, never seen by the backend."""
    (backend,) = tcp_backends(1)
    backend.kill()
    backend.listen()  # not taking connections yet: the proxy's burst outruns the backend's thread
    cap = default_max_connections(64)
    assert cap is not None
    burst = 2 * cap
    callers = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(burst)]
    try:
        for sock in callers:
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", backend.port)) in (0, errno.EINPROGRESS)
        backend.serve()
        wait_until(lambda: backend.connections == burst, lambda: f"{backend.connections} of {burst} taken")
    finally:
        for sock in callers:
            sock.close()


@pytest.fixture(params=["asyncio", "trio"])
def proxy_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("cap", ["none", "auto"])
def test_established_connections_survive_a_flood_beyond_the_descriptor_limit(
    tcp_backends: Callable[[int], list[TCPBackend]], proxy_backend: str, cap: str
) -> None:
    """64 descriptors: room for about 25 connections. Five are established, then 200 more arrive and stay.
    Without a cap ("none") accepting runs out of descriptors; with the default cap it stops at 22 first.
    Either way the five keep echoing, the proxy keeps running, and once the flood ends new callers are
    served again."""
    (backend,) = tcp_backends(1)
    proxy = LimitedProxy.serving(64, proxy_backend, backend.address, cap)
    established: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        for index in range(5):
            sock = socket.create_connection(proxy.address, timeout=DEADLINE)
            established.append(sock)
            sock.sendall(b"echo\n")
            echo_both_ways(sock, b"before %d" % index)
        for _ in range(200):
            flood.append(socket.create_connection(proxy.address, timeout=DEADLINE))
        if cap == "none":
            wait_until(lambda: proxy.lines("out of file descriptors"), lambda: f"no shortage reported: {proxy.errors}")
        else:
            cap_value = default_max_connections(64)
            wait_until(
                lambda: len(backend.active) == cap_value,
                lambda: (
                    f"{len(backend.active)} of {cap_value} connections at the backend "
                    f"({backend.connections} made): {''.join(proxy.errors)}"
                ),
            )
        for index, sock in enumerate(established):
            echo_both_ways(sock, pattern(50_000) + b"during %d" % index)
        assert proxy.process.poll() is None, proxy.errors
        for sock in flood:
            sock.close()
        flood.clear()
        with socket.create_connection(proxy.address, timeout=DEADLINE) as newcomer:
            newcomer.sendall(b"name\n")
            assert newcomer.recv(100) == b"a\n"  # behind the flood's leftovers in the backlog, and served
        for index, sock in enumerate(established):
            echo_both_ways(sock, b"after %d" % index)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"END a\n"
    finally:
        for sock in established + flood:
            sock.close()
        code = proxy.stop()
    assert code == 0, proxy.errors
    assert not proxy.lines("Traceback"), "".join(proxy.errors)
    warnings = proxy.lines("out of file descriptors")
    if cap == "none":
        # Logged when an episode starts, not for each of the many accepts that failed in it.
        assert 1 <= len(warnings) <= 1 + len(proxy.lines("available again")), "".join(proxy.errors)
    else:
        assert warnings == [], "".join(proxy.errors)  # the cap keeps the proxy below the limit
        assert backend.peak <= default_max_connections(64)


#: A proxy on a child's last descriptor: ``BACKEND HOST:PORT``. Every descriptor but one is taken, so a caller
#: can be accepted and its upstream socket cannot be made; a line on stdin frees them and prints the host's
#: state as JSON; another line stops.
STARVED = """\
import json, logging, os, sys
import anyio
from lbclient.tcp_proxy import TCPProxy
async def serve(address):
    proxy = TCPProxy([address], max_connections=None)
    async with anyio.create_task_group() as group:
        host, port = await group.start(proxy.serve, "127.0.0.1", 0)
        hogs = []
        try:
            while True:
                hogs.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        os.close(hogs.pop())
        print(f"listening on {host}:{port}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        for fd in hogs:
            os.close(fd)
        (state,) = proxy.pool.hosts
        keys = ("failures", "ejected", "healthy", "outstanding")
        print(json.dumps({key: getattr(state, key) for key in keys}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        group.cancel_scope.cancel()
logging.basicConfig(level="DEBUG", format="%(levelname)s: %(name)s: %(message)s")
anyio.run(serve, sys.argv[2], backend=sys.argv[1])
"""


def test_no_descriptor_for_the_upstream_closes_the_caller_and_spares_the_host(
    tcp_backends: Callable[[int], list[TCPBackend]], proxy_backend: str
) -> None:
    (backend,) = tcp_backends(1)
    command = [sys.executable, "-c", STARVED, proxy_backend, backend.address]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            assert "listening on 127.0.0.1:" in line, line
            address = ("127.0.0.1", int(line.split("listening on 127.0.0.1:")[1]))
            with socket.create_connection(address, timeout=DEADLINE) as caller:
                assert caller.recv(100) == b""  # an orderly end (a reset would raise), nothing forwarded
            assert backend.connections == 0
            process.stdin.write("free\n")
            process.stdin.flush()
            state: Mapping[str, Any] = json.loads(process.stdout.readline())
            assert state == {"failures": 0, "ejected": False, "healthy": True, "outstanding": 0}
            with socket.create_connection(address, timeout=DEADLINE) as caller:  # descriptors are back
                caller.sendall(b"name\n")
                assert caller.recv(100) == b"a\n"
            assert backend.connections == 1
            process.stdin.write("stop\n")
            process.stdin.flush()
            _, errors = process.communicate(timeout=DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, errors
    assert "Traceback" not in errors, errors
    # Once the caller took the last descriptor, the next accept fails too: one episode, logged once.
    assert len([line for line in errors.splitlines() if "out of file descriptors (EMFILE" in line]) == 1, errors
    assert "no file descriptor for the upstream socket" in errors, errors


class FailingListener(anyio.abc.SocketListener):
    """A real listener whose accepts can be made to fail for want of descriptors, as the event loop's own
    listener reports it (asyncio: the OSError; trio: BrokenResourceError from it). ``fail(n)``: the next n
    accepts fail, the one waiting now included."""

    def __init__(self, inner: anyio.abc.SocketListener, backend: str) -> None:
        self.inner = inner
        self.backend = backend
        self.failures = 0
        self.failed = 0
        self._armed = anyio.Event()

    def fail(self, count: int) -> None:
        self.failures += count
        self._armed.set()

    async def accept(self) -> anyio.abc.SocketStream:
        await anyio.lowlevel.checkpoint()
        if self.failures == 0:
            taken: list[anyio.abc.SocketStream] = []
            async with anyio.create_task_group() as group:

                async def take() -> None:
                    taken.append(await self.inner.accept())
                    group.cancel_scope.cancel()

                group.start_soon(take)
                await self._armed.wait()
                group.cancel_scope.cancel()
            self._armed = anyio.Event()
            if taken:
                return taken[0]
        self.failures -= 1
        self.failed += 1
        shortage = OSError(errno.EMFILE, "Too many open files")
        if self.backend == "trio":
            raise anyio.BrokenResourceError from shortage
        raise shortage

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


async def test_running_out_of_descriptors_is_logged_once_an_episode(
    tcp_backends: Callable[[int], list[TCPBackend]],
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (backend,) = tcp_backends(1)
    monkeypatch.setattr(_Exhaustion, "FIRST_PAUSE", 0.001)
    monkeypatch.setattr(_Exhaustion, "MAX_PAUSE", 0.004)
    monkeypatch.setattr(_Exhaustion, "QUIET", 0.0)  # over at the first connection made after the last failure
    proxy = TCPProxy([backend.address], max_connections=None)
    (inner,) = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners
    assert isinstance(inner, anyio.abc.SocketListener)
    listener = FailingListener(inner, anyio_backend)

    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="lbclient.tcp"):
        async with listener, anyio.create_task_group() as group:
            address = await group.start(proxy.serve_listener, listener)
            established = await anyio.connect_tcp(*address)
            await established.send(b"echo\n")
            await echo_through(established, b"before")
            for episode, failures in enumerate((50, 20), start=1):
                listener.fail(failures)
                await wait_for(lambda: listener.failures == 0, "the accepts failed")
                assert len(lines("out of file descriptors")) == episode  # once, for all its failed accepts
                assert len(lines("available again")) == episode - 1
                stream, name = await ask_name(address)  # accepting went on: served, and the episode is over
                assert name == "a"
                await stream.aclose()
                assert len(lines("available again")) == episode
                assert f"{failures} accepts and 0 upstream connects failed" in lines("available again")[-1]
            await echo_through(established, pattern(100_000))  # the connection from before was kept
            await established.send_eof()
            assert await receive_all(established) == b"END a\n"
            await established.aclose()
            group.cancel_scope.cancel()
    assert listener.failed == 70
    assert backend.connections == 3
