"""The balancing transports: the only place where sync and async differ.

Everything that is not I/O lives in ``_balancer`` (routing, retry decisions, labels); these shells
call the inner transport, run the retry loop with tenacity, close responses they retry past, and
release each host's lease when its response body is closed, so in-flight counts and latency cover
the whole body, streamed or not.
"""

from __future__ import annotations

import time
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx
import tenacity

from ._balancer import _Balancer, _Exchange
from ._connections import Connections, SocketRegistry, aclose_transports, close_transports, inner_factory
from ._core import DEFAULT_PANIC_THRESHOLD, HostLike, Lease, Pool, PoolEvent, Strategy, check_sni_hostname
from ._core._config import HealthCheck, Hedge, OutlierDetection, RetryPolicy
from ._discovery import Discovery

__all__ = ["DEFAULT_SERVICE", "AsyncLoadBalancingTransport", "LoadBalancingTransport"]

#: The host name that marks pool requests when none is given: ``.invalid`` never resolves (RFC 6761),
#: so a request that somehow escaped the balancer fails fast instead of reaching a real host.
DEFAULT_SERVICE = "lbclient.invalid"


class _LeasedStream(httpx.SyncByteStream):
    """The response body; closing it ends the request's lease, with the response's status, or as failed
    when the body broke off (and closes what the lease's end made closable)."""

    __slots__ = ("_stream", "_lease", "_status", "_failed", "_connections")

    def __init__(
        self, stream: httpx.SyncByteStream, lease: Lease, status: int, connections: Connections[httpx.BaseTransport]
    ) -> None:
        self._stream = stream
        self._lease = lease
        self._status = status
        self._failed = False
        self._connections = connections

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._lease.release(failed=self._failed, status=self._status)
            _close_closable(self._connections)


class _AsyncLeasedStream(httpx.AsyncByteStream):
    """The async response body; closing it ends the request's lease, as :class:`_LeasedStream`."""

    __slots__ = ("_stream", "_lease", "_status", "_failed", "_connections")

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        lease: Lease,
        status: int,
        connections: Connections[httpx.AsyncBaseTransport],
    ) -> None:
        self._stream = stream
        self._lease = lease
        self._status = status
        self._failed = False
        self._connections = connections

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception:
            self._failed = True
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._lease.release(failed=self._failed, status=self._status)
            await _aclose_closable(self._connections)


def _close_closable(connections: Connections[httpx.BaseTransport]) -> None:
    """Close the transports that are done with (a host that left, once its last request ended)."""
    close_transports(connections.closable())


async def _aclose_closable(connections: Connections[httpx.AsyncBaseTransport]) -> None:
    await aclose_transports(connections.closable())


class _Balancing:
    """What both transports show of their balancer."""

    _balancer: _Balancer
    #: Each transport class says how its default inner transports are built (a staticmethod).
    _inner_factory: Callable[[dict[str, Any]], tuple[Callable[[httpx.Limits | None], Any], SocketRegistry | None]]

    @property
    def pool(self) -> Pool:
        """The hosts and their live state; ``pool.update(hosts)`` changes them at run time."""
        return self._balancer.pool

    @property
    def service(self) -> str:
        """The host name that marks this transport's pool requests."""
        return self._balancer.service

    @property
    def bypass(self) -> bool:
        """False: a request that is not the pool's raises :class:`NotInPoolError` instead of going out."""
        return self._balancer.bypass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.service!r} {self.pool!r}>"

    _inner: Any  # the caller's transport, or None
    _exited: bool

    def _not_exited(self, transports: list[Any]) -> list[Any]:
        """``transports`` without the caller's, once its own ``__exit__`` has closed it."""
        return [t for t in transports if not (self._exited and t is self._inner)]

    def _connections_for(
        self, transport: object, transport_options: Mapping[str, Any] | None, sni_hostname: str | None
    ) -> Connections[Any]:
        """Every transport the balancer will send through: the caller's ``transport``, or those built from
        ``transport_options`` (with the registry of their sockets)."""
        options = dict(transport_options or {})
        build, registry = self._inner_factory(options)
        return Connections(
            transport,
            build,
            options,
            sni_hostname=check_sni_hostname(sni_hostname, type(self).__name__),
            registry=None if transport is not None else registry,
        )


class BalancingOptions(typing.TypedDict, total=False):
    """The balancing keywords of :class:`LoadBalancingTransport`, for wrappers that pass them on
    (``**options: Unpack[BalancingOptions]``, as :mod:`lbclient.httpx2` does)."""

    strategy: str | Strategy
    retries: int | RetryPolicy | None
    outlier_detection: OutlierDetection | bool | None
    health_check: HealthCheck | bool | None
    panic_threshold: float
    slow_start: float
    on_event: Callable[[PoolEvent], None] | None
    service: str
    sni_hostname: str | None
    max_in_flight: int | None
    bypass: bool


class AsyncBalancingOptions(BalancingOptions, total=False):
    """:class:`BalancingOptions` and ``hedge``: the balancing keywords of :class:`AsyncLoadBalancingTransport`."""

    hedge: Hedge | float | bool | None


class LoadBalancingTransport(_Balancing, httpx.BaseTransport):
    """An httpx transport that spreads the requests for ``service`` over ``hosts``.

    Mount it on any client: ``httpx.Client(mounts={"all://users": LoadBalancingTransport(hosts,
    service="users")})``; then ``client.get("http://users/api")`` goes to one of the hosts. Requests for
    any other host pass straight through. ``transport`` is the inner transport for every host; without
    one, each host gets its own ``httpx.HTTPTransport(**transport_options)`` (its own connection pool,
    which httpcore scans much faster than one pool for all hosts). Inner transports close with this one.

    ``retries`` (attempts in all, or a :class:`RetryPolicy`; 3 by default), ``outlier_detection`` (on by
    default), ``health_check`` (off by default; active checks run on a background thread),
    ``panic_threshold`` and ``slow_start`` (seconds) are described in the docs (Resilience). ``max_in_flight`` (an
    int >= 1, or None for no cap) is the most requests in flight to one host, for hosts that set none of
    their own: a host at its cap is skipped, and when every available host is, a request fails at once
    with :class:`NoAvailableHostError` saying so. ``on_event`` is called
    with every :class:`PoolEvent` (ejections, returns, health changes, panic, hosts added or removed)
    after it is logged, from the thread where it happened; an exception it raises is logged and dropped.
    ``sni_hostname`` is the TLS server name sent and verified for HTTPS hosts without one of their own
    (``Host(url, sni_hostname=...)``); the ``Host`` header then names it too, while the connection goes
    to the host's address. Health checks go through the same connections, with the same TLS settings.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        strategy: str | Strategy = "round_robin",
        retries: int | RetryPolicy | None = 3,
        outlier_detection: OutlierDetection | bool | None = True,
        health_check: HealthCheck | bool | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start: float = 0.0,
        on_event: Callable[[PoolEvent], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        transport_options: Mapping[str, Any] | None = None,
        service: str = DEFAULT_SERVICE,
        sni_hostname: str | None = None,
        max_in_flight: int | None = None,
        bypass: bool = True,
    ) -> None:
        self._connections: Connections[httpx.BaseTransport] = self._connections_for(
            transport, transport_options, sni_hostname
        )
        self._balancer = _Balancer(
            hosts,
            strategy=strategy,
            retries=retries,
            outlier_detection=outlier_detection,
            health_check=health_check,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
            on_event=on_event,
            service=service,
            connections=self._connections,
            max_in_flight=max_in_flight,
            bypass=bypass,
        )
        self._inner = transport
        self._entered = self._exited = False
        self._closed = False
        self._loops = [chore.thread() for chore in self._balancer.chores]

    @staticmethod
    def _inner_factory(
        options: dict[str, Any],
    ) -> tuple[Callable[[httpx.Limits | None], httpx.BaseTransport], SocketRegistry | None]:
        """Builds the default inner transports (each host's small pools, the one for other hosts, the
        health checks'), and the registry of their sockets. ``lbclient.httpx2`` overrides it to send
        through httpx2's own transports."""
        registry = SocketRegistry()
        return inner_factory(httpx.HTTPTransport, options, registry=registry), registry

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send a pool request to a host of the pool (retried as the policy allows); any other request
        goes straight to the inner transport."""
        balancer = self._balancer
        connections = self._connections
        if not balancer.owns(request):
            return connections.passthrough().handle_request(request)
        connections.sweep(balancer.pool)
        _close_closable(connections)
        exchange = balancer.exchange(request)
        try:
            return self._send(exchange)
        except BaseException:
            if exchange.previous is not None:
                exchange.previous.close()
            raise
        finally:
            exchange.restore()

    def _send(self, exchange: _Exchange) -> httpx.Response:
        try:
            try:
                response = self._attempt(exchange)
            except Exception as exc:
                if not exchange.retries_after(exc):
                    raise
            else:
                if not exchange.retries_after(response):
                    return response
            retrying = tenacity.Retrying(**exchange.retrying_options(time.sleep))
            result: httpx.Response = retrying(self._replay_or_attempt, exchange)
            return result
        except httpx.HTTPError as exc:
            return exchange.give_up(exc)
        except Exception as exc:
            exchange.raise_if_closed(exc)
            raise

    def _replay_or_attempt(self, exchange: _Exchange) -> httpx.Response:
        seed = exchange.take_seed()
        return seed if seed is not None else self._attempt(exchange)

    def _attempt(self, exchange: _Exchange) -> httpx.Response:
        lease = exchange.begin()
        if lease is None:
            assert exchange.previous is not None
            return exchange.previous
        connections = self._connections
        inner: httpx.BaseTransport | None = None
        try:
            inner = connections.for_lease(lease)
            response = inner.handle_request(exchange.request)
            if exchange.should_buffer(response):
                stream = typing.cast(httpx.SyncByteStream, response.stream)
                try:
                    body = b"".join(stream)
                finally:
                    stream.close()
                exchange.buffered(response, body)
        except BaseException as exc:
            exchange.failed(lease, exc)
            if connections.closed and inner is not None:
                inner.close()  # a connection this attempt opened as the client closed must not outlive it
            raise
        exchange.responded(
            lease, response, lambda stream, lease, status: _LeasedStream(stream, lease, status, connections)
        )
        stale = exchange.keep(response)
        if stale is not None:
            stale.close()
        return response

    def __enter__(self) -> LoadBalancingTransport:
        # httpx enters a client's transport and each of its mounts, and a client mounts its balancer as
        # both: the caller's transport is entered (and exited) once, as httpx would do it.
        if not self._entered and self._inner is not None:
            self._entered = True
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._entered and not self._exited:
            self._exited = True
            assert self._inner is not None
            try:
                self._inner.__exit__(exc_type, exc_value, traceback)  # which closes it
            finally:
                self.close()
        else:
            self.close()

    def close(self) -> None:
        """Stop the health checks and discovery thread, cut the requests in flight (they raise
        :class:`ClientClosedError` and are not retried), and close every connection."""
        if not self._closed:
            self._closed = True
            for loop in self._loops:
                loop.stopping.set()
            close_transports(self._not_exited(self._connections.close_all()))
            for loop in self._loops:
                loop.stop()


class AsyncLoadBalancingTransport(_Balancing, httpx.AsyncBaseTransport):
    """The async twin of :class:`LoadBalancingTransport`, on asyncio or trio. Active health checks run as
    an anyio task while the transport (or the client holding it) is open as an async context manager.

    ``hedge`` (a :class:`Hedge`, or seconds of fixed delay; off by default) sends a second attempt of an
    idempotent request to another host when the first is slow, and keeps the first good answer.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        strategy: str | Strategy = "round_robin",
        retries: int | RetryPolicy | None = 3,
        outlier_detection: OutlierDetection | bool | None = True,
        health_check: HealthCheck | bool | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start: float = 0.0,
        hedge: Hedge | float | bool | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        transport_options: Mapping[str, Any] | None = None,
        service: str = DEFAULT_SERVICE,
        sni_hostname: str | None = None,
        max_in_flight: int | None = None,
        bypass: bool = True,
    ) -> None:
        self._connections: Connections[httpx.AsyncBaseTransport] = self._connections_for(
            transport, transport_options, sni_hostname
        )
        self._balancer = _Balancer(
            hosts,
            strategy=strategy,
            retries=retries,
            outlier_detection=outlier_detection,
            health_check=health_check,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
            on_event=on_event,
            service=service,
            connections=self._connections,
            hedge=hedge,
            max_in_flight=max_in_flight,
            bypass=bypass,
        )
        self._inner = transport
        self._entered = self._exited = False
        self._closed = False
        self._loops = [chore.task() for chore in self._balancer.chores]

    @staticmethod
    def _inner_factory(
        options: dict[str, Any],
    ) -> tuple[Callable[[httpx.Limits | None], httpx.AsyncBaseTransport], SocketRegistry | None]:
        """Builds the default inner transports and the registry of their sockets, as
        :meth:`LoadBalancingTransport._inner_factory`."""
        registry = SocketRegistry()
        return inner_factory(httpx.AsyncHTTPTransport, options, registry=registry), registry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send a pool request to a host of the pool (retried, and hedged, as configured); any other
        request goes straight to the inner transport."""
        balancer = self._balancer
        connections = self._connections
        if not balancer.owns(request):
            return await connections.passthrough().handle_async_request(request)
        connections.sweep(balancer.pool)
        await _aclose_closable(connections)
        exchange = balancer.exchange(request)
        try:
            return await self._send(exchange)
        except BaseException:
            if exchange.previous is not None:
                await exchange.previous.aclose()
            raise
        finally:
            exchange.restore()

    async def _send(self, exchange: _Exchange) -> httpx.Response:
        try:
            try:
                response = await self._first(exchange)
            except Exception as exc:
                if not exchange.retries_after(exc):
                    raise
            else:
                if not exchange.retries_after(response):
                    return response
            retrying = tenacity.AsyncRetrying(**exchange.retrying_options(anyio.sleep))
            result: httpx.Response = await retrying(self._replay_or_attempt, exchange)
            return result
        except httpx.HTTPError as exc:
            return exchange.give_up(exc)
        except Exception as exc:
            exchange.raise_if_closed(exc)
            raise

    async def _replay_or_attempt(self, exchange: _Exchange) -> httpx.Response:
        seed = exchange.take_seed()
        return seed if seed is not None else await self._attempt(exchange)

    async def _attempt(
        self, exchange: _Exchange, request: httpx.Request | None = None, *, keep: bool = True
    ) -> httpx.Response:
        lease = exchange.begin(request)
        if lease is None:
            assert exchange.previous is not None
            return exchange.previous
        connections = self._connections
        inner: httpx.AsyncBaseTransport | None = None
        try:
            inner = connections.for_lease(lease)
            response = await inner.handle_async_request(request or exchange.request)
            if exchange.should_buffer(response):
                stream = typing.cast(httpx.AsyncByteStream, response.stream)
                try:
                    body = b"".join([chunk async for chunk in stream])
                finally:
                    await stream.aclose()
                exchange.buffered(response, body)
        except BaseException as exc:
            exchange.failed(lease, exc)
            if connections.closed and inner is not None:
                with anyio.CancelScope(shield=True):
                    await inner.aclose()  # a connection opened as the client closed must not outlive it
            raise
        exchange.responded(
            lease, response, lambda stream, lease, status: _AsyncLeasedStream(stream, lease, status, connections)
        )
        if keep:
            stale = exchange.keep(response)
            if stale is not None:
                await stale.aclose()
        return response

    async def _first(self, exchange: _Exchange) -> httpx.Response:
        """The first attempt, hedged when the request may be."""
        delay = exchange.hedge_delay()
        return await (self._attempt(exchange) if delay is None else self._hedged(exchange, delay))

    async def _hedged(self, exchange: _Exchange, delay: float) -> httpx.Response:
        """Send the request; if it has no answer after ``delay``, send a copy to another host too. The
        first good answer wins and the other attempt is cancelled (or its response closed)."""
        winner: httpx.Response | None = None
        outcomes: list[httpx.Response | Exception] = []
        settled = anyio.Event()
        running = 0

        async def attempt(request: httpx.Request | None) -> None:
            nonlocal winner, running
            try:
                response = await self._attempt(exchange, request, keep=False)
            except Exception as exc:  # noqa: BLE001 - every outcome is weighed below
                outcomes.append(exc)
            else:
                if winner is None and not exchange.should_retry(response):
                    winner = response
                    settled.set()
                else:
                    outcomes.append(response)
            finally:
                running -= 1
                if running == 0:
                    settled.set()

        try:
            async with anyio.create_task_group() as group:
                running = 1
                group.start_soon(attempt, None)
                with anyio.move_on_after(delay):
                    await settled.wait()
                if not settled.is_set() and exchange.may_hedge():
                    running += 1
                    group.start_soon(attempt, exchange.hedge_request())
                await settled.wait()
                exchange.hedge_won = winner is not None
                group.cancel_scope.cancel()
        except BaseException:
            for outcome in (winner, *outcomes):
                if isinstance(outcome, httpx.Response):
                    await outcome.aclose()
            raise
        responses = [outcome for outcome in outcomes if isinstance(outcome, httpx.Response)]
        chosen = winner if winner is not None else (responses[-1] if responses else None)
        for response in responses:
            if response is not chosen:
                await response.aclose()
        if chosen is None:
            error = outcomes[-1]
            assert isinstance(error, Exception)
            raise error
        exchange.keep(chosen)
        return chosen

    async def __aenter__(self) -> AsyncLoadBalancingTransport:
        # Entered once per mount by httpx (a client mounts its balancer twice): the caller's transport
        # is entered and exited once, as httpx would do it.
        if not self._entered and self._inner is not None:
            self._entered = True
            await self._inner.__aenter__()
        for loop in self._loops:
            await loop.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._entered and not self._exited:
            self._exited = True
            assert self._inner is not None
            try:
                with anyio.CancelScope(shield=True):
                    await self._inner.__aexit__(exc_type, exc_value, traceback)  # which closes it
            finally:
                await self.aclose()
        else:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the health-check and discovery tasks, cut the requests in flight (they raise
        :class:`ClientClosedError` and are not retried), and close every connection."""
        if not self._closed:
            self._closed = True
            for loop in self._loops:
                await loop.stop()
            with anyio.CancelScope(shield=True):
                await aclose_transports(self._not_exited(await self._connections.aclose_all()))
