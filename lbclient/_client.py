"""``LBClient`` and ``AsyncLBClient``: httpx clients whose relative requests are balanced.

Both are plain httpx clients with a balancing transport mounted for the pool's service name; the
client's ``base_url`` names that service, so ``client.get("/api")`` is a pool request and
``client.get("https://example.org/x")`` bypasses the pool. Everything else is httpx's own behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from . import _urls
from ._balancer import check_service
from ._core import (
    DEFAULT_PANIC_THRESHOLD,
    HealthCheck,
    Hedge,
    HostLike,
    OutlierDetection,
    Pool,
    PoolEvent,
    RetryPolicy,
    Strategy,
)
from ._discovery import Discovery
from ._transports import DEFAULT_SERVICE, AsyncLoadBalancingTransport, LoadBalancingTransport

__all__ = ["AsyncLBClient", "LBClient"]

# The httpx client keywords that configure its default transport; the balancer's default inner
# transport is built from the same ones, exactly as httpx would build it.
_TRANSPORT_KEYWORDS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")


def _service_and_base_url(service: str | None, base_url: httpx.URL | str | None) -> tuple[str, str]:
    """The pool's origin (``service=`` of the transports) and the client's base URL.

    A ``base_url`` with a host names the service and the pool's origin: ``base_url="http://users/api"``
    is service ``users`` with ``/api`` in front of every path; ``base_url="https://www.example.com:8443/"``
    makes ``https://www.example.com:8443`` the pool's origin. Its scheme and port only say which URLs are
    the pool's: the hosts still give the scheme and port each request is sent with. A ``base_url``
    without a host is only a path under the service."""
    if base_url is None or base_url == "":
        name = DEFAULT_SERVICE if service is None else service
        return name, name if "://" in name else f"http://{name}"
    url = httpx.URL(base_url)
    if url.host:
        if service is not None and check_service(service)[0] != url.host:
            raise ValueError(f"base_url {str(base_url)!r} names host {url.host!r} but service is {service!r}")
        return f"{url.scheme}://{url.netloc.decode('ascii')}", str(base_url)
    name = DEFAULT_SERVICE if service is None else service
    origin = name if "://" in name else f"http://{name}"
    return name, origin.rstrip("/") + url.raw_path.decode("ascii")


def _client_kwargs(kwargs: dict[str, Any], service: str | None) -> tuple[str, dict[str, Any], dict[str, Any], bool]:
    """Split the httpx keywords: (the pool's origin, keywords for the inner transport, keywords for httpx,
    whether the caller gave a base_url)."""
    given = kwargs.pop("base_url", None)
    name, base_url = _service_and_base_url(service, given)
    inner = {key: kwargs[key] for key in _TRANSPORT_KEYWORDS if key in kwargs}
    kwargs["base_url"] = base_url
    return name, inner, kwargs, given not in (None, "")


def _mount_key(service: str) -> str:
    """The mount pattern for every request that names ``service``, whatever its scheme and port."""
    return f"all://[{service}]" if ":" in service else f"all://{service}"


class _PoolClient:
    """What both balancing clients add to their httpx base class."""

    base_url: httpx.URL
    _balancer: LoadBalancingTransport | AsyncLoadBalancingTransport
    #: The caller gave a base_url (else relative URLs that are not plain paths are left as httpx leaves them).
    _own_base_url: bool
    #: The caller gave ``transport=`` (then httpx reads no proxies from the environment), or ``bypass=False``.
    _no_env_proxies: bool

    @property
    def pool(self) -> Pool:
        """The hosts and their live state; ``pool.update(hosts)`` changes them at run time."""
        return self._balancer.pool

    @property
    def service(self) -> str:
        """The host name that marks this client's pool requests (``lbclient.invalid`` unless named)."""
        return self._balancer.service

    @property
    def bypass(self) -> bool:
        """False: a request that is not the pool's raises :class:`NotInPoolError` instead of going out."""
        return self._balancer.bypass

    def _init_transport(self, *args: Any, **kwargs: Any) -> Any:
        # httpx builds its default transport here; ours is the balancer. httpx is given no transport=,
        # so that it builds its proxy mounts (proxy=, and the environment's when trust_env) as it does
        # for a client of its own.
        return self._balancer

    def _get_proxy_map(self, proxy: Any, allow_env_proxies: bool) -> Any:
        if not self._balancer.bypass:
            return {}  # nothing leaves the pool: no proxy mount may take a request that is not the pool's
        return super()._get_proxy_map(proxy, allow_env_proxies and not self._no_env_proxies)  # type: ignore[misc]

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        # httpx merges a relative URL onto base_url with copy_with, which parses the URL a second
        # time; every pool request pays it, so merge the parsed parts instead (same result).
        merged = httpx.URL(url)
        if not merged.is_relative_url:
            return merged
        if merged.scheme or merged.host:
            # "http://", "://example.org", "//other.host/x": not a path, so not the pool's. Merged as httpx
            # merges it onto the caller's base_url, or left as is, to fail with httpx's own error.
            if self._own_base_url:
                kept: httpx.URL = super()._merge_url(url)  # type: ignore[misc]
                return kept
            return httpx.URL("/").copy_with(raw_path=b"/" + merged.raw_path.lstrip(b"/"))  # as onto httpx's ""
        if b"/." in merged.raw_path or merged.raw_path.startswith(b"."):
            normalised: httpx.URL = super()._merge_url(url)  # type: ignore[misc]  # httpx removes dot segments
            return normalised
        raw = (self.base_url.raw_path + merged.raw_path.lstrip(b"/")).decode("ascii")
        path, sep, query = raw.partition("?")
        return _urls.replace(self.base_url, path=path, query=query if sep else None)


class LBClient(_PoolClient, httpx.Client):
    """An ``httpx.Client`` that balances its relative requests over ``hosts``.

    Takes every ``httpx.Client`` keyword; ``transport=`` is the inner transport that the balancer sends
    through. Without it each host gets its own ``httpx.HTTPTransport`` built from ``verify``, ``cert``,
    ``http1``, ``http2``, ``limits``, ``proxy`` and ``trust_env``, as httpx builds its own (``limits``
    then apply per host). The balancing keywords are those of
    :class:`LoadBalancingTransport`; ``sni_hostname`` is the TLS server name sent and verified for HTTPS
    hosts that have none of their own (``Host(url, sni_hostname=...)``), while the connection goes to the
    host's address. ``client.pool`` is the live host set. Active health checks run on a
    background thread from construction until ``close()``.
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
        service: str | None = None,
        sni_hostname: str | None = None,
        max_in_flight: int | None = None,
        bypass: bool = True,
        **kwargs: Any,
    ) -> None:
        name, inner_kwargs, kwargs, self._own_base_url = _client_kwargs(kwargs, service)
        inner = kwargs.pop("transport", None)
        self._no_env_proxies = inner is not None
        balancer = LoadBalancingTransport(
            hosts,
            strategy=strategy,
            retries=retries,
            outlier_detection=outlier_detection,
            health_check=health_check,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
            on_event=on_event,
            transport=inner,
            transport_options=inner_kwargs,
            service=name,
            sni_hostname=sni_hostname,
            max_in_flight=max_in_flight,
            bypass=bypass,
        )
        # Mounted for the service name so that proxy mounts from the environment never capture pool
        # requests; also the default transport, so other absolute URLs go through the inner one.
        # httpx's own proxy mounts never capture pool requests (nor those naming the service with another
        # scheme or port, which the balancer refuses); other absolute URLs go to the balancer, which
        # passes them to the inner transport.
        mounts = {_mount_key(balancer.service): balancer, **(kwargs.pop("mounts", None) or {})}
        self._balancer = balancer
        try:
            super().__init__(mounts=mounts, **kwargs)
        except BaseException:
            balancer.close()  # stop the health-check thread it may have started
            raise


class AsyncLBClient(_PoolClient, httpx.AsyncClient):
    """The async twin of :class:`LBClient`, on asyncio or trio. Active health checks run as an anyio task
    inside ``async with client:``. ``hedge=`` (async only) hedges slow idempotent requests."""

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
        service: str | None = None,
        sni_hostname: str | None = None,
        max_in_flight: int | None = None,
        bypass: bool = True,
        **kwargs: Any,
    ) -> None:
        name, inner_kwargs, kwargs, self._own_base_url = _client_kwargs(kwargs, service)
        inner = kwargs.pop("transport", None)
        self._no_env_proxies = inner is not None
        balancer = AsyncLoadBalancingTransport(
            hosts,
            strategy=strategy,
            retries=retries,
            outlier_detection=outlier_detection,
            health_check=health_check,
            panic_threshold=panic_threshold,
            slow_start=slow_start,
            hedge=hedge,
            on_event=on_event,
            transport=inner,
            transport_options=inner_kwargs,
            service=name,
            sni_hostname=sni_hostname,
            max_in_flight=max_in_flight,
            bypass=bypass,
        )
        mounts = {_mount_key(balancer.service): balancer, **(kwargs.pop("mounts", None) or {})}
        self._balancer = balancer
        super().__init__(mounts=mounts, **kwargs)
