"""The caller side of ``lbclient proxy`` under uvicorn: its h11 protocol, with the limits nginx has.

uvicorn's own protocol waits for ever for a request's headers, writes to a caller that reads nothing for
ever, and accepts connections until the process runs out of file descriptors, after which asyncio's
accept loop logs "Too many open files" thousands of times a second. This subclass adds, per connection:

- ``header_timeout``: the request line and headers must arrive within it, from the connection's start
  (or from the first byte of a request on a kept-alive connection); else 408 if part of a request came,
  and the connection is closed (nginx's ``client_header_timeout``).
- ``send_timeout``: a caller that takes nothing of its answer for that long (the write buffer stays above
  its high-water mark) is aborted (nginx's ``send_timeout``). ``body_timeout`` is the app's own.
- ``max_connections``: a new connection beyond it closes the connection that has been idle longest (no
  request in progress: before its first request, between requests, or still sending its headers), so
  idle callers give way to new ones, as Envoy's overload manager does by cutting idle timeouts near its
  limit; closing the longest idle at the limit is the same rule without a timer. With none idle, the
  newcomer is answered 503 at once and closed.

uvicorn's ``backlog`` is also how many connections asyncio accepts in one turn of the event loop, before
any of them is seen by the protocol: it is kept at ``ACCEPT_BATCH`` so that a flood cannot overshoot the
cap by thousands, and the listening socket's queue is set back to ``LISTEN_BACKLOG`` after startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from .proxy import LBProxy

__all__ = ["ACCEPT_BATCH", "LISTEN_BACKLOG", "server_for"]

logger = logging.getLogger("lbclient.proxy")

#: The most connections accepted in one turn of the event loop (uvicorn's ``backlog``, as asyncio uses it).
ACCEPT_BATCH = 64
#: The listening socket's queue of connections not yet accepted.
LISTEN_BACKLOG = 2048
#: Connections answered 503 and waiting for their request to arrive, at most; beyond, they are reset.
_SHEDDING_MAX = ACCEPT_BATCH
#: Seconds a connection answered 503 waits for its request before it is closed anyway.
_SHED_WAIT = 1.0


def _plain(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
        + str(len(text)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + text
    )


_REQUEST_TIMEOUT = _plain(b"408 Request Timeout", b"408 Request Timeout\n")
_SERVICE_UNAVAILABLE = _plain(b"503 Service Unavailable", b"503 Service Unavailable: too many connections\n")


class _Guard:
    """What every connection of one server shares: the cap, the idle connections (longest idle first)
    and the counters."""

    def __init__(self, proxy: LBProxy) -> None:
        self.limit = proxy.max_connections
        self.header_timeout = proxy.header_timeout
        self.send_timeout = proxy.send_timeout
        self.stats = proxy.callers
        self.idle: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        #: Connections that count against ``limit``: open, not answered 503, not being closed for room.
        self.counted = 0
        self.shedding = 0

    def make_room(self) -> bool:
        """Close the connection idle longest, so a new one can have its place; False when none is idle."""
        if not self.idle:
            return False
        victim, _ = self.idle.popitem(last=False)
        victim.evict()
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and send timeouts and a connection cap (module docstring).
    :func:`server_for` makes a subclass per server, whose ``guard`` its connections share."""

    guard: ClassVar[_Guard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._shed = False
        self._fresh = True  # no request started yet: header_timeout runs from the connection's start
        self._waiting = False  # paused writing: counted in waiting_to_send

    # -- connection life -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _no_delay(transport)
        guard = self.guard
        guard.stats.open += 1
        guard.stats.accepted += 1
        if guard.counted >= guard.limit and not guard.make_room():
            self._shed_connection()
            return
        guard.counted += 1
        self._counted = True
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self.guard
        guard.stats.open -= 1
        self._stop_waiting()
        self._cancel_timers()
        self._uncount()
        if self._shed:
            self._shed = False
            guard.shedding -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._shed:
            if not self.transport.is_closing():
                self.transport.write(_SERVICE_UNAVAILABLE)
                self.transport.close()
            return
        super().data_received(data)
        self._update()

    def handle_events(self) -> None:
        super().handle_events()
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def send_400_response(self, msg: str) -> None:
        self.guard.stats.bad_requests += 1
        super().send_400_response(msg)

    def _unsupported_upgrade_warning(self) -> None:
        """Quiet: any caller can ask for an upgrade; the proxy forwards the request without it."""
        logger.debug("proxy: an upgrade request, forwarded as a plain request")

    # -- idle or busy ----------------------------------------------------------------------------------

    def _busy(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _update(self) -> None:
        """Keep the connection's place among the idle ones, and its header timer, up to date."""
        if not self._counted or self.transport.is_closing():
            return
        guard = self.guard
        if self._busy():
            self._fresh = False
            guard.idle.pop(self, None)
            self._cancel_header_timer()
            return
        if self not in guard.idle:
            guard.idle[self] = None  # newest idle last
        if self._header_timer is None and (self._fresh or self.conn.trailing_data[0]):
            self._header_timer = self.loop.call_later(guard.header_timeout, self._header_timed_out)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.counted -= 1
            self.guard.idle.pop(self, None)

    def evict(self) -> None:
        """Close this idle connection to make room for a new one."""
        self._uncount()
        self._cancel_timers()
        self.guard.stats.evicted += 1
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a caller that has not read its last answer: its descriptor is needed now
        else:
            self.transport.close()

    def _shed_connection(self) -> None:
        """At the cap with none idle: 503 as soon as the request comes (answering before it arrives
        would have the caller's request bytes meet a closed socket, and its kernel drop the answer)."""
        guard = self.guard
        guard.stats.shed += 1
        if guard.shedding >= _SHEDDING_MAX:
            self.transport.abort()
            return
        guard.shedding += 1
        self._shed = True
        self._header_timer = self.loop.call_later(min(_SHED_WAIT, guard.header_timeout), self._close_shed)

    # -- timers: each logs and survives its own errors --------------------------------------------------

    def _header_timed_out(self) -> None:
        self._header_timer = None
        try:
            if self._busy() or self.transport.is_closing():
                return
            self.guard.stats.header_timeouts += 1
            partial = bool(self.conn.trailing_data[0])
            logger.info(
                "proxy: closing %s: %s within %ss",
                _name(self.client),
                "request headers not complete" if partial else "no request",
                self.guard.header_timeout,
            )
            if partial:
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()
        except Exception:
            logger.exception("proxy: the header timeout of %s failed", _name(self.client))

    def _close_shed(self) -> None:
        self._header_timer = None
        try:
            self.transport.close()
        except Exception:
            logger.exception("proxy: closing %s failed", _name(self.client))

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._waiting:
            self._waiting = True
            self.guard.stats.waiting_to_send += 1
        if self._send_timer is None and not self.transport.is_closing():
            self._send_timer = self.loop.call_later(self.guard.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_waiting()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.guard.stats.waiting_to_send -= 1

    def _send_timed_out(self) -> None:
        self._send_timer = None
        try:
            self.guard.stats.send_timeouts += 1
            logger.info("proxy: aborting %s: it read nothing for %ss", _name(self.client), self.guard.send_timeout)
            self.transport.abort()
        except Exception:
            logger.exception("proxy: the send timeout of %s failed", _name(self.client))

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None


def _no_delay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY, which asyncio sets only on sockets whose ``proto`` is IPPROTO_TCP, not on those
    accepted from ``socket.create_server``'s (proto 0): without it, every answer written as headers and
    body waits ~40 ms for the caller's delayed ACK (Nagle)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _name(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a caller"


class _AcceptErrors:
    """A loop exception handler that logs asyncio's "socket.accept() out of system resource" once per
    ``every`` seconds with a count, instead of once per failed accept (thousands a second); everything
    else goes to the handler that was there before."""

    def __init__(self, previous: Any, every: float = 10.0) -> None:
        self._previous = previous
        self._every = every
        self._last = -every
        self._missed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        self._missed += 1
        if now - self._last >= self._every:
            logger.error(
                "proxy: accept() failed %d time(s) in %.0fs: %s (max_connections too high for RLIMIT_NOFILE?)",
                self._missed,
                min(now - self._last, self._every),
                context.get("exception"),
            )
            self._last = now
            self._missed = 0


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_AcceptErrors(loop.get_exception_handler()))
        await super().startup(sockets=sockets)
        for sock in sockets or []:
            sock.listen(LISTEN_BACKLOG)  # asyncio set it to uvicorn's backlog, ACCEPT_BATCH


def server_for(app: LBProxy, *, log_level: str | None = "info", keep_alive: int = 5) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the guarded protocol; run it with ``server.run(sockets=[sock])``
    (``keep_alive``: seconds an idle caller's connection stays open between requests)."""

    class Protocol(GuardedH11Protocol):
        pass

    Protocol.guard = _Guard(app)
    config = uvicorn.Config(
        app,
        http=Protocol,
        ws="none",  # the app refuses WebSockets: upgrades are forwarded as plain requests
        lifespan="on",
        log_level=log_level,
        server_header=False,  # the upstream's Server and Date headers pass through
        date_header=False,
        proxy_headers=False,  # the app reads forwarded headers itself, from trusted proxies only
        timeout_keep_alive=keep_alive,
        backlog=ACCEPT_BATCH,
    )
    return _Server(config)
