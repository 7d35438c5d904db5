"""The balancing transports: the only place where sync and async differ.

``_Balancer`` holds everything that is not I/O (which requests belong to the pool, the key for hash
strategies, rewriting the request for the picked host, labelling the response); the two transports are
thin shells that call the inner transport and release the host's lease when the response is closed, so
in-flight counts and latency cover the whole body, streamed or not.
"""

from __future__ import annotations

import random
import threading
import time
import typing
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx

from . import _urls
from ._core import DEFAULT_PANIC_THRESHOLD, HostLike, HostState, Lease, Pool, Strategy
from ._exceptions import NoAvailableHostError

__all__ = ["DEFAULT_SERVICE", "AsyncLoadBalancingTransport", "LoadBalancingTransport"]

#: The host name that marks pool requests when none is given: ``.invalid`` never resolves (RFC 6761),
#: so a request that somehow escaped the balancer fails fast instead of reaching a real host.
DEFAULT_SERVICE = "lbclient.invalid"


class _Target:
    """A host's URL parts, prepared once, and the rewrite of a pool request URL onto them."""

    __slots__ = ("scheme", "host", "port", "prefix", "netloc", "url")

    def __init__(self, base_url: str) -> None:
        url = httpx.URL(base_url)
        self.url = base_url
        self.scheme = url.scheme
        self.host = url.raw_host.decode("ascii")
        self.port = url.port
        self.prefix = url.raw_path.decode("ascii").rstrip("/")
        self.netloc = url.netloc.decode("ascii")

    def rewrite(self, url: httpx.URL) -> httpx.URL:
        """``url`` sent to this host: its scheme, host and port, and its prefix before the path."""
        path = self.prefix + url.raw_path.decode("ascii").split("?", 1)[0]
        return _urls.replace(url, scheme=self.scheme, userinfo="", host=self.host, port=self.port, path=path)


def _client_ip(request: httpx.Request) -> str | None:
    forwarded: str | None = request.headers.get("x-forwarded-for")
    if forwarded:
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    real_ip: str | None = request.headers.get("x-real-ip")
    return real_ip or None


def _check_service(service: object) -> str:
    if not isinstance(service, str) or not service or "/" in service or ":" in service:
        raise ValueError(f"service must be a host name such as 'users', got {service!r}")
    return service.lower()


class _Balancer:
    """Routing shared by both transports: no I/O here."""

    __slots__ = ("pool", "service", "_key_source", "_targets")

    def __init__(
        self,
        hosts: Iterable[HostLike],
        strategy: str | Strategy,
        panic_threshold: float,
        service: str,
    ) -> None:
        self.service = _check_service(service)
        self.pool = Pool(
            hosts,
            strategy,
            clock=time.monotonic,
            rng=random.Random(),
            lock=threading.Lock(),
            panic_threshold=panic_threshold,
        )
        self._key_source = self.pool.strategy.key_source
        self._targets: dict[str, _Target] = {}

    def owns(self, request: httpx.Request) -> bool:
        """A pool request names the service as its host; anything else passes through."""
        return request.url.host == self.service

    def _key(self, request: httpx.Request) -> str | None:
        key: object = request.extensions.get("lb_key")
        if key is not None:
            return key.decode() if isinstance(key, bytes) else str(key)
        if self._key_source == "client_ip":
            return _client_ip(request)
        if self._key_source == "path":
            return request.url.path
        return None

    def _target(self, host: HostState) -> _Target:
        target = self._targets.get(host.url)
        if target is None:
            if len(self._targets) > 2 * len(self.pool.hosts) + 16:
                self._targets.clear()  # forget hosts that left the pool
            target = self._targets[host.url] = _Target(host.url)
        return target

    def start(self, request: httpx.Request) -> Lease:
        """Pick a host, count the request against it, and point the request at it."""
        lease = self.pool.acquire(self._key(request))
        if lease is None:
            raise NoAvailableHostError(
                f"no host of {self.service!r} can take the request: {self.pool!r}", request=request
            )
        target = self._target(lease.host)
        request.url = target.rewrite(request.url)
        request.headers["Host"] = target.netloc
        return lease

    @staticmethod
    def label(response: httpx.Response, lease: Lease) -> bool | None:
        """Name the host on the response. Returns whether the response counts as a host failure (5xx),
        or ``None`` when the response is already closed (a body built in memory, as mock transports
        return): then the lease ends here, as there will be no close to wait for."""
        response.extensions["lb_host"] = lease.host.url
        response.extensions["lb_attempts"] = 1
        failed = response.status_code >= 500
        if response.is_closed:
            lease.release(failed=failed)
            return None
        return failed


class _LeasedStream(httpx.SyncByteStream):
    """The response body; closing it ends the request's lease."""

    __slots__ = ("_stream", "_lease", "_failed")

    def __init__(self, stream: httpx.SyncByteStream, lease: Lease, failed: bool) -> None:
        self._stream = stream
        self._lease = lease
        self._failed = failed

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
            self._lease.release(failed=self._failed)


class _AsyncLeasedStream(httpx.AsyncByteStream):
    """The async response body; closing it ends the request's lease."""

    __slots__ = ("_stream", "_lease", "_failed")

    def __init__(self, stream: httpx.AsyncByteStream, lease: Lease, failed: bool) -> None:
        self._stream = stream
        self._lease = lease
        self._failed = failed

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
            self._lease.release(failed=self._failed)


class LoadBalancingTransport(httpx.BaseTransport):
    """An httpx transport that spreads the requests for ``service`` over ``hosts``.

    Mount it on any client: ``httpx.Client(mounts={"all://users": LoadBalancingTransport(hosts,
    service="users")})``; then ``client.get("http://users/api")`` goes to one of the hosts. Requests for
    any other host pass straight to ``transport`` (the inner transport, ``httpx.HTTPTransport()`` by
    default), which also carries the balanced requests and is closed with this transport.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike],
        *,
        strategy: str | Strategy = "round_robin",
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        transport: httpx.BaseTransport | None = None,
        service: str = DEFAULT_SERVICE,
    ) -> None:
        self._balancer = _Balancer(hosts, strategy, panic_threshold, service)
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._closed = False

    @property
    def pool(self) -> Pool:
        """The hosts and their live state; ``pool.update(hosts)`` changes them at run time."""
        return self._balancer.pool

    @property
    def service(self) -> str:
        return self._balancer.service

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        balancer = self._balancer
        if not balancer.owns(request):
            return self._inner.handle_request(request)
        lease = balancer.start(request)
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            lease.release(failed=True)
            raise
        failed = balancer.label(response, lease)
        if failed is not None:
            response.stream = _LeasedStream(typing.cast(httpx.SyncByteStream, response.stream), lease, failed)
        return response

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.close()

    def __repr__(self) -> str:
        return f"<LoadBalancingTransport service={self.service!r} {self.pool!r}>"


class AsyncLoadBalancingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`LoadBalancingTransport` (asyncio and trio)."""

    def __init__(
        self,
        hosts: Iterable[HostLike],
        *,
        strategy: str | Strategy = "round_robin",
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        transport: httpx.AsyncBaseTransport | None = None,
        service: str = DEFAULT_SERVICE,
    ) -> None:
        self._balancer = _Balancer(hosts, strategy, panic_threshold, service)
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._closed = False

    @property
    def pool(self) -> Pool:
        """The hosts and their live state; ``pool.update(hosts)`` changes them at run time."""
        return self._balancer.pool

    @property
    def service(self) -> str:
        return self._balancer.service

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        balancer = self._balancer
        if not balancer.owns(request):
            return await self._inner.handle_async_request(request)
        lease = balancer.start(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            lease.release(failed=True)
            raise
        failed = balancer.label(response, lease)
        if failed is not None:
            response.stream = _AsyncLeasedStream(typing.cast(httpx.AsyncByteStream, response.stream), lease, failed)
        return response

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._inner.aclose()

    def __repr__(self) -> str:
        return f"<AsyncLoadBalancingTransport service={self.service!r} {self.pool!r}>"
