"""A reverse proxy: an ASGI app that forwards every request to an :class:`AsyncLBClient`'s pool.

::

    from lbclient.proxy import make_app

    app = make_app(["10.0.0.1:8000", "10.0.0.2:8000"], strategy="peak_ewma", health_check=True)
    # uvicorn module:app --server-header false --date-header false, or: lbclient proxy --hosts ...

The app forwards the method, path and query, headers and body; the balancer picks the host, retries and
ejects as it does for any pool request.

- Buffering, as nginx's ``proxy_request_buffering`` and ``proxy_buffering`` (both on by default there):
  up to ``request_buffer`` bytes (256 KiB) of a request body are read before a host is picked, so a
  stalled upload holds no upstream connection, and a body that fits is sent from memory (retryable).
  A longer one streams upstream as it arrives (never sent twice; a failed connect before any of it was
  sent is still retried). An answer of known length up to ``response_buffer`` (256 KiB) is read whole
  and the upstream connection let go before it is sent on, so a caller that never reads holds none;
  longer or chunked answers stream (memory stays flat whatever their size: ``aiter_raw``, so a
  compressed body stays compressed). Unless ``limits=`` is given, :func:`make_app` lets each host
  have as many connections as the proxy has callers: a caller holding one cannot starve the others.
- Caller-side limits (nginx's names and 60 s defaults): ``header_timeout`` for the request line and
  headers (then 408, or a silent close if nothing came), ``body_timeout`` for each piece of the body
  (then 408), ``send_timeout`` for a caller to take some of its answer (then the connection is
  aborted), and ``max_connections`` callers' connections at most (default: half of what
  ``RLIMIT_NOFILE`` leaves after ``FD_RESERVE``, since each may hold an upstream one). At the cap the
  connection idle longest is closed to make room (as Envoy's overload manager cuts idle timeouts near
  its limit); with none idle, a new caller gets a 503 at once. The body timeout is the app's; the
  others are enforced by the uvicorn protocol that :func:`serve` installs
  (:mod:`lbclient._proxy_server`), which also keeps asyncio from accepting connections past the cap.
  ``proxy.callers`` (:class:`CallerStats`) counts what they did.
- Forwarded headers are believed only from ``trusted_proxies`` (addresses or CIDRs; default none, as
  uvicorn's ``forwarded_allow_ips``). The real client is the first untrusted address, reading the
  trusted peer's ``X-Forwarded-For`` from the right. Upstream, ``X-Forwarded-For`` starts at the real
  client and ends with the peer; ``X-Real-IP`` is the real client; ``Forwarded`` (RFC 7239) gets this
  hop's ``for=...;host=...;proto=...``; ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are the proxy's
  own. From a trusted peer, its ``X-Real-IP``, ``Forwarded`` and ``X-Forwarded-Proto/Host`` are kept
  (``Forwarded`` appended to); from anyone else they are dropped. ``ip_hash`` keys on the real client
  (``extensions={"lb_key": ...}``), so forged headers cannot steer it.
- Malformed requests get a 400 and a line on the ``lbclient.proxy`` logger, never a 500 or a
  traceback: both Content-Length and Transfer-Encoding, a ``#`` in the target, control characters in a
  header value, a ``%`` not followed by two hex digits or ``%00``, a method that is not an upper-case
  token (httpx would upper-case it), a Host that is not a host (h11 rejects the rest).
- Hop-by-hop headers are dropped both ways (RFC 9110 7.6.1): ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, and ``Expect``
  (the ASGI server has already answered ``100-continue``). The ``Host`` header upstream names the picked
  host, as the balancer sets it.
- Only what the caller sent goes upstream: the client's default headers (``User-Agent``,
  ``Accept-Encoding``, ...) and cookies are not added, and redirects are passed back, not followed.
  The client's ``auth`` and ``timeout`` apply.
- No upstream answer: ``502 Bad Gateway`` (connect or transport error, :class:`NoAvailableHostError`)
  or ``504 Gateway Timeout`` (timeout); the details go to the ``lbclient.proxy`` logger, not to the
  caller. A failure after the answer began aborts the connection, so the caller sees a cut body rather
  than a complete-looking short one.
- ``GET /health`` (``health_path=``; ``None`` forwards that path too) is the proxy's own: 200 while the
  pool has a host available (healthy, not ejected, weight > 0), else 503, with ``{"status": ...}``.
  Callers whose real address is loopback or a trusted proxy also get each host's state and
  ``callers``; others do not, since host URLs map the network behind the proxy for whoever asks
  (a load balancer's probe needs the status code only).
- Lifespan: the client is opened at startup (which starts its health checks and discovery) and closed at
  shutdown. ``async with proxy:`` does the same for servers or frameworks that run their own lifespan.

The app runs on any ASGI server, on asyncio or trio (it uses anyio); there, only ``body_timeout`` of
the caller-side limits applies, and the server's own limits stand in for the others. Run uvicorn with
``server_header=False, date_header=False``: the upstream's ``Server`` and ``Date`` headers pass through.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from ._cli_get import LOG_LEVELS, byte_count, positive_float, positive_int, strategy_option
from ._client import AsyncLBClient
from ._core import HealthCheck, HostLike, RetryPolicy
from ._discovery import Discovery
from ._exceptions import NoAvailableHostError

__all__ = [
    "HOP_BY_HOP_HEADERS",
    "CallerStats",
    "LBProxy",
    "default_max_connections",
    "make_app",
    "serve",
    "strip_hop_by_hop",
]

logger = logging.getLogger("lbclient.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Headers that describe one connection, not the message, and never cross a proxy (RFC 9110 7.6.1, plus
#: the obsolete Keep-Alive and Proxy-Connection); ``Connection`` may name more, and every ``Proxy-*`` goes.
HOP_BY_HOP_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: Dropped on the way upstream only: the ASGI server has already answered ``Expect: 100-continue``, and
#: the proxy sets its own ``Host`` (the picked host's) and ``X-Forwarded-*``.
_REQUEST_ONLY = frozenset({b"expect", b"host", b"content-length"})

#: Seconds the proxy waits for a caller: for its request line and headers, for each piece of its body,
#: for it to take some of its answer (nginx's client_header_timeout, client_body_timeout, send_timeout).
TIMEOUT = 60.0
#: Bytes of a request body read before a host is picked, and the largest answer (of known length) read
#: whole before it is sent on (nginx buffers both by default, into files beyond its memory buffers).
BUFFER = 256 * 1024
#: File descriptors kept out of the default ``max_connections``: the process's own, the listening
#: socket, health checks, and connections accepted or closed within one event-loop turn.
FD_RESERVE = 256


def strip_hop_by_hop(
    headers: Iterable[tuple[bytes, bytes]], *, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """``headers`` (names in any case) without the hop-by-hop ones, those that ``Connection`` names, and
    the names in ``drop`` (lower case); names come out in lower case, as ASGI wants them."""
    items = [(name.lower(), value) for name, value in headers]
    named = {token.strip().lower() for name, value in items if name == b"connection" for token in value.split(b",")}
    return [
        (name, value)
        for name, value in items
        if name not in HOP_BY_HOP_HEADERS and name not in named and name not in drop and not name.startswith(b"proxy-")
    ]


class _CallerFailed(Exception):
    """The caller, not the host, ended the request: it went away, or its body stopped coming."""


class _ClientDisconnected(_CallerFailed):
    """The caller went away while its request body was being read."""


class _BodyTimedOut(_CallerFailed):
    """No piece of the caller's request body came within ``body_timeout``."""


class _RequestBody:
    """The caller's request body, read from ASGI ``receive``: first up to ``buffer`` bytes into memory
    (before a host is picked), then, if there is more, streamed as httpx asks for it. Every read waits at
    most ``timeout`` seconds."""

    def __init__(self, receive: Receive, timeout: float) -> None:
        self._receive = receive
        self._timeout = timeout
        self.buffered: list[bytes] = []
        self.size = 0
        #: True once the last body message was received: ``receive`` is then free to watch for a disconnect.
        self.done = False

    async def _next(self) -> bytes:
        with anyio.move_on_after(self._timeout) as scope:
            message = await self._receive()
        if scope.cancelled_caught:
            raise _BodyTimedOut
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        self.done = not message.get("more_body", False)
        chunk: bytes = message.get("body", b"")
        return chunk

    async def fill(self, limit: int) -> None:
        """Read until the body ends or more than ``limit`` bytes are held."""
        while not self.done and self.size <= limit:
            chunk = await self._next()
            if chunk:
                self.buffered.append(chunk)
                self.size += len(chunk)

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.buffered:
            yield chunk
        self.buffered = []
        while not self.done:
            chunk = await self._next()
            if chunk:
                yield chunk


def _cookieless_jar() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: a proxy's client must not collect its callers' cookies. (A jar,
    not ``httpx.Cookies``: the client would copy the latter into a jar of its own that keeps them.)"""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


@dataclass
class CallerStats:
    """What happened to callers' connections and requests, counted by the proxy (``proxy.callers``).

    ``open`` and ``waiting_to_send`` are connections now; the others count since start. The connection
    counts (all but ``body_timeouts`` and the app's ``bad_requests``) are kept by the
    uvicorn protocol that :func:`serve` installs; on another ASGI server they stay 0."""

    open: int = 0
    #: Connections whose answer now waits for the caller to read (the write buffer over its high mark).
    waiting_to_send: int = 0
    accepted: int = 0
    #: Idle connections closed to make room for a new caller at ``max_connections``.
    evicted: int = 0
    #: Connections answered 503 at once: ``max_connections`` busy, none idle to close.
    shed: int = 0
    #: Connections closed because the request line and headers did not arrive within ``header_timeout``.
    header_timeouts: int = 0
    #: Requests answered 408 (or cut) because a piece of their body did not come within ``body_timeout``.
    body_timeouts: int = 0
    #: Connections aborted because the caller read nothing of its answer for ``send_timeout``.
    send_timeouts: int = 0
    #: Requests answered 400 (malformed), by the proxy or by the HTTP parser.
    bad_requests: int = 0


class LBProxy:
    """An ASGI app that forwards every request to ``client``'s pool (see the module docstring).

    ``client`` should be unopened: the proxy opens it at ASGI lifespan startup (or ``async with proxy:``)
    and closes it at shutdown. ``health_path`` is the proxy's own health endpoint (``None``: none).
    The caller-side limits (``header_timeout``, ``body_timeout``, ``send_timeout``, ``max_connections``,
    ``request_buffer``, ``response_buffer``) and ``trusted_proxies`` are described in the module
    docstring; ``header_timeout``, ``send_timeout`` and ``max_connections`` are enforced by the server
    that :func:`serve` runs.
    """

    def __init__(
        self,
        client: AsyncLBClient,
        *,
        health_path: str | None = "/health",
        trusted_proxies: Iterable[str] = (),
        header_timeout: float = TIMEOUT,
        body_timeout: float = TIMEOUT,
        send_timeout: float = TIMEOUT,
        max_connections: int | None = None,
        request_buffer: int = BUFFER,
        response_buffer: int = BUFFER,
    ) -> None:
        if not isinstance(client, AsyncLBClient):
            raise ValueError(f"client must be an AsyncLBClient, got {client!r}")
        if health_path is not None and not health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {health_path!r}")
        self.client = client
        self.health_path = health_path
        self.trusted_proxies = _networks(trusted_proxies)
        self.header_timeout = _seconds("header_timeout", header_timeout)
        self.body_timeout = _seconds("body_timeout", body_timeout)
        self.send_timeout = _seconds("send_timeout", send_timeout)
        if max_connections is None:
            max_connections = default_max_connections()
        self.max_connections = _count("max_connections", max_connections, 1)
        self.request_buffer = _count("request_buffer", request_buffer, 0)
        self.response_buffer = _count("response_buffer", response_buffer, 0)
        self.callers = CallerStats()
        base = client.base_url
        self._base = base
        self._prefix = base.raw_path.rstrip(b"/")

    # -- ASGI ------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})  # before accept: the server answers 403
        else:
            raise RuntimeError(f"LBProxy does not handle ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.__aenter__()
        except Exception as exc:
            logger.exception("proxy: could not open the client")
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        try:
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
        finally:
            await self.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})

    async def __aenter__(self) -> LBProxy:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    # -- one request -----------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _request_path(scope)
        problem = "the target is not an absolute path" if path is None else _malformed(scope, path)
        if problem is not None:
            await self._bad_request(scope, send, problem)
            return
        assert path is not None
        forwarding = self._forwarding(scope)
        if self.health_path is not None and path == self.health_path.encode():
            await self._health(scope["method"], send, detail=self._may_see_hosts(forwarding.client))
            return
        query: bytes = scope.get("query_string", b"")
        body = _RequestBody(receive, self.body_timeout)
        try:
            await body.fill(self.request_buffer)  # a stalled upload holds no upstream connection
        except _ClientDisconnected:
            return
        except _BodyTimedOut:
            await self._body_timed_out(scope, send)
            return
        headers = forwarding.headers
        content = _content(scope, body, headers)
        try:
            request = httpx.Request(
                scope["method"],
                self._base.copy_with(raw_path=self._prefix + path + (b"?" + query if query else b"")),
                headers=headers,
                content=content,
                extensions={"lb_key": forwarding.client} if forwarding.client else None,
            )
        except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
            await self._bad_request(scope, send, f"httpx refused it: {exc}")
            return
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
        except _ClientDisconnected:
            return
        except _BodyTimedOut:
            await self._body_timed_out(scope, send)
            return
        except httpx.TimeoutException as exc:
            _log_failure(request, exc)
            await _plain(send, 504, "504 Gateway Timeout\n")
            return
        except httpx.RequestError as exc:
            _log_failure(request, exc)
            await _plain(send, 502, "502 Bad Gateway\n")
            return
        try:
            await self._relay(response, body, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _bad_request(self, scope: Scope, send: Send, problem: str) -> None:
        self.callers.bad_requests += 1
        logger.info("proxy: 400 for %s: %s", _peer(scope), problem)
        await _plain(send, 400, f"400 Bad Request: {problem}\n", [_CLOSE])

    async def _body_timed_out(self, scope: Scope, send: Send) -> None:
        self.callers.body_timeouts += 1
        logger.info("proxy: 408 for %s: no request body for %ss", _peer(scope), self.body_timeout)
        await _plain(send, 408, "408 Request Timeout\n", [_CLOSE])

    def _trusts(self, address: _Address) -> bool:
        return any(address.version == network.version and address in network for network in self.trusted_proxies)

    def _walk(self, values: list[bytes], peer: _Address | None) -> tuple[list[str], _Address | None]:
        """A trusted peer's ``X-Forwarded-For`` read from the right (the nearest hop first) over trusted
        addresses to the first untrusted one, the real client: the hops from it on, and its address.
        An entry that is not an address ends the walk: nothing to its left can be checked."""
        hops = [hop.strip() for value in values for hop in value.decode("latin-1").split(",")]
        hops = [hop for hop in hops if hop]
        start, client = len(hops), peer
        for index in range(len(hops) - 1, -1, -1):
            address = _parse_address(hops[index])
            if address is None:
                break
            start, client = index, address
            if not self._trusts(address):
                break
        return hops[start:], client

    def _may_see_hosts(self, client: str | None) -> bool:
        """Whether ``/health`` shows this caller the hosts: yes to loopback and trusted-proxy addresses."""
        address = _parse_address(client) if client else None
        return address is not None and (address.is_loopback or self._trusts(address))

    def _forwarding(self, scope: Scope) -> _Forwarding:
        """The headers to send upstream and the caller's real address (the first untrusted one).

        The caller's ``X-Forwarded-*``, ``X-Real-IP`` and ``Forwarded`` count only when it is a trusted
        proxy; then its ``X-Forwarded-For`` is read from the right, over trusted addresses, to the first
        untrusted one: the real client, where the header sent upstream starts."""
        incoming: list[tuple[bytes, bytes]] = [(bytes(name), bytes(value)) for name, value in scope["headers"]]
        headers = strip_hop_by_hop(incoming, drop=_REQUEST_ONLY)
        claims: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name in _FORWARDED:
                claims.setdefault(name, []).append(value)
        headers = [(name, value) for name, value in headers if name not in _FORWARDED]
        client_info = scope.get("client")
        peer_text = str(client_info[0]) if client_info else None
        peer = _parse_address(peer_text) if peer_text else None
        trusted = peer is not None and self._trusts(peer)
        if not trusted:
            claims = {}
        chain, client = self._walk(claims.get(b"x-forwarded-for", []), peer)
        if peer_text is not None:
            chain.append(str(peer) if peer is not None else peer_text)
        if chain:
            headers.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
        real = str(client) if client is not None else None
        if b"x-real-ip" in claims:
            headers.extend((b"x-real-ip", value) for value in claims[b"x-real-ip"])
        elif real is not None:
            headers.append((b"x-real-ip", real.encode("ascii")))
        proto = str(scope.get("scheme", "http"))
        host = next((value for name, value in incoming if name.lower() == b"host"), None)
        if host is None and scope.get("server"):
            server_host, server_port = scope["server"]
            host = f"{server_host}:{server_port}".encode("ascii") if server_port else str(server_host).encode()
        forwarded = [*claims.get(b"forwarded", []), _forwarded_element(peer, peer_text, host, proto)]
        headers.append((b"forwarded", b", ".join(forwarded)))
        headers.extend((b"x-forwarded-proto", value) for value in claims.get(b"x-forwarded-proto", [proto.encode()]))
        if b"x-forwarded-host" in claims:
            headers.extend((b"x-forwarded-host", value) for value in claims[b"x-forwarded-host"])
        elif host is not None:
            headers.append((b"x-forwarded-host", host))
        return _Forwarding(headers, real)

    async def _relay(self, response: httpx.Response, body: _RequestBody, receive: Receive, send: Send) -> None:
        """Send the upstream answer to the caller; stop (and let the upstream go) if the caller leaves.
        An answer of known length up to ``response_buffer`` is read whole first, and the upstream
        connection let go, so a caller that reads slowly or never holds no upstream connection."""
        start = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": strip_hop_by_hop(response.headers.raw),
        }
        failure: httpx.HTTPError | None = None
        started = False
        async with anyio.create_task_group() as group:
            if body.done:  # receive() is free: it returns http.disconnect when the caller goes away
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            try:
                if self._buffers(response):
                    data = b"".join([chunk async for chunk in response.aiter_raw()])
                    await response.aclose()  # the upstream connection goes back to the pool now
                    started = True
                    await send(start)
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                else:
                    started = True
                    await send(start)
                    async for chunk in response.aiter_raw():
                        if chunk:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except httpx.HTTPError as exc:
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            _log_failure(response.request, failure, "while relaying the response body")
            if not started:  # the answer was being read whole: nothing went to the caller yet
                await _plain(send, 502, "502 Bad Gateway\n")
                return
            # Raised to the ASGI server, which aborts the connection: a cut body must not look complete.
            raise failure

    def _buffers(self, response: httpx.Response) -> bool:
        if response.request.method == "HEAD" or response.status_code in (204, 304):
            return True
        length = response.headers.get("content-length")
        return length is not None and length.isdigit() and int(length) <= self.response_buffer

    async def _health(self, method: str, send: Send, *, detail: bool) -> None:
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, "405 Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
            return
        stats = self.client.pool.stats()  # one consistent snapshot
        available = stats.available
        payload: dict[str, Any] = {"status": "ok" if available else "unavailable"}
        if detail:
            payload["available"] = available
            payload["panic"] = stats.panic
            payload["hosts"] = [
                {
                    "url": host.url,
                    "available": host.available,
                    "healthy": host.healthy,
                    "ejected": host.ejected,
                    "weight": host.weight,
                    "outstanding": host.outstanding,
                }
                for host in stats.hosts
            ]
            payload["callers"] = asdict(self.callers)
        data = json.dumps(payload).encode()
        status = 200 if available else 503
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CLOSE = (b"connection", b"close")
#: What a caller says about where its request came from: believed only from a trusted proxy.
_FORWARDED = frozenset({b"x-forwarded-for", b"x-real-ip", b"forwarded", b"x-forwarded-proto", b"x-forwarded-host"})


@dataclass
class _Forwarding:
    headers: list[tuple[bytes, bytes]]
    #: The real client's address: the first untrusted one (None on a socket without a peer address).
    client: str | None


def _parse_address(text: str) -> _Address | None:
    """An address as found in ``X-Forwarded-For`` or ASGI's ``client``: ``1.2.3.4``, ``1.2.3.4:80``,
    ``::1``, ``[::1]:80``; IPv4-mapped IPv6 addresses come out as IPv4. None: not an address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_element(peer: _Address | None, peer_text: str | None, host: bytes | None, proto: str) -> bytes:
    """This hop's element of ``Forwarded`` (RFC 7239): ``for=1.2.3.4;host="proxy:8080";proto=http``."""
    if peer is not None:
        node = f'"[{peer}]"' if peer.version == 6 else str(peer)
    else:
        node = f'"{peer_text}"' if peer_text else "unknown"
    parts = [f"for={node}"]
    if host is not None:
        parts.append(f'host="{host.decode("latin-1")}"')
    parts.append(f"proto={proto}")
    return ";".join(parts).encode("latin-1")


def _networks(values: Iterable[str]) -> tuple[_Network, ...]:
    if isinstance(values, str):
        values = [values]
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {value!r} is not an IP address or network (CIDR)") from None
    return tuple(networks)


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def default_max_connections() -> int:
    """The default cap on callers' connections: half of ``RLIMIT_NOFILE`` (soft) after a reserve of
    ``FD_RESERVE``, since each caller's connection may hold an upstream one; at least 16."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 1000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(16, (soft - FD_RESERVE) // 2)


_HOST = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%:\[\]]*")
_METHOD_TOKEN = re.compile(rb"[A-Z0-9!#$%&'*+\-.^_`|~]+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Control characters, which RFC 9110 5.5 keeps out of field values (HTAB aside).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _malformed(scope: Scope, path: bytes) -> str | None:
    """Why the request is not one to forward (None: it is). h11 has checked the syntax; these are the
    things it lets through that a proxy must not pass on or cannot frame."""
    query: bytes = scope.get("query_string", b"")
    if b"#" in path or b"#" in query:
        return "a '#' in the request target"
    if _BAD_ESCAPE.search(path) or _BAD_ESCAPE.search(query):
        return "a '%' that is not followed by two hex digits"
    if b"%00" in path:
        return "a NUL (%00) in the path"
    if not _METHOD_TOKEN.fullmatch(str(scope["method"]).encode("latin-1")):
        return "a method that is not an upper-case token"
    names = set()
    for raw_name, raw_value in scope["headers"]:
        name, value = bytes(raw_name).lower(), bytes(raw_value)
        names.add(name)
        if _CONTROL.search(value):
            return f"a control character in the {name.decode('latin-1')} header"
        if name == b"host" and not _HOST.fullmatch(value):
            return "a Host header that is not a host name"
    if b"content-length" in names and b"transfer-encoding" in names:
        return "both Content-Length and Transfer-Encoding"
    return None


def _content(
    scope: Scope, body: _RequestBody, headers: list[tuple[bytes, bytes]]
) -> bytes | AsyncIterator[bytes] | None:
    """What to send upstream: the whole body from memory (replayable), or a stream of it once it is
    longer than the buffer (then with the caller's Content-Length, if it gave one, in ``headers``)."""
    if not body.done:
        length = _content_length(scope)
        if length is not None:  # sent as the caller framed it, not re-chunked
            headers.append((b"content-length", str(length).encode("ascii")))
        return body.stream()
    if body.size or _has_body(scope):
        return b"".join(body.buffered)
    return None


def _content_length(scope: Scope) -> int | None:
    """The request's Content-Length (h11 has checked that every value given is the same number)."""
    for name, value in scope["headers"]:
        if bytes(name).lower() == b"content-length":
            return int(bytes(value).split(b",")[0])
    return None


def _has_body(scope: Scope) -> bool:
    """Did the caller frame a body (even an empty one)? Then an empty one is sent upstream too."""
    return any(bytes(name).lower() in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a caller"


def _request_path(scope: Scope) -> bytes | None:
    """The request's path as sent (percent-encoded, below the app's ``root_path``), or None when it is not
    an absolute path (``OPTIONS *``)."""
    raw: bytes | None = scope.get("raw_path")
    root: str = scope.get("root_path", "")
    if raw is None or root:
        path: str = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        raw = quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii")
    return raw if raw.startswith(b"/") else None


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


def _log_failure(request: httpx.Request, exc: Exception, when: str = "") -> None:
    kind = "no host available" if isinstance(exc, NoAvailableHostError) else type(exc).__name__
    notes = "; ".join(getattr(exc, "__notes__", ()))
    logger.warning(
        "proxy: %s %s failed%s: %s: %s%s",
        request.method,
        request.url.raw_path.decode("ascii", "replace"),
        f" {when}" if when else "",
        kind,
        exc,
        f" ({notes})" if notes else "",
    )


def make_app(
    hosts: Iterable[HostLike] | Discovery,
    *,
    health_path: str | None = "/health",
    trusted_proxies: Iterable[str] = (),
    header_timeout: float = TIMEOUT,
    body_timeout: float = TIMEOUT,
    send_timeout: float = TIMEOUT,
    max_connections: int | None = None,
    request_buffer: int = BUFFER,
    response_buffer: int = BUFFER,
    **client_options: Any,
) -> LBProxy:
    """An :class:`LBProxy` over a new :class:`AsyncLBClient` built from ``hosts`` and ``client_options``
    (strategy, retries, health_check, timeout, limits, ...: any keyword of the client); the other
    keywords are :class:`LBProxy`'s. Its cookie jar keeps nothing, since a proxy's client must not gather
    its callers' cookies. Unless ``limits`` is given, each host may have as many connections as the proxy
    has callers (``max_connections``), so callers that hold theirs cannot starve the others."""
    cap = default_max_connections() if max_connections is None else max_connections
    client_options.setdefault("cookies", _cookieless_jar())
    if isinstance(cap, int) and cap >= 1:
        client_options.setdefault("limits", httpx.Limits(max_connections=cap, max_keepalive_connections=20))
    return LBProxy(
        AsyncLBClient(hosts, **client_options),
        health_path=health_path,
        trusted_proxies=trusted_proxies,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        send_timeout=send_timeout,
        max_connections=cap,
        request_buffer=request_buffer,
        response_buffer=response_buffer,
    )


# -- serving: ``lbclient proxy`` ---------------------------------------------------------------------------

#: Seconds an idle caller's connection stays open: uvicorn's default. A caller that keeps connections
#: longer (httpx keeps them 5 s too; nginx 75 s) may reuse one the proxy is closing: set it above theirs.
KEEP_ALIVE = 5

#: The message for a missing uvicorn: the ASGI app itself does not need it, serving does.
_NO_UVICORN = "lbclient proxy needs uvicorn to serve: pip install 'lbclient[proxy]'"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0 picks a free one) as (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {text!r}")
    return host, int(port)


def serve(
    app: LBProxy,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    log_level: str = "info",
    keep_alive: int = KEEP_ALIVE,
) -> int:
    """Serve ``app`` with uvicorn until interrupted (SIGINT, SIGTERM); 0 after a clean shutdown.
    ``keep_alive`` is how long an idle caller's connection is kept open, in whole seconds. The caller-side
    limits are ``app``'s (``header_timeout``, ``send_timeout``, ``max_connections``, ...), enforced by
    uvicorn's h11 protocol with the additions of :mod:`lbclient._proxy_server`.

    The socket is bound first and its address printed to stdout (``lbclient proxy: listening on
    http://HOST:PORT``), so ``port=0`` is usable by scripts. Raises ``ImportError`` naming the
    ``proxy`` extra when uvicorn is missing."""
    try:
        from ._proxy_server import server_for
    except ImportError as exc:
        raise ImportError(_NO_UVICORN) from exc
    server = server_for(app, log_level=log_level, keep_alive=keep_alive)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    hosts = ", ".join(h.url for h in app.client.pool.hosts)
    print(f"lbclient proxy: listening on http://{shown}:{bound_port} -> {hosts}", flush=True)
    server.run(sockets=[sock])
    return 0 if server.started else 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lbclient proxy``."""
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default: %(default)s")
    parser.add_argument("--hosts", nargs="+", required=True, metavar="URL", help="the upstream hosts")
    strategy_option(parser, "round_robin")
    parser.add_argument("--retries", type=int, default=3, metavar="N", help="attempts in all (default: 3)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="upstream timeouts (default: %(default)s)"
    )
    parser.add_argument("--health-check", action="store_true", help="probe each host's /health actively")
    parser.add_argument("--health-path", default="/health", help="the proxy's own health endpoint")
    parser.add_argument(
        "--keep-alive",
        type=positive_int,
        default=KEEP_ALIVE,
        metavar="SECONDS",
        help="how long an idle caller's connection stays open (default: %(default)s, uvicorn's)",
    )
    callers = parser.add_argument_group("callers (defaults as nginx's)")
    for name, what in (
        ("header", "for a request's line and headers"),
        ("body", "for each piece of a request body (then 408)"),
        ("send", "for a caller to take some of its answer"),
    ):
        callers.add_argument(
            f"--{name}-timeout",
            type=positive_float,
            default=TIMEOUT,
            metavar="SECONDS",
            help=f"how long to wait {what} (default: %(default)s)",
        )
    callers.add_argument(
        "--max-connections",
        type=positive_int,
        default=None,
        metavar="N",
        help="callers' connections at most; beyond, the longest idle is closed, or 503 "
        f"(default: (RLIMIT_NOFILE - {FD_RESERVE}) / 2, now {default_max_connections()})",
    )
    callers.add_argument(
        "--request-buffer",
        type=byte_count,
        default=BUFFER,
        metavar="BYTES",
        help="request body read before a host is picked (default: %(default)s)",
    )
    callers.add_argument(
        "--response-buffer",
        type=byte_count,
        default=BUFFER,
        metavar="BYTES",
        help="answers of known length up to this are read whole, freeing the upstream (default: %(default)s)",
    )
    callers.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="an address or network whose X-Forwarded-For, X-Real-IP and Forwarded are believed (repeatable; "
        "default: none)",
    )
    upstream = parser.add_argument_group("upstream TLS (HTTPS hosts; requests and health checks alike)")
    upstream.add_argument(
        "--sni-hostname",
        metavar="NAME",
        help="the TLS server name sent and verified for HTTPS hosts given by address",
    )
    trust = upstream.add_mutually_exclusive_group()
    trust.add_argument("--ca-file", metavar="PATH", help="verify the hosts' certificates against this CA bundle")
    trust.add_argument("--insecure", action="store_true", help="do not verify the hosts' certificates")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _upstream_verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """``verify=`` for the proxy's client: a context trusting ``--ca-file``, False for ``--insecure``, else
    True (the system's CAs, or ``SSL_CERT_FILE``)."""
    if args.insecure:
        return False
    if args.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ca-file {args.ca_file!r} cannot be used: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """``lbclient proxy``: 0 after a clean shutdown, 2 on bad input or a missing uvicorn."""
    try:
        import uvicorn  # noqa: F401 - checked before anything starts
    except ImportError:
        print(f"error: {_NO_UVICORN}", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(args.listen)
        app = make_app(
            args.hosts,
            strategy=args.strategy,
            retries=RetryPolicy(max_attempts=args.retries),
            health_check=HealthCheck() if args.health_check else None,
            timeout=args.timeout,
            health_path=args.health_path,
            trusted_proxies=[part for value in args.trusted_proxy for part in value.split(",") if part.strip()],
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            send_timeout=args.send_timeout,
            max_connections=args.max_connections,
            request_buffer=args.request_buffer,
            response_buffer=args.response_buffer,
            verify=_upstream_verify(args),
            sni_hostname=args.sni_hostname,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: uvicorn's access log has it
    return serve(app, host, port, log_level=args.log_level, keep_alive=args.keep_alive)
