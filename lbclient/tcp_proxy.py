"""A TCP forwarder in front of a pool: databases, caches and other services that do not speak HTTP.

::

    from lbclient.tcp_proxy import TCPProxy

    proxy = TCPProxy(["10.0.0.1:5432", "10.0.0.2:5432"], strategy="least_connections", health_check=True)
    anyio.run(proxy.serve, "127.0.0.1", 6432)  # or: lbclient tcp-proxy --listen 127.0.0.1:6432 --hosts ...

Each accepted connection takes a host from the same :class:`~lbclient.Pool` the HTTP clients use, with
the same strategies, outlier detection, panic mode, slow start and discovery:

- The host is held (it counts in ``outstanding``) for the connection's whole life, so
  ``least_connections`` balances open connections, as HAProxy's ``leastconn`` does for long sessions.
  Its latency, for the latency-aware strategies, is the time to connect.
- A failed connect (refused, unreachable, no answer within ``connect_timeout``) counts against the host
  toward ejection and is retried at once on a host this connection has not tried, up to ``retries``
  attempts in all, within the pool's retry budget. Nothing has been sent yet, so this is always safe.
  When every attempt fails the caller's connection is closed; the reason goes to the ``lbclient.tcp``
  logger. What happens after the connection is up (a reset, an early close) is the protocol's business
  and is not retried.
- Bytes are copied both ways as they arrive. Half-close is kept: when one side ends its sending
  (``shutdown(SHUT_WR)``, FIN), the proxy ends its sending to the other side and keeps copying the other
  way until that side ends too.
- A connection cut short (a reset on one side, ``idle_timeout``, the proxy shutting down) is reset on both
  sides. ``idle_timeout`` cuts a connection after that many seconds without a byte either way (default:
  none). A host that reads slowly slows its caller down: the proxy holds a read's worth of bytes at most.
- ``max_connections`` caps the caller connections served at once. At the cap the proxy stops accepting,
  as HAProxy's ``maxconn`` does: newcomers wait in the kernel's listen backlog (the handshake is done and
  their bytes are kept) and are taken in turn as connections close, none refused while the backlog has
  room. The default, :func:`default_max_connections`, is half of what ``RLIMIT_NOFILE`` leaves after a
  reserve, as each connection takes two descriptors (the caller's and the upstream's): callers alone
  cannot exhaust them. ``None`` lifts the cap.
- Running out of file descriptors (``EMFILE``, ``ENFILE``, or socket memory) ends neither the proxy nor any
  open connection. It is logged once an episode: a warning when it starts, a line with the counts when it
  is over. Accepting pauses, 5 ms doubling to 1 s and cut short whenever a connection closes, and resumes
  once two descriptors are free, so waiting callers stay in the backlog rather than being taken and
  dropped. When the upstream socket cannot be made, that caller's connection is closed (an orderly end;
  a reset if it had sent bytes) and the host is not charged: no failure, no ejection, no retry on another
  host. A health probe that meets the shortage gives no verdict.
- Hash strategies (``ip_hash``, ``consistent_hash``, ``url_hash``) key on the caller's IP address.
- ``health_check=True`` (or a :class:`HealthCheck`: its interval, timeout and thresholds; the path is not
  used) probes each host by opening and closing a TCP connection.

The proxy runs on asyncio or trio (anyio). ``serve`` runs until cancelled; its health checks and
discovery run alongside and stop with it. ``serve_listener`` does the same on an anyio listener you made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import tenacity
from anyio.streams.stapled import MultiListener

from ._background import TaskLoop
from ._balancer import live_pool, retry_budget
from ._cli_get import LOG_LEVELS, positive_float, positive_int, strategy_option
from ._core import DEFAULT_PANIC_THRESHOLD, Host, HostLike, HostState, Lease, PoolEvent, Strategy
from ._core._config import HealthCheck, OutlierDetection, RetryPolicy
from ._discovery import Discovery, Refresher
from ._exceptions import NoAvailableHostError
from ._health import HealthChecks

__all__ = ["TCPProxy", "default_max_connections"]

logger = logging.getLogger("lbclient.tcp")

#: Bytes read from either side at a time.
CHUNK = 65536


class _ConnectFailed(Exception):
    """One connect attempt failed; ``host`` is the host it went to."""

    def __init__(self, host: str, cause: BaseException) -> None:
        super().__init__(f"{host}: {type(cause).__name__}: {cause}")
        self.host = host


class _OutOfDescriptors(Exception):
    """The upstream socket could not be made: this process is out of file descriptors (or socket buffers).
    The proxy's shortage, not the host's."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(f"no file descriptor for the upstream socket: {cause}")
        self.cause = cause


#: ``errno`` values that say this process (or the system) ran out of descriptors or socket memory: a
#: shortage of ours, never a peer's failure.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: What Linux ``accept(2)`` may return for a connection that broke before it was taken; "treat them like
#: EAGAIN by retrying" (the man page). The listener is fine.
_ACCEPT_TRANSIENT = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ETIMEDOUT,
    }
)


def _os_error(exc: BaseException, wanted: frozenset[int]) -> OSError | None:
    """The first :class:`OSError` with an ``errno`` in ``wanted`` in ``exc``, its causes and contexts, and
    the members of exception groups: anyio wraps the socket's error (trio's accept in
    ``BrokenResourceError``, ``connect_tcp`` in ``OSError("All connection attempts failed")``)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in wanted:
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(linked for linked in (current.__cause__, current.__context__) if linked is not None)
    return None


def _reserved_descriptors(limit: int) -> int:
    """Descriptors kept out of the default ``max_connections`` under a limit of ``limit``: the listener,
    stdio, the event loop's own, health-check probes, discovery's look-ups, log files."""
    return 16 + limit // 16


def default_max_connections(limit: int | None = None) -> int | None:
    """The default ``max_connections`` under a descriptor limit of ``limit`` (by default this process's
    soft ``RLIMIT_NOFILE``): half of what is left after a reserve of 16 + 1/16 of the limit, since each
    connection needs two descriptors, the caller's and the upstream's. A limit of 1024 gives 472; 64
    gives 22; "unlimited" counts as 2**20 (Linux's ``nr_open``). ``None`` (no cap) on a platform without
    the ``resource`` module."""
    if limit is None:
        try:
            import resource
        except ImportError:  # not on this platform: there is no limit to derive from
            return None
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = 2**20 if soft == resource.RLIM_INFINITY or soft < 0 else soft
    return max(1, (limit - _reserved_descriptors(limit)) // 2)


def _max_connections(value: object) -> int | None:
    """``max_connections`` checked: an int >= 1, None (no cap) or "auto" (:func:`default_max_connections`)."""
    if value == "auto":
        return default_max_connections()
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'max_connections must be an integer >= 1, None or "auto", got {value!r}')
    return value


class _Exhaustion:
    """Running out of file descriptors, as episodes: one warning when an episode starts, one line when it
    is over; while it lasts, a pause before each accept that doubles from ``FIRST_PAUSE`` up to
    ``MAX_PAUSE`` (Go's ``net/http`` server backs off the same way on a failing accept: 5 ms up to 1 s).
    A connection closing frees descriptors and ends a pause early, as HAProxy resumes a listener paused
    for want of descriptors. The episode is over at the first connection made (caller and upstream)
    ``QUIET`` seconds after the last failure, so a proxy that hovers at the limit logs once, not once for
    every connection that closes."""

    FIRST_PAUSE = 0.005
    MAX_PAUSE = 1.0
    QUIET = 1.0

    def __init__(self, service: str) -> None:
        self.service = service
        self.active = False
        self.failed_accepts = 0
        self.failed_connects = 0
        self._started = 0.0
        self._last = 0.0
        self._pause = 0.0
        self._resume_at = 0.0
        self._freed: anyio.Event | None = None

    def failed(self, during: Literal["accept", "connect"], cause: OSError) -> None:
        """An accept (or the check before it), or the upstream socket, failed for want of descriptors."""
        now = anyio.current_time()
        if not self.active:
            self.active = True
            self.failed_accepts = self.failed_connects = 0
            self._started = now
            self._pause = self.FIRST_PAUSE
            what = "accepting a connection" if during == "accept" else "opening an upstream connection"
            logger.warning(
                "%s: out of file descriptors (%s while %s): accepting paused and retried, backing off up to "
                "%g s; open connections are kept (logged once until it is over)",
                self.service,
                errno.errorcode.get(cause.errno or 0, cause.errno),
                what,
                self.MAX_PAUSE,
            )
        else:
            self._pause = min(self._pause * 2, self.MAX_PAUSE)
        if during == "accept":
            self.failed_accepts += 1
        else:
            self.failed_connects += 1
        self._last = now
        self._resume_at = now + self._pause

    def connected(self) -> None:
        """A connection was made both ways: the episode is over if no failure came for ``QUIET`` s."""
        if not self.active:
            return
        now = anyio.current_time()
        if now - self._last < self.QUIET:
            return
        self.active = False
        logger.info(
            "%s: file descriptors available again after %.1f s: %d accepts and %d upstream connects failed",
            self.service,
            now - self._started,
            self.failed_accepts,
            self.failed_connects,
        )

    def freed(self) -> None:
        """A connection closed: a paused accept may try again now."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def pause(self) -> None:
        """Until the current pause is over, or a connection closes: at once when there is none."""
        wait = self._resume_at - anyio.current_time() if self.active else 0.0
        if wait <= 0:
            return
        if self._freed is None:
            self._freed = anyio.Event()
        freed = self._freed
        with anyio.move_on_after(wait):
            await freed.wait()


def _lacking_descriptors(count: int) -> OSError | None:
    """None when ``count`` sockets can be made now, else the error that says why not. While descriptors
    are short, an accept waits for this with two (the caller's and its upstream's), or else each caller
    taken from the backlog with one descriptor free would be closed at once, for want of the second."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    except OSError as exc:
        return exc
    finally:
        for sock in made:
            sock.close()
    return None


def _address(host: HostState | Host) -> tuple[str, int]:
    parts = urlsplit(host.url)
    port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _seconds(name: str, value: object) -> float:
    """``value`` as seconds > 0; the error names ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _tcp_url(given: str) -> str:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` as the pool's URL (``http://HOST:PORT``); anything else, a
    missing or out-of-range port, or a path, is an error that names ``given``."""
    text = given.removeprefix("tcp://")
    if "://" in text:
        raise ValueError(f"a TCP host is HOST:PORT or tcp://HOST:PORT, got {given!r}")
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        raise ValueError(f"a TCP host needs a port in 1..65535 (HOST:PORT), got {given!r}") from None
    if port is None or port == 0:
        raise ValueError(f"a TCP host needs a port in 1..65535 (HOST:PORT), got {given!r}")
    if not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(f"a TCP host is HOST:PORT, with nothing after the port, got {given!r}")
    return "http://" + text


def _tcp_hosts(hosts: Iterable[HostLike]) -> list[HostLike]:
    """The hosts with every URL given as a string (alone, or a mapping's ``url``) turned into the pool's
    form by :func:`_tcp_url`. A :class:`Host` is taken as it is (its URL without a port means port 80)."""
    out: list[HostLike] = []
    for given in hosts:
        if isinstance(given, str):
            out.append(_tcp_url(given))
        elif isinstance(given, Mapping) and isinstance(given.get("url"), str):
            out.append({**given, "url": _tcp_url(given["url"])})
        else:
            out.append(given)
    return out


class _ConnectChecks(HealthChecks):
    """Active health for a TCP pool: a host is good when a connection to it opens within the timeout."""

    async def _check(self, host: HostState) -> None:
        name, port = _address(host)
        try:
            with anyio.fail_after(self.config.timeout):
                stream = await anyio.connect_tcp(name, port)
        except (OSError, TimeoutError) as exc:
            if (shortage := _os_error(exc, _EXHAUSTED)) is not None:  # ours, not the host's: no verdict
                logger.debug("%s: health check of %s skipped: %s", self.service, host.url, shortage)
                return
            self.pool.report_check(host, False, f"connect: {type(exc).__name__}: {exc}")
        else:
            await stream.aclose()
            self.pool.report_check(host, True, "connected")


class TCPProxy:
    """Forwards TCP connections to a balanced pool of hosts (see the module docstring).

    ``hosts`` are ``HOST:PORT`` strings (``tcp://`` optional), :class:`Host` objects, mappings, or a
    :class:`Discovery` source. ``retries`` is the most connect attempts per connection (an int, or a
    :class:`RetryPolicy` whose ``max_attempts`` and budget apply). ``max_connections`` is the most caller
    connections at once (an int >= 1; ``None``: no cap; ``"auto"``, the default:
    :func:`default_max_connections`, from the descriptor limit). The other keywords are the clients'.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        strategy: str | Strategy = "least_connections",
        retries: int | RetryPolicy | None = 3,
        connect_timeout: float = 5.0,
        idle_timeout: float | None = None,
        max_connections: int | Literal["auto"] | None = "auto",
        outlier_detection: OutlierDetection | bool | None = True,
        health_check: HealthCheck | bool | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start: float = 0.0,
        service: str = "tcp-proxy",
        on_event: Callable[[PoolEvent], None] | None = None,
    ) -> None:
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.idle_timeout = None if idle_timeout is None else _seconds("idle_timeout", idle_timeout)
        #: The most caller connections served at once (None: no cap); more wait in the listen backlog.
        self.max_connections = _max_connections(max_connections)
        self.service = service
        self.retries = RetryPolicy.coerce(retries)
        self.health_check = HealthCheck.coerce(health_check)
        #: The live pool: ``pool.hosts``, ``pool.stats()``, ``pool.update(...)``, as on the clients.
        self.pool, refresher = live_pool(
            hosts if isinstance(hosts, Discovery) else _tcp_hosts(hosts),
            strategy,
            service=service,
            panic_threshold=panic_threshold,
            outlier_detection=outlier_detection,
            health_check=self.health_check,
            slow_start=slow_start,
            on_event=on_event,
        )
        self._budget = retry_budget(self.retries)
        self._keyed = self.pool.strategy.key_source is not None
        self._exhaustion = _Exhaustion(service)
        self._chores: list[HealthChecks | Refresher] = []
        if self.health_check is not None:
            self._chores.append(_ConnectChecks(self.pool, self.health_check, service))
        if refresher is not None:
            self._chores.append(refresher)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and forward every connection until cancelled. With
        ``await task_group.start(proxy.serve, host, 0)`` the bound (host, port) comes back once listening."""
        async with await anyio.create_tcp_listener(local_host=host, local_port=port) as listener:
            await self.serve_listener(listener, task_status=task_status)

    async def serve_listener(
        self,
        listener: anyio.abc.SocketListener | MultiListener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Forward every connection ``listener`` accepts until cancelled, as :meth:`serve` does on its own
        listener: the health checks and discovery run alongside, ``max_connections`` holds, and running
        out of file descriptors pauses accepting instead of ending the proxy. ``task_status`` gets the
        listener's local (host, port). The listener is the caller's to close."""
        listeners = listener.listeners if isinstance(listener, MultiListener) else [listener]
        if not all(isinstance(each, anyio.abc.SocketListener) for each in listeners):
            raise TypeError(f"serve_listener takes anyio socket listeners, got {listener!r}")
        loops: list[TaskLoop] = [chore.task() for chore in self._chores]
        started: list[TaskLoop] = []
        try:
            for loop in loops:
                await loop.start()
                started.append(loop)
            bound = listener.extra(anyio.abc.SocketAttribute.local_address)  # noqa: S610 - anyio, not Django
            task_status.started((str(bound[0]), int(bound[1])))
            await self._accept_loop([each for each in listeners if isinstance(each, anyio.abc.SocketListener)])
        finally:
            for loop in reversed(started):  # their task groups close in the order they opened
                await loop.stop()

    async def _accept_loop(self, listeners: list[anyio.abc.SocketListener]) -> None:
        """Accept and hand each connection to :meth:`handle`, never more than ``max_connections`` at once
        over all ``listeners``: at the cap the proxy stops accepting (as HAProxy's ``maxconn`` does) and
        newcomers wait in the kernel's listen backlog, to be taken as soon as a connection closes."""
        slots = None if self.max_connections is None else anyio.Semaphore(self.max_connections)

        async def accept_from(listener: anyio.abc.SocketListener) -> None:
            while True:
                if slots is not None:
                    await slots.acquire()
                try:
                    stream = await self._accept(listener)
                except BaseException:
                    if slots is not None:
                        slots.release()
                    raise
                connections.start_soon(self._serve_one, stream, slots)

        async with anyio.create_task_group() as connections:
            for listener in listeners:
                connections.start_soon(accept_from, listener)

    async def _accept(self, listener: anyio.abc.SocketListener) -> anyio.abc.SocketStream:
        """The next connection. Out of descriptors, the attempt is logged (once an episode), paused and
        made again; a connection that broke before it was taken is skipped. Anything else (the listener
        closed or broken) is raised."""
        while True:
            await self._exhaustion.pause()
            if self._exhaustion.active and (shortage := _lacking_descriptors(2)) is not None:
                self._exhaustion.failed("accept", shortage)  # the caller waits in the backlog, not dropped
                continue
            try:
                return await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                if (shortage := _os_error(exc, _EXHAUSTED)) is not None:
                    self._exhaustion.failed("accept", shortage)
                elif (broken := _os_error(exc, _ACCEPT_TRANSIENT)) is not None:
                    logger.debug("%s: a connection broke before it was accepted: %s", self.service, broken)
                else:
                    raise

    async def _serve_one(self, client: anyio.abc.SocketStream, slots: anyio.Semaphore | None) -> None:
        """:meth:`handle` one connection in the proxy's task group: an unexpected error is logged and
        ends this connection only."""
        try:
            await self.handle(client)
        except Exception:  # a bug must cost one connection, not every other one with the proxy
            logger.exception("%s: a connection failed unexpectedly", self.service)
        finally:
            if slots is not None:
                slots.release()
            self._exhaustion.freed()

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        """Forward one accepted connection (what :meth:`serve` runs for each; usable with any anyio
        listener, without the connection cap). Closes ``client`` when done."""
        async with client:
            _pause_reading(client)
            peer = client.extra(anyio.abc.SocketAttribute.remote_address, None)  # noqa: S610
            caller = str(peer[0]) if isinstance(peer, tuple) else None
            try:
                lease, upstream = await self._connect(caller)
            except _OutOfDescriptors as exc:
                self._exhaustion.failed("connect", exc.cause)
                logger.debug("%s: connection from %s closed: %s", self.service, caller, exc)
                return
            except (NoAvailableHostError, _ConnectFailed) as exc:
                notes = "; ".join(getattr(exc, "__notes__", ()))
                logger.warning(
                    "%s: connection from %s dropped: %s%s", self.service, caller, exc, f" ({notes})" if notes else ""
                )
                return
            self._exhaustion.connected()
            try:
                async with upstream:
                    await self._pipe(client, upstream)
            finally:
                lease.release(failed=False)  # settled at connect: this only ends the hold

    async def _connect(self, caller: str | None) -> tuple[Lease, anyio.abc.SocketStream]:
        """A connection to a host of the pool: untried hosts first, retried at once on connect failures."""
        key = caller if self._keyed else None
        tried: list[HostState] = []
        failures: list[str] = []
        self._budget.record_request()

        def stop(state: tenacity.RetryCallState) -> bool:
            """No attempt left, or no retry left in the budget (withdrawn only when one will be made)."""
            return state.attempt_number >= self.retries.max_attempts or not self._budget.try_withdraw()

        retrying = tenacity.AsyncRetrying(
            sleep=anyio.sleep,
            stop=stop,
            retry=tenacity.retry_if_exception_type(_ConnectFailed),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(key, tried, failures)
        except _ConnectFailed as exc:
            for line in failures:
                exc.add_note(line)
            raise
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _attempt(
        self, key: str | None, tried: list[HostState], failures: list[str]
    ) -> tuple[Lease, anyio.abc.SocketStream]:
        lease = self.pool.acquire(key, exclude=tried)
        if lease is None:
            raise NoAvailableHostError(f"{self.service}: no host available")
        host = lease.host
        tried.append(host)
        name, port = _address(host)
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(name, port)
        except (OSError, TimeoutError) as exc:
            if (shortage := _os_error(exc, _EXHAUSTED)) is not None:
                lease.abandon()  # our shortage says nothing about the host, and another host would fare no better
                raise _OutOfDescriptors(shortage) from exc
            lease.release(failed=True)
            failures.append(f"attempt {len(tried)}: {host.url}: {type(exc).__name__}: {exc}")
            raise _ConnectFailed(host.url, exc) from exc
        except BaseException:
            lease.abandon()  # cancelled: says nothing about the host
            raise
        lease.settle()
        return lease, stream

    async def _pipe(self, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream) -> None:
        """Copy both ways until both sides have ended their sending, or one resets, or the idle timeout.
        A connection cut short (idle timeout, a broken side, the proxy shutting down) is reset on both
        sides, so that neither takes the cut for a complete stream."""
        try:
            async with anyio.create_task_group() as group:
                idle = self.idle_timeout
                if idle is not None:
                    group.cancel_scope.deadline = anyio.current_time() + idle

                def touched() -> None:
                    if idle is not None:
                        group.cancel_scope.deadline = anyio.current_time() + idle

                group.start_soon(_copy, client, upstream, touched, group.cancel_scope)
                group.start_soon(_copy, upstream, client, touched, group.cancel_scope)
        except BaseException:  # cancelled from outside: the proxy is shutting down
            _reset_on_close(client, upstream)
            raise
        if group.cancel_scope.cancelled_caught:  # the idle timeout, or a side broke
            _reset_on_close(client, upstream)


async def _copy(
    source: anyio.abc.SocketStream,
    sink: anyio.abc.SocketStream,
    touched: Callable[[], None],
    both: anyio.CancelScope,
) -> None:
    """Bytes from ``source`` to ``sink`` until ``source`` ends its sending, then end ours to ``sink``
    (half-close). A broken side stops both directions."""
    try:
        while True:
            try:
                chunk = await source.receive(CHUNK)
            except anyio.EndOfStream:
                break
            touched()
            await sink.send(chunk)
        await sink.send_eof()
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        # One side reset or broke: reset the other too, so a cut stream cannot look like a complete one.
        logger.debug("tcp: a side broke (%r): resetting both", exc)
        both.cancel()


def _reset_on_close(*streams: anyio.abc.SocketStream) -> None:
    """Make closing each of ``streams`` send a reset (RST) rather than an orderly end (FIN)."""
    for stream in streams:
        with contextlib.suppress(OSError):
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _pause_reading(stream: anyio.abc.SocketStream) -> None:
    """Backpressure for an accepted stream on asyncio. anyio (4.16) pauses reading only after a
    ``receive`` that had to wait; an accepted socket starts with reading on, so a caller that sends at
    once, faster than the host takes it, never lets the queue run dry and fills the proxy's memory
    (1.5 GB in 4 s in a test). Pausing here makes every ``receive`` read only what it waits for, as for
    a stream from ``connect_tcp``. Trio reads only on ``receive``: nothing to do there."""
    transport = getattr(stream, "_transport", None)
    if isinstance(transport, asyncio.ReadTransport) and transport.is_reading():
        transport.pause_reading()


# -- ``lbclient tcp-proxy`` -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lbclient tcp-proxy``."""
    parser.add_argument("--listen", default="127.0.0.1:6000", metavar="HOST:PORT", help="default: %(default)s")
    parser.add_argument("--hosts", nargs="+", required=True, metavar="HOST:PORT", help="the upstream hosts")
    strategy_option(parser, "least_connections")
    parser.add_argument("--retries", type=positive_int, default=3, metavar="N", help="connect attempts (default: 3)")
    parser.add_argument(
        "--connect-timeout", type=positive_float, default=5.0, metavar="SECONDS", help="default: %(default)s"
    )
    parser.add_argument("--idle-timeout", type=positive_float, default=None, metavar="SECONDS", help="default: none")
    parser.add_argument(
        "--max-connections",
        type=_max_connections_option,
        default="auto",
        metavar="N",
        help="the most caller connections at once; more wait in the listen backlog. An integer >= 1, 'none' "
        "for no cap, or 'auto' (the default): half of what RLIMIT_NOFILE leaves after a reserve",
    )
    parser.add_argument("--health-check", action="store_true", help="probe each host with a TCP connect")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _max_connections_option(text: str) -> int | Literal["auto"] | None:
    """An argparse type for ``--max-connections``: ``auto``, ``none`` or an integer >= 1."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() == "none":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, 'none' or 'auto', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """``lbclient tcp-proxy``: serve until SIGINT or SIGTERM, then 0; 2 on bad input or an address it
    cannot listen on."""
    from .proxy import parse_listen

    try:
        host, port = parse_listen(args.listen)
        proxy = TCPProxy(
            args.hosts,
            strategy=args.strategy,
            retries=RetryPolicy(max_attempts=args.retries),
            connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            health_check=HealthCheck() if args.health_check else None,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    try:
        return anyio.run(_serve_until_signal, proxy, host, port)
    except _CannotListen as exc:  # the address is in use, or not ours to listen on
        print(f"error: cannot listen on {args.listen}: {exc.__cause__}", file=sys.stderr)
        return 2


class _CannotListen(Exception):
    """The listening socket could not be made (its cause says why); raised only before serving starts."""


async def _serve_until_signal(proxy: TCPProxy, host: str, port: int) -> int:
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise _CannotListen from exc
    async with listener, anyio.create_task_group() as group:
        bound: Any = await group.start(proxy.serve_listener, listener)
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        hosts = ", ".join(h.url.removeprefix("http://") for h in proxy.pool.hosts)
        print(f"lbclient tcp-proxy: listening on {shown}:{bound[1]} -> {hosts}", flush=True)
        cap = proxy.max_connections
        logger.info("tcp-proxy: %s", "no connection cap" if cap is None else f"at most {cap} connections at once")
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("tcp-proxy: %s, shutting down", signal.Signals(signum).name)
                group.cancel_scope.cancel()
                break
    return 0
