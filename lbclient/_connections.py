"""The connections behind a pool: every inner transport the balancing transports send through.

One factory (:func:`inner_factory`) builds every transport a client uses: each host's small connection
pools, the transport for requests that bypass the pool, and the health checks' transport. They share one
TLS context made from the client's ``verify``, ``cert`` and ``trust_env``, so a TLS setting can never
reach one of them and not another.

A host's connections belong to that host's time in the pool (its :class:`HostState`), not to its URL: a
host that leaves and comes back gets new connection pools while the old ones finish their requests and
streams, then close. Nothing is closed under a request in flight.

On close, no connection is opened and nothing is written any more, every socket the default transports
opened is shut down (which wakes a thread blocked reading a response: closing a socket does not), and no
connection outlives the transport.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import anyio
import httpcore
import httpx

from ._core import HostState, Lease, Pool
from ._exceptions import ClientClosedError
from ._urls import replace

__all__ = [
    "SUBPOOL_CONNECTIONS",
    "Connections",
    "SocketRegistry",
    "Target",
    "aclose_transports",
    "close_transports",
    "inner_factory",
]

InnerT = TypeVar("InnerT")

#: The most connections in one inner connection pool. httpcore scans every connection of a pool, and asks
#: each idle one's socket whether it is readable, several times per request; at 64 requests in flight
#: to 3 hosts, pools of 4 connections made AsyncLBClient 2.3x faster than one pool per host, with a 5x
#: lower p99 (``python -m bench --only proxies``).
SUBPOOL_CONNECTIONS = 4

#: httpx's default limits, which apply per host when the client gives none.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class Target:
    """Where a host's requests go: its URL parts, prepared once, the ``Host`` header and the TLS server
    name (``sni_hostname``: the host's own, else the client's; only for HTTPS hosts)."""

    __slots__ = ("scheme", "host", "port", "prefix", "netloc", "url", "sni_hostname", "host_header")

    def __init__(self, base_url: str, sni_hostname: str | None = None) -> None:
        url = httpx.URL(base_url)
        self.url = base_url
        self.scheme = url.scheme
        self.host = url.raw_host.decode("ascii")
        self.port = url.port
        self.prefix = url.raw_path.decode("ascii").rstrip("/")
        self.netloc = url.netloc.decode("ascii")
        self.sni_hostname = sni_hostname if self.scheme == "https" else None
        #: An HTTPS host reached by address but known by name is asked for that name, as curl --resolve does.
        self.host_header = self.netloc
        if self.sni_hostname is not None:
            self.host_header = self.sni_hostname if self.port is None else f"{self.sni_hostname}:{self.port}"

    def rewrite(self, url: httpx.URL) -> httpx.URL:
        """``url`` sent to this host: its scheme, host and port, and its prefix before the path."""
        path = self.prefix + url.raw_path.decode("ascii").split("?", 1)[0]
        return replace(url, scheme=self.scheme, userinfo="", host=self.host, port=self.port, path=path)

    def point(self, request: httpx.Request, url: httpx.URL, *, own_sni: bool, own_host: bool = False) -> None:
        """Aim ``request`` (whose pool URL is ``url``) at this host: URL, ``Host`` header (unless the
        caller gave one: ``own_host``) and TLS name (unless the caller gave the request its own
        ``sni_hostname``: ``own_sni``)."""
        request.url = self.rewrite(url)
        if not own_host:
            request.headers["Host"] = self.host_header
        if not own_sni:
            if self.sni_hostname is None:
                request.extensions.pop("sni_hostname", None)
            else:
                request.extensions["sni_hostname"] = self.sni_hostname


# -- sockets -------------------------------------------------------------------------------------------------


_CLOSED = "the client was closed: nothing more is sent"


class _TrackedStream(httpcore.NetworkStream):
    """A connection's network stream, known to its :class:`SocketRegistry` until it closes. Once the
    registry is closing, nothing more is written: no request starts after ``close()`` began."""

    def __init__(self, stream: httpcore.NetworkStream, registry: SocketRegistry) -> None:
        self._stream = stream
        self._registry = registry

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._registry.closing:
            raise httpcore.WriteError(_CLOSED)
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._registry.forget(self)
        if self._registry.closing:
            # Closing a socket does not wake a thread blocked reading it; once the client closes, any
            # close (from whichever thread gets there first) shuts the socket down before it goes.
            self.shut_down()
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            self._stream = self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            self._registry.forget(self)
            self._stream.close()  # httpcore closes it on errors, not when interrupted: closing again is harmless
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)

    def shut_down(self) -> None:
        """Shut the socket down both ways: a thread blocked reading it wakes up with an error."""
        sock = self._stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # not connected any more: nothing to wake
                sock.shutdown(socket.SHUT_RDWR)


class _AsyncTrackedStream(httpcore.AsyncNetworkStream):
    """The async twin of :class:`_TrackedStream` (a task reading a stream that another task closes wakes
    up by itself: closing is enough)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, registry: SocketRegistry) -> None:
        self._stream = stream
        self._registry = registry

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._registry.closing:
            raise httpcore.WriteError(_CLOSED)
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        self._registry.forget(self)
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            self._stream = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # httpcore closes the stream when the handshake fails, but not when the task is cancelled in
            # it (a health check stopped by close()): its socket would be left open. Closing is idempotent.
            self._registry.forget(self)
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _TrackingBackend(httpcore.NetworkBackend):
    """A transport's own sync network backend, with every connection it opens recorded in a registry."""

    def __init__(self, backend: httpcore.NetworkBackend, registry: SocketRegistry) -> None:
        self._backend = backend
        self._registry = registry

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return self._registry.track(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return self._registry.track(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncTrackingBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`_TrackingBackend`."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, registry: SocketRegistry) -> None:
        self._backend = backend
        self._registry = registry

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return await self._registry.track_async(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._registry.track_async(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class SocketRegistry:
    """The open connections of a client's default transports, so that closing the client refuses new
    ones, cuts those in flight, and can prove that none is left (``open``).

    A connection that finishes connecting after the close began is closed at once (``ConnectError``),
    and nothing is written on any connection once it began, so no request is sent after ``close()``."""

    def __init__(self) -> None:
        self._streams: set[_TrackedStream | _AsyncTrackedStream] = set()
        self._lock = threading.Lock()
        #: Set by :meth:`shut_down`: the client is closing.
        self.closing = False

    def track(self, stream: httpcore.NetworkStream) -> _TrackedStream:
        with self._lock:
            if not self.closing:
                tracked = _TrackedStream(stream, self)
                self._streams.add(tracked)
                return tracked
        stream.close()
        raise httpcore.ConnectError(_CLOSED)

    async def track_async(self, stream: httpcore.AsyncNetworkStream) -> _AsyncTrackedStream:
        with self._lock:
            if not self.closing:
                tracked = _AsyncTrackedStream(stream, self)
                self._streams.add(tracked)
                return tracked
        await stream.aclose()
        raise httpcore.ConnectError(_CLOSED)

    def forget(self, stream: _TrackedStream | _AsyncTrackedStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._streams)

    def shut_down(self) -> None:
        """Refuse new connections and writes; shut every open sync connection down (the threads reading
        them wake up), and every one that closes from now on."""
        with self._lock:
            self.closing = True
            streams = list(self._streams)
        for stream in streams:
            if isinstance(stream, _TrackedStream):
                stream.shut_down()

    async def aclose_all(self) -> None:
        """Refuse new connections and writes, and close every open async connection (the tasks reading
        them wake up)."""
        with self._lock:
            self.closing = True
            streams = list(self._streams)
        for stream in streams:
            if isinstance(stream, _AsyncTrackedStream):
                await stream.aclose()

    def adopt(self, transport: object) -> None:
        """Make ``transport`` (an ``httpx.HTTPTransport`` or ``AsyncHTTPTransport``) open its connections
        through this registry."""
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(pool, httpcore.ConnectionPool) and isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _TrackingBackend(backend, self)
        elif isinstance(pool, httpcore.AsyncConnectionPool) and isinstance(backend, httpcore.AsyncNetworkBackend):
            pool._network_backend = _AsyncTrackingBackend(backend, self)
        else:
            raise TypeError(f"cannot track the connections of {transport!r}: httpx's layout changed")


def inner_factory(
    cls: Callable[..., InnerT],
    options: dict[str, Any],
    *,
    create_ssl_context: Callable[..., ssl.SSLContext] = httpx.create_ssl_context,
    registry: SocketRegistry | None = None,
) -> Callable[[httpx.Limits | None], InnerT]:
    """Builds ``cls(**options)``, or with other ``limits``; every transport it builds shares one TLS
    context, made by ``create_ssl_context`` (building one reads the CA bundle: milliseconds per transport
    otherwise), and opens its connections through ``registry`` when one is given."""
    shared: dict[str, Any] = {}

    def build(limits: httpx.Limits | None) -> InnerT:
        if not shared:
            context = create_ssl_context(
                verify=options.get("verify", True), cert=options.get("cert"), trust_env=options.get("trust_env", True)
            )
            shared.update(options, verify=context, cert=None)
        transport = cls(**shared) if limits is None else cls(**{**shared, "limits": limits})
        if registry is not None:
            registry.adopt(transport)
        return transport

    return build


# -- one host's connection pools -------------------------------------------------------------------------------


class _Slot(Generic[InnerT]):
    """One small connection pool of a host, and the requests in flight on it."""

    __slots__ = ("transport", "busy", "idle_since")

    def __init__(self, transport: InnerT, now: float) -> None:
        self.transport = transport
        self.busy = 0
        self.idle_since = now


class _HostConnections(Generic[InnerT]):
    """One host's time in the pool: where its requests go, and its small connection pools of at most
    ``SUBPOOL_CONNECTIONS`` each, made as its requests in flight need them, up to the client's
    ``max_connections`` for the host, keeping ``max_keepalive_connections`` idle ones in all. A request
    goes to the pool with the fewest requests in flight (the first on a tie, so sequential traffic reuses
    one connection); its lease frees the place when it ends."""

    __slots__ = ("host", "target", "slots", "retired", "_owner", "_lock")

    def __init__(self, host: HostState, target: Target, owner: Connections[InnerT]) -> None:
        self.host = host
        self.target = target
        self.slots: list[_Slot[InnerT]] = []
        #: Set once, with the host gone and nothing in flight: the pools are being closed, none is given out.
        self.retired = False
        self._owner = owner
        self._lock = threading.Lock()

    def try_retire(self) -> bool:
        """Retire these pools if the host left and nothing is in flight on them (atomic with :meth:`take`,
        so no request can start on a pool that is about to close)."""
        with self._lock:
            if not self.retired and self.host.left and all(slot.busy == 0 for slot in self.slots):
                self.retired = True
                return True
            return False

    def take(self, lease: Lease) -> InnerT | None:
        """A transport for ``lease``'s request, or None if these pools were just retired (a request that
        picked the host as it left: the caller makes new pools for it)."""
        owner = self._owner
        with self._lock:
            if self.retired:
                return None
            if owner.closed:
                raise ClientClosedError(_CLOSED)
            slots = self.slots
            slot = min(slots, key=_busy) if slots else None
            if slot is None or (slot.busy >= SUBPOOL_CONNECTIONS and self._room()):
                slot = _Slot(owner.build(self._sub_limits()), time.monotonic())
                slots.append(slot)
            slot.busy += 1
        lease.then = lambda: self._give(slot)
        return slot.transport

    def _give(self, slot: _Slot[InnerT]) -> None:
        with self._lock:
            slot.busy -= 1
            if slot.busy == 0:
                slot.idle_since = time.monotonic()
        if self.host.left and self.try_retire():
            self._owner.retire(self)

    def expire(self, before: float) -> list[InnerT]:
        """Drop the small pools beyond the first that have been idle since before ``before``: their
        connections would otherwise stay open until the host was busy enough to use them again."""
        with self._lock:
            stale = [slot for slot in self.slots[1:] if slot.busy == 0 and slot.idle_since < before]
            if stale:
                self.slots = [slot for slot in self.slots if slot not in stale]
        return [slot.transport for slot in stale]

    def _room(self) -> bool:
        limits = self._owner.limits
        if limits is None:
            return False
        total = limits.max_connections
        return total is None or len(self.slots) * SUBPOOL_CONNECTIONS < total

    def _sub_limits(self) -> httpx.Limits | None:
        limits = self._owner.limits
        if limits is None:
            return None
        taken = len(self.slots) * SUBPOOL_CONNECTIONS
        size = SUBPOOL_CONNECTIONS
        if limits.max_connections is not None:
            size = max(1, min(size, limits.max_connections - taken))
        keepalive = limits.max_keepalive_connections
        kept = size if keepalive is None else max(0, min(size, keepalive - taken))
        return httpx.Limits(
            max_connections=size, max_keepalive_connections=kept, keepalive_expiry=limits.keepalive_expiry
        )


def _busy(slot: _Slot[Any]) -> int:
    return slot.busy


class Connections(Generic[InnerT]):
    """The inner transports of one balancing transport: the one the caller gave, shared by every host,
    or each host's own small connection pools (the default), built by ``build``; the transport for
    requests that are not the pool's; and the health checks' transport.

    Transports that are done with (a host that left, once its requests and streams are over; small pools
    idle for longer than the keep-alive expiry) wait in :meth:`closable` for the I/O shell to close them.
    """

    def __init__(
        self,
        shared: InnerT | None,
        build: Callable[[httpx.Limits | None], InnerT],
        options: dict[str, Any],
        *,
        sni_hostname: str | None = None,
        registry: SocketRegistry | None = None,
    ) -> None:
        self._shared = shared
        self.build = build
        self.sni_hostname = sni_hostname
        #: The sockets of the default sync transports (None for async ones, and for a caller's transport).
        self.registry = registry
        limits = options.get("limits", DEFAULT_LIMITS)
        #: None: a single pool per host with the client's own limits (HTTP/2 multiplexes).
        self.limits: httpx.Limits | None = None if options.get("http2") else limits
        expiry = limits.keepalive_expiry
        self._expiry = 5.0 if expiry is None else expiry
        self._next_sweep = time.monotonic() + self._expiry
        self._default: InnerT | None = None
        self._health: InnerT | None = None
        self._hosts: dict[HostState, _HostConnections[InnerT]] = {}
        self._generation = -1
        self._closable: list[InnerT] = []
        self._lock = threading.Lock()  # the sync client is shared between threads
        #: Set by :meth:`close_all`: nothing new is handed out.
        self.closed = False

    # -- handing out transports -------------------------------------------------------------------------

    def _of(self, host: HostState) -> _HostConnections[InnerT]:
        connections = self._hosts.get(host)
        if connections is None or connections.retired:
            with self._lock:
                connections = self._hosts.get(host)
                if connections is None or connections.retired:
                    target = Target(host.url, host.host.sni_hostname or self.sni_hostname)
                    connections = self._hosts[host] = _HostConnections(host, target, self)
        return connections

    def target(self, host: HostState) -> Target:
        """Where ``host``'s requests go."""
        return self._of(host).target

    def for_lease(self, lease: Lease) -> InnerT:
        """The transport to send ``lease``'s request through; the lease gives its place back when it ends."""
        if self._shared is not None:
            if self.closed:
                raise ClientClosedError(_CLOSED)
            return self._shared
        while True:
            transport = self._of(lease.host).take(lease)
            if transport is not None:
                return transport

    def passthrough(self) -> InnerT:
        """The transport for requests that are not the pool's."""
        if self._shared is not None:
            return self._shared
        with self._lock:
            if self._default is None:
                self._default = self.build(None)
            return self._default

    def for_health_checks(self) -> InnerT:
        """The health checks' transport: the caller's own, or one more built like every other but with no
        cap on its connections (at most one check per host is in flight, and a cap shared by every host
        would let hanging checks hold up the others')."""
        if self._shared is not None:
            return self._shared
        with self._lock:
            if self._health is None:
                limits = self.limits
                self._health = self.build(
                    None
                    if limits is None
                    else httpx.Limits(
                        max_connections=None,
                        max_keepalive_connections=limits.max_keepalive_connections,
                        keepalive_expiry=limits.keepalive_expiry,
                    )
                )
            return self._health

    # -- retiring --------------------------------------------------------------------------------------

    def sweep(self, pool: Pool) -> None:
        """Notice hosts that left ``pool`` with nothing in flight, and small pools idle too long; cheap
        when nothing changed (called before each pool request)."""
        now = time.monotonic()
        if pool.generation != self._generation:
            self._generation = pool.generation
            with self._lock:
                gone = [c for c in self._hosts.values() if c.host.left]
            for connections in gone:
                if connections.try_retire():
                    self.retire(connections)
        if now >= self._next_sweep:
            self._next_sweep = now + self._expiry
            with self._lock:
                everyone = list(self._hosts.values())
            stale = [transport for connections in everyone for transport in connections.expire(now - self._expiry)]
            with self._lock:
                self._closable += stale

    def retire(self, connections: _HostConnections[InnerT]) -> None:
        """Forget retired pools; their transports wait in :meth:`closable`."""
        with self._lock:
            if self._hosts.get(connections.host) is connections:
                del self._hosts[connections.host]
            self._closable += [slot.transport for slot in connections.slots]

    def tidy(self, pool: Pool) -> list[InnerT]:
        """:meth:`sweep`, then :meth:`closable`: for the background loops, so that the connections of a
        host that left close even while no request comes."""
        self.sweep(pool)
        return self.closable()

    def closable(self) -> list[InnerT]:
        """Transports to close now (taken: each is given out once). Empty and cheap most of the time."""
        if not self._closable:
            return []
        with self._lock:
            closable, self._closable = self._closable, []
        return closable

    def close_all(self) -> list[InnerT]:
        """Stop handing out transports; every transport there is, for the caller to close (again, for one
        that a request straggling past the close may have used)."""
        with self._lock:
            self.closed = True
            everything = [slot.transport for c in self._hosts.values() for slot in c.slots]
            everything += self._closable
            everything += [t for t in (self._shared, self._default, self._health) if t is not None]
            self._closable = []
        if self.registry is not None:
            self.registry.shut_down()
        return everything

    async def aclose_all(self) -> list[InnerT]:
        """:meth:`close_all` for async transports: also closes the connections a straggling attempt opened
        on a transport it took before the close."""
        everything = self.close_all()
        if self.registry is not None:
            await self.registry.aclose_all()
        return everything


def close_transports(transports: Iterable[httpx.BaseTransport]) -> None:
    """Close transports that are done with (taken from :meth:`Connections.closable` or ``tidy``)."""
    for transport in transports:
        transport.close()


async def aclose_transports(transports: Iterable[httpx.AsyncBaseTransport]) -> None:
    """Close async transports that are done with, shielded: they were taken from the list of those to
    close, so a cancellation here would leave their connections open for good."""
    with anyio.CancelScope(shield=True):
        for transport in transports:
            await transport.aclose()
