"""Real HTTP backends on loopback for tests, examples and the demo (standard library only).

``Backend`` is an HTTP/1.1 server in a background thread on ``127.0.0.1`` that answers every path with
JSON naming itself, counts what arrived, and can be slowed, made to fail, killed and restarted::

    with Backend("a") as a, Backend("b") as b:
        client = LBClient([a.url, b.url])
        client.get("/x").json()  # {"id": "a", "method": "GET", "path": "/x", ...}
        a.kill()                 # connections refused, open connections reset

Special paths: ``/health`` (200, or ``health_status``), ``/stream?chunks=N&delay=S`` (a chunked
body of N lines), ``/redirect?to=PATH`` (302) and ``/set-cookie?name=N&value=V``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Backend"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, backend: Backend, port: int) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests and the demo print their own summaries."""

    def _answer(self) -> None:
        backend = self.server.backend
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        backend._arrived(self.command, url.path)
        if url.path == "/health":
            self._send(backend.health_status, {"id": backend.name, "healthy": backend.health_status < 400})
            return
        if backend.delay:
            time.sleep(backend.delay)
        if url.path == "/stream":
            self._stream(parse_qs(url.query))
            return
        if url.path == "/set-cookie":
            query = parse_qs(url.query)
            self.send_response(200)
            self.send_header("Set-Cookie", f"{query['name'][0]}={query['value'][0]}; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(url.query).get("to", ["/"])[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend-Id", self.server.backend.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

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

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _answer


class Backend:
    """A real HTTP server on 127.0.0.1 that names itself in every answer.

    Attributes you may change while it runs: ``status`` (the status of normal answers), ``delay``
    (seconds before answering), ``health_status`` (the status of ``/health``).
    """

    def __init__(self, name: str, *, port: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.name = name
        self.status = status
        self.delay = delay
        self.health_status = 200
        self._counts: Counter[tuple[str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        self._server = _Server(self, self.port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend-{self.name}", daemon=True
        )
        self._thread.start()

    def kill(self) -> None:
        """Stop listening and reset every open connection, like a crashed process."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
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

    def _arrived(self, method: str, path: str) -> None:
        with self._counts_lock:
            self._counts[(method, path)] += 1

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests that arrived, optionally only those with this method and/or path."""
        with self._counts_lock:
            return sum(
                n
                for (m, p), n in self._counts.items()
                if (method is None or m == method) and (path is None or p == path)
            )

    def reset_counts(self) -> None:
        with self._counts_lock:
            self._counts.clear()

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.url}{'' if self.running else ' killed'}>"
