"""The balancing transports for `httpx2 <https://pypi.org/project/httpx2/>`_ clients (extra ``httpx2``).

httpx2 is the maintained fork of httpx: the same API, its own classes. These transports are a thin bridge
on the one balancer of :mod:`lbclient`: each holds an ``lbclient`` transport and converts at the edges
(requests in, responses and their bodies out, errors both ways)::

    import httpx2
    from lbclient.httpx2 import LoadBalancingTransport

    users = LoadBalancingTransport(["10.0.0.1:80", "10.0.0.2:80"], service="users")
    client = httpx2.Client(mounts={"all://users": users})
    client.get("http://users/api/profile")  # balanced; any other host passes straight through

The I/O is httpx2's own (httpcore2): ``transport=`` is an httpx2 transport, and without one each host gets
small pools of ``httpx2.HTTPTransport`` built from ``transport_options`` (httpx2's ``verify``, ``limits``,
``http2``, ...). An httpx2 error of an inner transport reaches the balancer as the httpx error of the same
name, so retries and outlier detection classify it as usual; the errors leaving these transports are
httpx2's again, notes included (:class:`NoAvailableHostError` for ``lbclient.NoAvailableHostError``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import ModuleType, TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

import httpx

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("lbclient.httpx2 needs httpx2: pip install 'lbclient[httpx2]'") from exc

from . import _exceptions, _transports
from ._connections import SocketRegistry, inner_factory
from ._core import HostLike, Pool
from ._discovery import Discovery
from ._transports import AsyncBalancingOptions, BalancingOptions

__all__ = ["AsyncLoadBalancingTransport", "LoadBalancingTransport", "NoAvailableHostError"]


class NoAvailableHostError(httpx2.TransportError):
    """No host of the pool could be picked for the request: ``lbclient.NoAvailableHostError`` for httpx2."""


# -- errors ------------------------------------------------------------------------------------------------

_Make = Callable[[BaseException, Any], Exception]


def _maker(cls: type[Exception], request_error: type[Exception]) -> _Make:
    """How to build ``cls`` from an error of the other library (and the request, for request errors)."""
    build: Callable[..., Exception] = cls
    if issubclass(cls, request_error):
        return lambda exc, request: build(str(exc), request=request)
    if not inspect.signature(cls).parameters:  # StreamConsumed(), StreamClosed(), ...: a fixed message
        return lambda exc, request: build()
    return lambda exc, request: build(str(exc))


class _Direction:
    """One way across the bridge, from ``source`` (httpx or httpx2) to ``target``: its errors become the
    target's errors of the same name, from a table built once from the names both export; a subclass
    becomes its nearest mapped base. Errors with no counterpart pass unchanged."""

    __slots__ = ("target", "_makers", "_resolved")

    def __init__(
        self, source: ModuleType, target: ModuleType, extra: Mapping[type[BaseException], type[Exception]]
    ) -> None:
        self.target = target
        pairs: dict[type[BaseException], type[Exception]] = {}
        for name in sorted(set(source.__all__) & set(target.__all__)):  # other names may be lazy, deprecated
            theirs, ours = getattr(source, name), getattr(target, name)
            if (
                isinstance(theirs, type)
                and issubclass(theirs, Exception)
                and isinstance(ours, type)
                and issubclass(ours, Exception)
            ):
                pairs[theirs] = ours
        pairs.update(extra)
        self._makers: dict[type[BaseException], _Make | None] = {
            theirs: _maker(ours, target.RequestError) for theirs, ours in pairs.items()
        }
        # raise_for_status() raises it, never a transport; it needs a response of its own library.
        self._makers[source.HTTPStatusError] = None
        self._resolved: dict[type[BaseException], _Make | None] = {}

    def convert(self, exc: BaseException, request: Any) -> Exception | None:
        """``exc`` as the target's error of the same name, with its notes; None when there is none."""
        cls = type(exc)
        try:
            make = self._resolved[cls]
        except KeyError:
            make = self._resolved[cls] = next(
                (self._makers[base] for base in cls.__mro__ if base in self._makers), None
            )
        if make is None:
            return None
        new = make(exc, request)
        for note in getattr(exc, "__notes__", ()):
            new.add_note(note)
        return new

    def errors(self, request: Any = None) -> _Converting:
        """A context that raises the source library's errors as the target's (``raise ... from exc``)."""
        return _Converting(self, request)


class _Converting:
    __slots__ = ("_direction", "_request")

    def __init__(self, direction: _Direction, request: Any) -> None:
        self._direction = direction
        self._request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, Exception):  # cancellation and exits pass untouched
            new = self._direction.convert(exc, self._request)
            if new is not None:
                raise new from exc


_TO_HTTPX = _Direction(httpx2, httpx, {})
_TO_HTTPX2 = _Direction(httpx, httpx2, {_exceptions.NoAvailableHostError: NoAvailableHostError})


# -- requests, responses and bodies --------------------------------------------------------------------------


_HttpxParsed = type(httpx.URL("http://x/")._uri_reference)
_Httpx2Parsed = type(httpx2.URL("http://x/")._uri_reference)


def _url_to_httpx(url: httpx2.URL, *, fast: bool) -> httpx.URL:
    """The same URL as httpx's. Both libraries keep a parsed URL as the same NamedTuple, already
    validated and encoded: copying its fields (``fast``) takes about 1 us, parsing the string again 10."""
    if not fast:
        return httpx.URL(str(url))
    new = httpx.URL.__new__(httpx.URL)
    new._uri_reference = _HttpxParsed(*url._uri_reference)
    return new


def _url_to_httpx2(url: httpx.URL, *, fast: bool) -> httpx2.URL:
    """The same URL as httpx2's (see :func:`_url_to_httpx`)."""
    if not fast:
        return httpx2.URL(str(url))
    new = httpx2.URL.__new__(httpx2.URL)
    new._uri_reference = _Httpx2Parsed(*url._uri_reference)
    return new


def _fast_urls() -> bool:
    """Do both libraries still keep URLs the same way? If either changes, the string is parsed again."""
    probe = "http://user:pw@[::1]:8080/a%20b/%C3%A9?q=1&r=%2F#frag"
    try:
        return (
            _HttpxParsed._fields == _Httpx2Parsed._fields
            and str(_url_to_httpx(httpx2.URL(probe), fast=True)) == str(httpx.URL(probe)) == probe
            and _url_to_httpx2(httpx.URL(probe), fast=True) == httpx2.URL(probe)
        )
    except Exception:  # noqa: BLE001 - any surprise means: take the public way
        return False


_FAST_URLS = _fast_urls()


class _SyncBody(httpx.SyncByteStream, httpx2.SyncByteStream):
    """A body of one library as the other's (it is both): iterates and closes ``source``, and raises the
    source library's errors as the other's. Closing it closes the source: a lease ends, a connection
    goes back to its pool."""

    __slots__ = ("source", "_direction")

    def __init__(self, source: httpx.SyncByteStream | httpx2.SyncByteStream, direction: _Direction) -> None:
        self.source = source
        self._direction = direction

    def __iter__(self) -> Iterator[bytes]:
        with self._direction.errors():
            yield from self.source

    def close(self) -> None:
        with self._direction.errors():
            self.source.close()


class _AsyncBody(httpx.AsyncByteStream, httpx2.AsyncByteStream):
    """The async :class:`_SyncBody`."""

    __slots__ = ("source", "_direction")

    def __init__(self, source: httpx.AsyncByteStream | httpx2.AsyncByteStream, direction: _Direction) -> None:
        self.source = source
        self._direction = direction

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._direction.errors():
            async for chunk in self.source:
                yield chunk

    async def aclose(self) -> None:
        with self._direction.errors():
            await self.source.aclose()


def _body(stream: Any, direction: _Direction, *, sync: bool) -> Any:
    """``stream`` for ``direction``'s target library. A body in memory stays in memory (the balancer
    replays only those on a retry or a hedge); a body that crossed the bridge before gets its original
    back; any other is wrapped."""
    if isinstance(stream, (httpx.ByteStream, httpx2.ByteStream)):
        return direction.target.ByteStream(b"".join(stream))
    if isinstance(stream, (_SyncBody, _AsyncBody)):
        return stream.source
    if sync:
        if not isinstance(stream, (httpx.SyncByteStream, httpx2.SyncByteStream)):
            raise TypeError(f"a sync transport got an async body: {stream!r}")
        return _SyncBody(stream, direction)
    if not isinstance(stream, (httpx.AsyncByteStream, httpx2.AsyncByteStream)):
        raise TypeError(f"an async transport got a sync body: {stream!r}")
    return _AsyncBody(stream, direction)


def _to_httpx(request: httpx2.Request, *, sync: bool) -> httpx.Request:
    """The caller's httpx2 request as an httpx request for the balancer (which points it at a host)."""
    return httpx.Request(
        request.method,
        _url_to_httpx(request.url, fast=_FAST_URLS),
        headers=request.headers.raw,
        stream=_body(request.stream, _TO_HTTPX, sync=sync),
        extensions=request.extensions,
    )


def _to_httpx2(request: httpx.Request, *, sync: bool) -> httpx2.Request:
    """An attempt of the balancer as an httpx2 request for an inner httpx2 transport."""
    return httpx2.Request(
        request.method,
        _url_to_httpx2(request.url, fast=_FAST_URLS),
        headers=request.headers.raw,
        stream=_body(request.stream, _TO_HTTPX2, sync=sync),
        extensions=request.extensions,
    )


def _response_to_httpx(response: httpx2.Response, *, sync: bool) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers.raw,
        stream=_body(response.stream, _TO_HTTPX, sync=sync),
        extensions=response.extensions,
    )


def _response_to_httpx2(response: httpx.Response, *, sync: bool) -> httpx2.Response:
    return httpx2.Response(
        response.status_code,
        headers=response.headers.raw,
        stream=_body(response.stream, _TO_HTTPX2, sync=sync),
        extensions=response.extensions,  # lb_host and lb_attempts among them
    )


# -- inner transports: httpx2's, seen by the balancer as httpx's -----------------------------------------------


class _Inner(httpx.BaseTransport):
    """An httpx2 transport as an httpx one, for the balancer to send its attempts through."""

    __slots__ = ("transport",)

    def __init__(self, transport: httpx2.BaseTransport) -> None:
        self.transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _TO_HTTPX.errors(request):
            response = self.transport.handle_request(_to_httpx2(request, sync=True))
        return _response_to_httpx(response, sync=True)

    def close(self) -> None:
        self.transport.close()


class _AsyncInner(httpx.AsyncBaseTransport):
    """An async httpx2 transport as an httpx one."""

    __slots__ = ("transport",)

    def __init__(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _TO_HTTPX.errors(request):
            response = await self.transport.handle_async_request(_to_httpx2(request, sync=False))
        return _response_to_httpx(response, sync=False)

    async def aclose(self) -> None:
        await self.transport.aclose()


def _httpx2_limits(options: dict[str, Any]) -> dict[str, Any]:
    """The balancer sizes each host's small pools with an ``httpx.Limits``: httpx2's transport takes its own."""
    limits = options.get("limits")
    if isinstance(limits, httpx.Limits):
        options["limits"] = httpx2.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
    return options


def _build_sync(**options: Any) -> _Inner:
    return _Inner(httpx2.HTTPTransport(**_httpx2_limits(options)))


def _build_async(**options: Any) -> _AsyncInner:
    return _AsyncInner(httpx2.AsyncHTTPTransport(**_httpx2_limits(options)))


class _Core(_transports.LoadBalancingTransport):
    """The balancer, sending through httpx2's transports."""

    @staticmethod
    def _inner_factory(
        options: dict[str, Any],
    ) -> tuple[Callable[[httpx.Limits | None], httpx.BaseTransport], SocketRegistry | None]:
        # httpcore2's sockets are its own: there is no registry to shut them down from here.
        return inner_factory(_build_sync, options, create_ssl_context=httpx2.create_ssl_context), None

    def passthrough(self) -> httpx2.BaseTransport:
        """The httpx2 transport for requests that are not the pool's: no conversion on their way."""
        inner = self._connections.passthrough()
        assert isinstance(inner, _Inner)
        return inner.transport


class _AsyncCore(_transports.AsyncLoadBalancingTransport):
    """The async balancer, sending through httpx2's transports."""

    @staticmethod
    def _inner_factory(
        options: dict[str, Any],
    ) -> tuple[Callable[[httpx.Limits | None], httpx.AsyncBaseTransport], SocketRegistry | None]:
        return inner_factory(_build_async, options, create_ssl_context=httpx2.create_ssl_context), None

    def passthrough(self) -> httpx2.AsyncBaseTransport:
        inner = self._connections.passthrough()
        assert isinstance(inner, _AsyncInner)
        return inner.transport


# -- the public transports -------------------------------------------------------------------------------------


_CoreT = TypeVar("_CoreT", _Core, _AsyncCore)


class _Bridged(Generic[_CoreT]):
    """What both public transports read from the balancer they hold."""

    _core: _CoreT

    @property
    def pool(self) -> Pool:
        """The hosts and their live state; ``pool.update(hosts)`` changes them at run time."""
        return self._core.pool

    @property
    def service(self) -> str:
        """The host name that marks this transport's pool requests."""
        return self._core.service

    def __repr__(self) -> str:
        return f"<lbclient.httpx2.{type(self).__name__} service={self.service!r} {self.pool!r}>"


class LoadBalancingTransport(_Bridged[_Core], httpx2.BaseTransport):
    """An httpx2 transport that spreads the requests for ``service`` over ``hosts``: mount it on an
    ``httpx2.Client``. The keywords are those of :class:`lbclient.LoadBalancingTransport`; ``transport`` is
    an httpx2 transport, and ``transport_options`` are httpx2's (``limits`` an ``httpx2.Limits``).
    Responses carry ``lb_host`` and ``lb_attempts`` in their extensions.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        transport: httpx2.BaseTransport | None = None,
        transport_options: Mapping[str, Any] | None = None,
        **options: Unpack[BalancingOptions],
    ) -> None:
        inner = None if transport is None else _Inner(transport)
        self._core = _Core(hosts, transport=inner, transport_options=transport_options, **options)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send a pool request to a host of the pool; any other request straight through."""
        core = self._core
        if request.url.host != core.service and core.bypass:
            return core.passthrough().handle_request(request)
        # The core refuses what it must (bypass=False; the service with another scheme or port), as
        # httpx2's UnsupportedProtocol.
        with _TO_HTTPX2.errors(request):
            response = core.handle_request(_to_httpx(request, sync=True))
        return _response_to_httpx2(response, sync=True)

    def close(self) -> None:
        """Stop the health checks and close the inner transports."""
        self._core.close()


class AsyncLoadBalancingTransport(_Bridged[_AsyncCore], httpx2.AsyncBaseTransport):
    """The async :class:`LoadBalancingTransport`, for ``httpx2.AsyncClient`` on asyncio or trio; the
    keywords are those of :class:`lbclient.AsyncLoadBalancingTransport` (``hedge`` included). Active
    health checks run while the transport (or the client holding it) is open as an async context manager.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        transport_options: Mapping[str, Any] | None = None,
        **options: Unpack[AsyncBalancingOptions],
    ) -> None:
        inner = None if transport is None else _AsyncInner(transport)
        self._core = _AsyncCore(hosts, transport=inner, transport_options=transport_options, **options)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send a pool request to a host of the pool; any other request straight through."""
        core = self._core
        if request.url.host != core.service and core.bypass:
            return await core.passthrough().handle_async_request(request)
        with _TO_HTTPX2.errors(request):
            response = await core.handle_async_request(_to_httpx(request, sync=False))
        return _response_to_httpx2(response, sync=False)

    async def __aenter__(self) -> Self:
        """Start the active health checks (when configured)."""
        await self._core.__aenter__()
        return self

    async def aclose(self) -> None:
        """Stop the health checks and close the inner transports."""
        await self._core.aclose()
