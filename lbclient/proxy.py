"""A reverse proxy: an ASGI app that forwards every request to an :class:`AsyncLBClient`'s pool.

::

    from lbclient.proxy import make_app

    app = make_app(["10.0.0.1:8000", "10.0.0.2:8000"], strategy="peak_ewma", health_check=True)
    # uvicorn module:app --server-header false --date-header false, or: lbclient proxy --hosts ...

The app forwards the method, path and query, headers and body; the balancer picks the host, retries and
ejects as it does for any pool request. Bodies stream both ways, so memory stays flat whatever their
size: the request body goes upstream as it arrives (an async generator given to httpx) and the response
body comes back as it arrives (``client.send(..., stream=True)`` and ``aiter_raw``, so a compressed
body stays compressed).

- Hop-by-hop headers are dropped both ways (RFC 9110 7.6.1): ``Connection`` and every header it names,
  ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, and ``Expect``
  (the ASGI server has already answered ``100-continue``).
- ``X-Forwarded-For`` gets the caller's address appended (so ``ip_hash`` still sees the first client),
  ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set; the ``Host`` header upstream names the picked
  host, as the balancer sets it.
- Only what the caller sent goes upstream: the client's default headers (``User-Agent``,
  ``Accept-Encoding``, ...) and cookies are not added, and redirects are passed back, not followed.
  The client's ``auth`` and ``timeout`` apply.
- A request without a body is sent without one, and a body that arrived whole in one ASGI message is
  sent from memory: both can be retried as any pool request. A streamed body (a generator) is never sent
  twice; a failure to connect before any of it was sent is still retried.
- No upstream answer: ``502 Bad Gateway`` (connect or transport error, :class:`NoAvailableHostError`)
  or ``504 Gateway Timeout`` (timeout); the details go to the ``lbclient.proxy`` logger, not to the
  caller. A failure after the answer began aborts the connection, so the caller sees a cut body rather
  than a complete-looking short one.
- ``GET /health`` (``health_path=``; ``None`` forwards that path too) is the proxy's own: 200 while the
  pool has a host available (healthy, not ejected, weight > 0), else 503, with each host's state as JSON.
- Lifespan: the client is opened at startup (which starts its health checks and discovery) and closed at
  shutdown. ``async with proxy:`` does the same for servers or frameworks that run their own lifespan.

The app runs on any ASGI server, on asyncio or trio (it uses anyio). Run uvicorn with
``server_header=False, date_header=False``: the upstream's ``Server`` and ``Date`` headers pass through.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from ._cli_get import LOG_LEVELS, positive_int, strategy_option
from ._client import AsyncLBClient
from ._core import HealthCheck, HostLike, RetryPolicy
from ._discovery import Discovery
from ._exceptions import NoAvailableHostError

__all__ = ["HOP_BY_HOP_HEADERS", "LBProxy", "make_app", "serve", "strip_hop_by_hop"]

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
_REQUEST_ONLY = frozenset({b"expect", b"host", b"x-forwarded-proto", b"x-forwarded-host"})


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


class _ClientDisconnected(Exception):
    """The caller went away while its request body was being forwarded."""


class _RequestBody:
    """The caller's request body, read from ASGI ``receive`` as httpx asks for it."""

    def __init__(self, receive: Receive, first: bytes) -> None:
        self._receive = receive
        self._first = first
        #: True once the last body message was received: ``receive`` is then free to watch for a disconnect.
        self.done = False

    async def stream(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientDisconnected
            self.done = not message.get("more_body", False)
            chunk = message.get("body", b"")
            if chunk:
                yield chunk


def _cookieless_jar() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: a proxy's client must not collect its callers' cookies. (A jar,
    not ``httpx.Cookies``: the client would copy the latter into a jar of its own that keeps them.)"""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class LBProxy:
    """An ASGI app that forwards every request to ``client``'s pool (see the module docstring).

    ``client`` should be unopened: the proxy opens it at ASGI lifespan startup (or ``async with proxy:``)
    and closes it at shutdown. ``health_path`` is the proxy's own health endpoint (``None``: none).
    """

    def __init__(self, client: AsyncLBClient, *, health_path: str | None = "/health") -> None:
        if not isinstance(client, AsyncLBClient):
            raise ValueError(f"client must be an AsyncLBClient, got {client!r}")
        if health_path is not None and not health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {health_path!r}")
        self.client = client
        self.health_path = health_path
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
        if path is None:
            await _plain(send, 400, "400 Bad Request\n")
            return
        if self.health_path is not None and path == self.health_path.encode():
            await self._health(scope["method"], send)
            return
        query: bytes = scope.get("query_string", b"")
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        body = _RequestBody(receive, first.get("body", b""))
        content: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            content = body.stream()
        else:
            body.done = True
            content = first.get("body", b"") or None
        request = httpx.Request(
            scope["method"],
            self._base.copy_with(raw_path=self._prefix + path + (b"?" + query if query else b"")),
            headers=self._upstream_headers(scope),
            content=content,
        )
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
        except _ClientDisconnected:
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

    def _upstream_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        incoming: list[tuple[bytes, bytes]] = [(bytes(name), bytes(value)) for name, value in scope["headers"]]
        headers = strip_hop_by_hop(incoming, drop=_REQUEST_ONLY)
        forwarded_for = [value for name, value in headers if name == b"x-forwarded-for"]
        headers = [(name, value) for name, value in headers if name != b"x-forwarded-for"]
        client = scope.get("client")
        if client:
            forwarded_for.append(str(client[0]).encode("ascii"))
        if forwarded_for:
            headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("ascii")))
        host = next((value for name, value in incoming if name.lower() == b"host"), None)
        if host is None and scope.get("server"):
            server_host, server_port = scope["server"]
            host = f"{server_host}:{server_port}".encode("ascii") if server_port else str(server_host).encode()
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        return headers

    async def _relay(self, response: httpx.Response, body: _RequestBody, receive: Receive, send: Send) -> None:
        """Stream the upstream answer to the caller; stop (and let the upstream go) if the caller leaves."""
        start = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": strip_hop_by_hop(response.headers.raw),
        }
        failure: httpx.HTTPError | None = None
        async with anyio.create_task_group() as group:
            if body.done:  # receive() is free: it returns http.disconnect when the caller goes away
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            await send(start)
            try:
                async for chunk in response.aiter_raw():
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                failure = exc
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()
        if failure is not None:
            _log_failure(response.request, failure, "while relaying the response body")
            # Raised to the ASGI server, which aborts the connection: a cut body must not look complete.
            raise failure

    async def _health(self, method: str, send: Send) -> None:
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, "405 Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
            return
        stats = self.client.pool.stats()  # one consistent snapshot
        hosts = stats.hosts
        available = stats.available
        payload = {
            "status": "ok" if available else "unavailable",
            "available": available,
            "panic": stats.panic,
            "hosts": [
                {
                    "url": host.url,
                    "available": host.available,
                    "healthy": host.healthy,
                    "ejected": host.ejected,
                    "weight": host.weight,
                    "outstanding": host.outstanding,
                }
                for host in hosts
            ],
        }
        data = json.dumps(payload).encode()
        status = 200 if available else 503
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})


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
    hosts: Iterable[HostLike] | Discovery, *, health_path: str | None = "/health", **client_options: Any
) -> LBProxy:
    """An :class:`LBProxy` over a new :class:`AsyncLBClient` built from ``hosts`` and ``client_options``
    (strategy, retries, health_check, timeout, limits, ...: any keyword of the client). Its cookie jar
    keeps nothing, since a proxy's client must not gather its callers' cookies."""
    client_options.setdefault("cookies", _cookieless_jar())
    return LBProxy(AsyncLBClient(hosts, **client_options), health_path=health_path)


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
    ``keep_alive`` is how long an idle caller's connection is kept open, in whole seconds.

    The socket is bound first and its address printed to stdout (``lbclient proxy: listening on
    http://HOST:PORT``), so ``port=0`` is usable by scripts. Raises ``ImportError`` naming the
    ``proxy`` extra when uvicorn is missing."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(_NO_UVICORN) from exc
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        server_header=False,  # the upstream's Server and Date headers pass through
        date_header=False,
        proxy_headers=False,  # X-Forwarded-For from the caller is appended to, never trusted as the peer
        timeout_keep_alive=keep_alive,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    hosts = ", ".join(h.url for h in app.client.pool.hosts)
    print(f"lbclient proxy: listening on http://{shown}:{bound_port} -> {hosts}", flush=True)
    server = uvicorn.Server(config)
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
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


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
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: uvicorn's access log has it
    return serve(app, host, port, log_level=args.log_level, keep_alive=args.keep_alive)
