"""Real HTTP backends on loopback for tests, examples and the demo (``Backend``: standard library only),
and clients for tests that mock HTTP with respx or pytest-httpx (``mock_client``, ``mock_async_client``).

``Backend`` is an HTTP/1.1 server in a background thread on ``127.0.0.1`` that answers every path with
JSON naming itself, counts what arrived, and can be slowed, made to fail, killed and restarted::

    with Backend("a") as a, Backend("b") as b:
        client = LBClient([a.url, b.url])
        client.get("/x").json()  # {"id": "a", "method": "GET", "path": "/x", ...}
        a.kill()                 # connections refused, open connections reset

Special paths: ``/health`` (200, or ``health_status``), ``/stream?chunks=N&delay=S`` (a chunked
body of N lines), ``/redirect?to=PATH`` (302), ``/set-cookie?name=N&value=V``, ``/bytes?n=N`` (N
bytes 0, 1, ... 255, 0, ... with a Content-Length, written in 64 KiB pieces), ``/sink`` (reads the request
body without keeping it and answers ``{"id": ..., "received": LENGTH}``), ``/headers?Name=value&...``
(an empty answer with these response headers) and ``POST .../chat/completions`` (an OpenAI-compatible
stand-in that answers ``"<name>: <last message>"``, as JSON or, with ``"stream": true``, as server-sent
events; ``delay_per_chunk`` spaces the events), so SDKs can be tried against a real pool.

With ``delay`` set, ``peak_concurrency`` is the most requests that waited out the delay at once.

Faults, for tests that need servers that really fail (every request is counted when it arrives, before
any fault, so ``count()`` proves what reached the server)::

    a.kill()                  # connection refused from now on; open connections reset
    a.fail_next(3, 503)       # a burst: the next 3 answers are 503, then normal answers again
    a.fail_next(1, 503, retry_after=1)  # ... with a Retry-After header
    a.status = 503            # every answer 503 (``retry_after`` adds the header to answers >= 400)
    a.reset = True            # status line, headers and part of the body, then a TCP reset (RST)
    a.drop = True             # read the request, then reset the connection before any answer
    a.hang = True             # read the request and never answer (until cleared or killed)
    a.health_pattern = [200, 503]  # /health answers these statuses in turn, cycling (flapping)

``/health`` only obeys ``health_status`` and ``health_pattern``; the other faults leave it alone.
Request bodies are read whole (``/sink`` aside), with ``Content-Length`` or chunked.

A request that carries an ``X-Request-Id`` header is also counted by that id, so a test can prove that
each request arrived exactly once (``ids()``), and ``open_connections`` counts the client connections
the server holds open::

    client.post("/x", headers={"X-Request-Id": "post-1"})
    assert a.ids()["post-1"] == 1
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable

    from . import AsyncLBClient, HealthCheck, LBClient, OutlierDetection, Pool, RetryPolicy
    from ._core import HostLike

__all__ = ["MOCK_HOSTS", "Backend", "FakeClock", "mock_async_client", "mock_client"]

_PIECE = 64 * 1024
#: The bytes that ``/bytes`` answers: 0..255 repeated, so a reader can check every byte.
_PATTERN = bytes(range(256)) * (_PIECE // 256)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    #: The listen queue: socketserver's default of 5 drops the connects of a burst of callers, who then
    #: wait a second for their retry.
    request_queue_size = 128

    def __init__(self, backend: Backend, address: str, port: int) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        #: Set when the server is killed: wakes the handlers that hang.
        self.stopping = threading.Event()
        super().__init__((address, port), _Handler)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        """Quiet about clients that went away (timeouts, resets); anything else is printed as usual."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self.connections_lock:
                self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self.connections_lock:
                self.connections.discard(request)
        super().shutdown_request(request)

    def finish_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        """Serve one connection, over TLS when the backend has a context (the handshake runs here, in the
        connection's own thread)."""
        context = self.backend.ssl_context
        if context is None or not isinstance(request, socket.socket):
            super().finish_request(request, client_address)
            return
        with self.connections_lock:
            self.connections.discard(request)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.backend.tls_failures += 1  # e.g. a client that refused our certificate
            return
        with self.connections_lock:
            self.connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # /stream writes its chunks one by one
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests and the demo print their own summaries."""

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body in pieces of at most 64 KiB, with ``Content-Length`` or chunked."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._exactly(size)
                self.rfile.readline()
        yield from self._exactly(int(self.headers.get("Content-Length") or 0))

    def _exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            piece = self.rfile.read(min(size, _PIECE))
            if not piece:
                raise ConnectionError("the client closed the connection in the middle of the body")
            size -= len(piece)
            yield piece

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _answer(self) -> None:
        backend = self.server.backend
        url = urlsplit(self.path)
        # /sink counts its body without keeping it, so uploads of any size fit in memory.
        received = sum(len(piece) for piece in self._body_chunks()) if url.path == "/sink" else None
        body = b"" if received is not None else self._read_body()
        backend._arrived(self.command, url.path, self.headers.get("X-Request-Id"))
        if url.path == "/health":
            status = backend._health_answer()
            self._send(status, {"id": backend.name, "healthy": status < 400})
            return
        if backend.hang:
            self._hang()
            return
        if backend.delay:
            backend._delayed(+1)
            try:
                time.sleep(backend.delay)
            finally:
                backend._delayed(-1)
        if backend.drop:
            self._abort()
            return
        if backend.reset:
            self._reset()
            return
        burst = backend._take_burst()
        if burst is not None:
            status, retry_after = burst
            self._send(status, {"id": backend.name, "burst": True}, retry_after=retry_after)
            return
        if not self._special(url.path, parse_qs(url.query), received, body):
            payload = {
                "id": backend.name,
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "host": self.headers.get("Host"),
                "headers": dict(self.headers.items()),
                "body": body.decode("utf-8", "replace"),
            }
            self._send(backend.status, payload)

    def _special(self, path: str, query: dict[str, list[str]], received: int | None, body: bytes) -> bool:
        """Answer the special paths (True), or leave the request to the echo (False)."""
        backend = self.server.backend
        if path.endswith("/chat/completions") and self.command == "POST":
            self._chat_completion(body)
        elif path == "/stream":
            self._stream(query)
        elif path == "/bytes":
            self._bytes(int(query.get("n", ["0"])[0]))
        elif received is not None:
            self._send(backend.status, {"id": backend.name, "received": received})
        elif path == "/headers":
            self._empty(backend.status, [(name, value) for name, values in query.items() for value in values])
        elif path == "/set-cookie":
            self._empty(200, [("Set-Cookie", f"{query['name'][0]}={query['value'][0]}; Path=/")])
        elif path == "/redirect":
            self._empty(302, [("Location", query.get("to", ["/"])[0])])
        else:
            return False
        return True

    def _empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, payload: object, *, retry_after: str | None = None) -> None:
        """A JSON answer: status line, headers and body in one write, so that a kill can only reset
        a connection before the answer or after all of it, never in between."""
        backend = self.server.backend
        data = json.dumps(payload).encode()
        real, buffer = self.wfile, io.BytesIO()
        self.wfile = buffer
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Backend-Id", backend.name)
            if retry_after is None and status >= 400 and self.path.split("?", 1)[0] != "/health":
                retry_after = backend.retry_after
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
        finally:
            self.wfile = real
        real.write(buffer.getvalue() + (b"" if self.command == "HEAD" else data))

    def _hang(self) -> None:
        """Never answer: wait until the fault is cleared or the server killed, then close silently."""
        server = self.server
        while server.backend.hang and not server.stopping.wait(0.02):
            pass
        self.close_connection = True

    def _reset(self) -> None:
        """Start an answer (status line, headers and 10 of the 1,000 promised bytes), give the client
        50 ms to read the headers, then reset the connection: the failure hits the body."""
        self.send_response(self.server.backend.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"partial"')
        self.server.stopping.wait(0.05)
        self._abort()

    def _abort(self) -> None:
        """Reset the connection: SO_LINGER 0 makes the close send a TCP RST instead of a FIN."""
        self.close_connection = True
        conn = self.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # lets go of the descriptor, so the close below really closes (and resets)
        conn.close()

    def _stream(self, query: dict[str, list[str]]) -> None:
        chunks = int(query.get("chunks", ["3"])[0])
        delay = float(query.get("delay", ["0"])[0])
        self.send_response(self.server.backend.status)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Backend-Id", self.server.backend.name)
        self.end_headers()
        for index in range(chunks):
            line = f"{self.server.backend.name} {index}\n".encode()
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
            if delay:
                time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")

    def _chat_completion(self, body: bytes) -> None:
        """An OpenAI-compatible chat completion: the answer is ``"<name>: <last message>"``, as one JSON
        object, or with ``"stream": true`` as server-sent events (one chunk a word, then ``[DONE]``)."""
        backend = self.server.backend
        try:
            asked = json.loads(body or b"{}")
            messages = asked.get("messages") or [{}]
            model, stream, last = str(asked.get("model", "")), bool(asked.get("stream")), messages[-1]
            content = f"{backend.name}: {last.get('content', '')}"
        except (ValueError, AttributeError, TypeError, IndexError):
            self._send(400, {"error": {"message": "the body is not a chat completion request", "type": "invalid"}})
            return
        with backend._counts_lock:
            backend._completions += 1
            serial = backend._completions
        head = {"id": f"chatcmpl-{backend.name}-{serial}", "created": 0, "model": model}
        if not stream:
            message = {"role": "assistant", "content": content}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            words = len(content.split())
            usage = {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": words + 1}
            self._send(backend.status, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(backend.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Backend-Id", backend.name)
        self.end_headers()
        pieces = [word + " " for word in content.split(" ")]
        pieces[-1] = pieces[-1][:-1]
        deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant", "content": ""}, None)]
        deltas += [({"content": piece}, None) for piece in pieces] + [({}, "stop")]
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            event = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
            if backend.delay_per_chunk:
                time.sleep(backend.delay_per_chunk)
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _bytes(self, size: int) -> None:
        """``size`` bytes (0, 1, ... 255, 0, 1, ...) with a Content-Length, written in 64 KiB pieces."""
        self.send_response(self.server.backend.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("X-Backend-Id", self.server.backend.name)
        self.end_headers()
        if self.command == "HEAD":
            return
        while size > 0:
            piece = _PATTERN[: min(size, _PIECE)]
            self.wfile.write(piece)
            size -= len(piece)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _answer


class Backend:
    """A real HTTP server on 127.0.0.1 that names itself in every answer.

    Attributes you may change while it runs: ``status`` (the status of normal answers), ``delay``
    (seconds before answering), ``health_status`` (the status of ``/health``), and the faults:
    ``retry_after`` (a ``Retry-After`` value sent with every answer of status 400 or more), ``reset``
    (start each answer, then reset the connection), ``drop`` (reset the connection instead of
    answering), ``hang`` (never answer), ``health_pattern``
    (statuses that ``/health`` answers in turn, cycling; None: ``health_status``) and
    ``delay_per_chunk`` (seconds between the events of a streamed chat completion). ``fail_next()``
    makes a burst of failed answers.
    """

    def __init__(
        self,
        name: str,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        status: int = 200,
        delay: float = 0.0,
        reset: bool = False,
        drop: bool = False,
        hang: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        #: Serve HTTPS with this server-side context (``trustme`` makes one for tests); None: plain HTTP.
        self.ssl_context = ssl_context
        #: TLS handshakes that failed (a client that did not accept the certificate, say).
        self.tls_failures = 0
        self.status = status
        self.delay = delay
        self.health_status = 200
        self.health_pattern: Sequence[int] | None = None
        self.retry_after: str | None = None
        self.reset = reset
        self.drop = drop
        self.hang = hang
        #: Seconds between the events of a streamed chat completion.
        self.delay_per_chunk = 0.0
        self._completions = 0
        self._burst: list[tuple[int, str | None]] = []
        self._health_answers = 0
        self._counts: Counter[tuple[str, str]] = Counter()
        self._ids: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._waiting = 0
        #: The most requests that were waiting out ``delay`` at the same time (since the start or
        #: :meth:`reset_counts`): the server's own measure of concurrency. Each request leaves the count
        #: before its answer is written, so it never exceeds the requests a client still has in flight.
        self.peak_concurrency = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"Backend serves loopback addresses only, got {address!r}")
        #: Any address of 127.0.0.0/8 works on Linux, so several backends can share a port (as DNS names
        #: with several A records and one port need).
        self.address = address
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        """The backend's base URL, ``http://127.0.0.1:PORT`` (``https://`` with an ``ssl_context``; the port
        stays the same across restarts)."""
        return f"{'http' if self.ssl_context is None else 'https'}://{self.address}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`kill`."""
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        self._server = _Server(self, self.address, self.port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name=f"backend-{self.name}", daemon=True
        )
        self._thread.start()

    def kill(self) -> None:
        """Stop listening and reset every open connection, like a crashed process."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            # Linger 0 turns the close into a reset; shutdown wakes the handler blocked on the socket
            # (close alone would wait for the handler's file objects to let go of the descriptor).
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
        thread.join(timeout=5)

    def fail_next(self, count: int, status: int = 503, *, retry_after: float | str | None = None) -> None:
        """Answer the next ``count`` requests (``/health`` aside) with ``status``, then normally again;
        ``retry_after`` (seconds or an HTTP date) is sent as a ``Retry-After`` header with them."""
        header = None if retry_after is None else str(retry_after)
        with self._counts_lock:
            self._burst.extend([(status, header)] * count)

    def _take_burst(self) -> tuple[int, str | None] | None:
        with self._counts_lock:
            return self._burst.pop(0) if self._burst else None

    def _health_answer(self) -> int:
        with self._counts_lock:
            pattern = self.health_pattern
            if not pattern:
                return self.health_status
            status = pattern[self._health_answers % len(pattern)]
            self._health_answers += 1
            return status

    def _arrived(self, method: str, path: str, request_id: str | None = None) -> None:
        with self._counts_lock:
            self._counts[(method, path)] += 1
            if request_id is not None:
                self._ids[request_id] += 1

    def ids(self) -> Counter[str]:
        """How many times each ``X-Request-Id`` arrived (a copy; requests without the header are not in it)."""
        with self._counts_lock:
            return Counter(self._ids)

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open now (0 when killed)."""
        server = self._server
        if server is None:
            return 0
        with server.connections_lock:
            return len(server.connections)

    def _delayed(self, change: int) -> None:
        with self._counts_lock:
            self._waiting += change
            self.peak_concurrency = max(self.peak_concurrency, self._waiting)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests that arrived, optionally only those with this method and/or path."""
        with self._counts_lock:
            return sum(
                n
                for (m, p), n in self._counts.items()
                if (method is None or m == method) and (path is None or p == path)
            )

    def reset_counts(self) -> None:
        """Forget the requests counted so far (see :meth:`count`) and the peak concurrency."""
        with self._counts_lock:
            self._counts.clear()
            self._ids.clear()
            self.peak_concurrency = self._waiting

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.url}{'' if self.running else ' killed'}>"


class FakeClock:
    """A clock for a :class:`~lbclient.Pool` (or a retry budget) under test: ``clock()`` reads ``now``,
    which moves only when the test moves it, so ejections, slow start and latency averages replay
    exactly::

        clock = FakeClock(100.0)
        pool = Pool(hosts, "peak_ewma", clock=clock, rng=random.Random(0))
        clock.advance(30.0)  # an ejection of 30 s has run out
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


# -- clients for tests that mock HTTP ------------------------------------------------------------------------

#: The hosts of :func:`mock_client`'s pool when none are given: ``.invalid`` names never resolve.
MOCK_HOSTS = ("http://a.invalid", "http://b.invalid", "http://c.invalid")


class _AsService(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Hands every request that the balancer pointed at one of the pool's hosts to ``transport`` with its
    origin put back to ``http://<service>`` (and its ``Host`` header, unless the caller set one), so that
    mocks see the URL the caller wrote; other requests pass unchanged. The picked host stays in the
    response's ``extensions["lb_host"]``."""

    def __init__(self, transport: httpx.BaseTransport | httpx.AsyncBaseTransport) -> None:
        self._transport = transport
        self._service = ""
        self._pool: Pool | None = None

    def attach(self, service: str, pool: Pool) -> None:
        self._service, self._pool = service, pool

    def _view(self, request: httpx.Request) -> httpx.Request:
        url, pool = request.url, self._pool
        origin = (url.scheme, url.host, url.port)
        if pool is None or all(
            (host.scheme, host.host, host.port) != origin for host in (httpx.URL(h.url) for h in pool.hosts)
        ):
            return request
        headers = request.headers.copy()
        if headers.get("host") == url.netloc.decode("ascii"):
            headers["Host"] = self._service
        return httpx.Request(
            request.method,
            url.copy_with(scheme="http", host=self._service, port=None),
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transport
        if not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"mock_client needs a sync transport, got {transport!r}: use mock_async_client")
        return transport.handle_request(self._view(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transport
        if not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"mock_async_client needs an async transport, got {transport!r}: use mock_client")
        return await transport.handle_async_request(self._view(request))

    def close(self) -> None:
        if isinstance(self._transport, httpx.BaseTransport):
            self._transport.close()

    async def aclose(self) -> None:
        if isinstance(self._transport, httpx.AsyncBaseTransport):
            await self._transport.aclose()


def mock_client(
    transport: httpx.BaseTransport | None = None,
    *,
    hosts: Iterable[HostLike] = MOCK_HOSTS,
    service: str | None = None,
    retries: int | RetryPolicy | None = 1,
    outlier_detection: OutlierDetection | bool | None = False,
    health_check: HealthCheck | bool | None = None,
    **kwargs: Any,
) -> LBClient:
    """An :class:`~lbclient.LBClient` for tests that mock HTTP: routes on ``http://<service>/...`` match.

    The balancer still picks a host for every request (``response.extensions["lb_host"]`` names it), but
    the request reaches ``transport`` with the URL the caller wrote, ``http://<service>/path``, not the
    host's. Without ``transport`` it goes to a plain ``httpx.HTTPTransport``, which ``respx.mock`` and
    pytest-httpx's ``httpx_mock`` intercept; or pass ``httpx.MockTransport(handler)`` or
    ``respx.MockTransport(router=...)``. So that a mock meets exactly the requests the test makes, the
    defaults differ from :class:`~lbclient.LBClient`'s: one attempt (``retries=1``), no outlier detection
    and no health checks; pass them to test your code's handling of retries. Every other keyword is
    :class:`~lbclient.LBClient`'s (``base_url``, ``strategy``, ``timeout``, ...)::

        with respx.mock:
            respx.get("http://users/api/me").respond(json={"name": "alice"})
            with mock_client(service="users") as client:
                assert client.get("/api/me").json() == {"name": "alice"}
    """
    from ._client import LBClient

    shim = _AsService(transport if transport is not None else httpx.HTTPTransport())
    client = LBClient(
        hosts,
        service=service,
        retries=retries,
        outlier_detection=outlier_detection,
        health_check=health_check,
        transport=shim,
        **kwargs,
    )
    shim.attach(client.service, client.pool)
    return client


def mock_async_client(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    hosts: Iterable[HostLike] = MOCK_HOSTS,
    service: str | None = None,
    retries: int | RetryPolicy | None = 1,
    outlier_detection: OutlierDetection | bool | None = False,
    health_check: HealthCheck | bool | None = None,
    **kwargs: Any,
) -> AsyncLBClient:
    """The :class:`~lbclient.AsyncLBClient` twin of :func:`mock_client` (a plain
    ``httpx.AsyncHTTPTransport`` without ``transport``)."""
    from ._client import AsyncLBClient

    shim = _AsService(transport if transport is not None else httpx.AsyncHTTPTransport())
    client = AsyncLBClient(
        hosts,
        service=service,
        retries=retries,
        outlier_detection=outlier_detection,
        health_check=health_check,
        transport=shim,
        **kwargs,
    )
    shim.attach(client.service, client.pool)
    return client
