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
- Hash strategies (``ip_hash``, ``consistent_hash``, ``url_hash``) key on the caller's IP address.
- ``health_check=True`` (or a :class:`HealthCheck`: its interval, timeout and thresholds; the path is not
  used) probes each host by opening and closing a TCP connection.

The proxy runs on asyncio or trio (anyio). ``serve`` runs until cancelled; its health checks and
discovery run alongside and stop with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import tenacity

from ._background import TaskLoop
from ._balancer import live_pool, retry_budget
from ._cli_get import LOG_LEVELS, positive_float, positive_int, strategy_option
from ._core import DEFAULT_PANIC_THRESHOLD, Host, HostLike, HostState, Lease, PoolEvent, Strategy
from ._core._config import HealthCheck, OutlierDetection, RetryPolicy
from ._discovery import Discovery, Refresher
from ._exceptions import NoAvailableHostError
from ._health import HealthChecks

__all__ = ["TCPProxy"]

logger = logging.getLogger("lbclient.tcp")

#: Bytes read from either side at a time.
CHUNK = 65536


class _ConnectFailed(Exception):
    """One connect attempt failed; ``host`` is the host it went to."""

    def __init__(self, host: str, cause: BaseException) -> None:
        super().__init__(f"{host}: {type(cause).__name__}: {cause}")
        self.host = host


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
            self.pool.report_check(host, False, f"connect: {type(exc).__name__}: {exc}")
        else:
            await stream.aclose()
            self.pool.report_check(host, True, "connected")


class TCPProxy:
    """Forwards TCP connections to a balanced pool of hosts (see the module docstring).

    ``hosts`` are ``HOST:PORT`` strings (``tcp://`` optional), :class:`Host` objects, mappings, or a
    :class:`Discovery` source. ``retries`` is the most connect attempts per connection (an int, or a
    :class:`RetryPolicy` whose ``max_attempts`` and budget apply). The other keywords are the clients'.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        strategy: str | Strategy = "least_connections",
        retries: int | RetryPolicy | None = 3,
        connect_timeout: float = 5.0,
        idle_timeout: float | None = None,
        outlier_detection: OutlierDetection | bool | None = True,
        health_check: HealthCheck | bool | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start: float = 0.0,
        service: str = "tcp-proxy",
        on_event: Callable[[PoolEvent], None] | None = None,
    ) -> None:
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.idle_timeout = None if idle_timeout is None else _seconds("idle_timeout", idle_timeout)
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
        loops: list[TaskLoop] = [chore.task() for chore in self._chores]
        async with await anyio.create_tcp_listener(local_host=host, local_port=port) as listener:
            started: list[TaskLoop] = []
            try:
                for loop in loops:
                    await loop.start()
                    started.append(loop)
                bound = listener.extra(anyio.abc.SocketAttribute.local_address)  # noqa: S610 - anyio, not Django
                task_status.started((str(bound[0]), int(bound[1])))
                await listener.serve(self.handle)
            finally:
                for loop in reversed(started):  # their task groups close in the order they opened
                    await loop.stop()

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        """Forward one accepted connection (what :meth:`serve` runs for each; usable with any anyio
        listener). Closes ``client`` when done."""
        async with client:
            _pause_reading(client)
            peer = client.extra(anyio.abc.SocketAttribute.remote_address, None)  # noqa: S610
            caller = str(peer[0]) if isinstance(peer, tuple) else None
            try:
                lease, upstream = await self._connect(caller)
            except (NoAvailableHostError, _ConnectFailed) as exc:
                notes = "; ".join(getattr(exc, "__notes__", ()))
                logger.warning(
                    "%s: connection from %s dropped: %s%s", self.service, caller, exc, f" ({notes})" if notes else ""
                )
                return
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
    parser.add_argument("--health-check", action="store_true", help="probe each host with a TCP connect")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


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
            health_check=HealthCheck() if args.health_check else None,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    failure: BaseException | None = None
    try:
        return anyio.run(_serve_until_signal, proxy, host, port)
    except* OSError as raised:  # the address is in use, or not ours to listen on
        failure = raised.exceptions[0]
    print(f"error: cannot listen on {args.listen}: {failure}", file=sys.stderr)
    return 2


async def _serve_until_signal(proxy: TCPProxy, host: str, port: int) -> int:
    async with anyio.create_task_group() as group:
        bound: Any = await group.start(proxy.serve, host, port)
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        hosts = ", ".join(h.url.removeprefix("http://") for h in proxy.pool.hosts)
        print(f"lbclient tcp-proxy: listening on {shown}:{bound[1]} -> {hosts}", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("tcp-proxy: %s, shutting down", signal.Signals(signum).name)
                group.cancel_scope.cancel()
                break
    return 0
