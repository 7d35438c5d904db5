"""Everything the two transports share, with no I/O: which requests belong to the pool, the key for hash
strategies, pointing a request at the picked host, and one request's journey over its attempts
(``_Exchange``: retry decisions, per-try timeouts, labels, what to return when attempts run out).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
import tenacity

from ._connections import Connections, Target
from ._core import Host, HostLike, HostState, Lease, Pool, PoolEvent, Strategy
from ._core._config import HealthCheck, Hedge, OutlierDetection, RetryPolicy
from ._core._retry import FailureKind, RetryBudget, RetryPlan, may_resend
from ._discovery import Discovery, Refresher
from ._exceptions import ClientClosedError, NoAvailableHostError, NotInPoolError
from ._health import HTTPHealthChecks

__all__ = ["check_service", "logger"]

#: Ejections, returns, health changes, panic and retries are logged here, with the host and the reason.
logger = logging.getLogger("lbclient")

_EVENT_LEVELS = {
    "ejected": logging.WARNING,
    "unhealthy": logging.WARNING,
    "panic": logging.WARNING,
}

#: Builds the body wrapper that releases a lease on close (given the response's status): the sync or the
#: async one.
StreamWrapper = Callable[[Any, Lease, int], httpx.SyncByteStream | httpx.AsyncByteStream]


def _client_ip(request: httpx.Request) -> str | None:
    forwarded: str | None = request.headers.get("x-forwarded-for")
    if forwarded:
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    real_ip: str | None = request.headers.get("x-real-ip")
    return real_ip or None


def check_service(service: object) -> tuple[str, str, int | None]:
    """The pool's origin from ``service``: a host name (``"users"``: ``http://users``), or an origin
    URL (``"https://users:8443"``): (host, scheme, port, None for the scheme's default)."""
    if isinstance(service, str) and "://" in service:
        try:
            url = httpx.URL(service)
        except httpx.InvalidURL:
            url = None
        if url is not None and url.host and url.raw_path in (b"", b"/") and not url.userinfo and not url.fragment:
            return url.host, url.scheme, url.port
        raise ValueError(
            f"service must be a host name such as 'users' or an origin such as 'https://users', got {service!r}"
        )
    valid = isinstance(service, str) and service.strip() == service and service != ""
    if valid:
        assert isinstance(service, str)
        try:
            url = httpx.URL(f"http://{service}/")
            valid = url.host == service.lower() and url.port is None
        except httpx.InvalidURL:
            valid = False
    if not valid:
        raise ValueError(f"service must be a host name such as 'users', got {service!r}")
    return str(service).lower(), "http", None


def failure_kind(exc: BaseException) -> FailureKind | None:
    """How far a failed attempt got: ``connect`` (never reached a server), ``sent`` (may have), or None
    for errors that say nothing about the host (bad URL, a body error on our side, cancellation)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return "connect"
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return "sent"
    return None


def request_idempotent(request: httpx.Request) -> bool | None:
    """The request's own word on resending (``extensions={"lb_idempotent": True}`` or ``False``), or
    None when it gives none and the method decides."""
    value: object = request.extensions.get("lb_idempotent")
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(
        f'extensions["lb_idempotent"] must be True or False, got {value!r} on {request.method} {request.url}'
    )


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` on 429 and 503), if it did."""
    if response.status_code not in (429, 503):
        return None
    value: str | None = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: as if absent (RFC 9110 says to ignore it)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _log_event(service: str, on_event: Callable[[PoolEvent], None] | None) -> Callable[[PoolEvent], None]:
    """Log each event, then hand it to the user's ``on_event``; a failing hook never fails a request or
    stops a background chore."""
    if on_event is not None and not callable(on_event):
        raise TypeError(f"on_event must be a callable taking a PoolEvent, got {on_event!r}")

    def log(event: PoolEvent) -> None:
        level = _EVENT_LEVELS.get(event.kind, logging.INFO)
        logger.log(level, "%s: %s %s: %s", service, event.kind, event.host or "pool", event.reason)
        if on_event is not None:
            try:
                on_event(event)
            except Exception:
                logger.exception("%s: on_event hook %r failed on %s", service, on_event, event)

    return log


def live_pool(
    hosts: Iterable[HostLike] | Discovery,
    strategy: str | Strategy,
    *,
    service: str,
    panic_threshold: float,
    outlier_detection: OutlierDetection | bool | None,
    health_check: HealthCheck | None,
    slow_start: float,
    on_event: Callable[[PoolEvent], None] | None,
    host_check: Callable[[Host], None] | None = None,
    latency_window: int = 0,
    max_in_flight: int | None = None,
) -> tuple[Pool, Refresher | None]:
    """A pool on the real clock, with a lock for threads and events logged (and given to ``on_event``),
    and the refresher that follows ``hosts`` when it is a discovery source (None for a list)."""
    made: list[Pool] = []
    refresher = None
    if isinstance(hosts, Discovery):
        refresher = Refresher(hosts, lambda: made[0], service)
        hosts = refresher.first()
    pool = Pool(
        hosts,
        strategy,
        clock=time.monotonic,
        rng=random.Random(),
        lock=threading.Lock(),
        panic_threshold=panic_threshold,
        outlier_detection=OutlierDetection.coerce(outlier_detection),
        health_check=health_check,
        slow_start=slow_start,
        listener=_log_event(service, on_event),
        host_check=host_check,
        latency_window=latency_window,
        max_in_flight=max_in_flight,
    )
    made.append(pool)
    return pool, refresher


def retry_budget(policy: RetryPolicy) -> RetryBudget:
    """The retry budget ``policy`` describes, on the real clock, safe to share between threads."""
    return RetryBudget(
        policy.budget_ratio,
        policy.budget_min_retries,
        policy.budget_window,
        clock=time.monotonic,
        lock=threading.Lock(),
    )


class _Balancer:
    """The pool, its retry budget and settings: one per transport."""

    __slots__ = (
        "pool",
        "service",
        "scheme",
        "port",
        "bypass",
        "retries",
        "health_check",
        "hedge",
        "budget",
        "hedge_budget",
        "chores",
        "connections",
        "_key_source",
        "_rng",
    )

    def __init__(
        self,
        hosts: Iterable[HostLike] | Discovery,
        *,
        strategy: str | Strategy,
        retries: int | RetryPolicy | None,
        outlier_detection: OutlierDetection | bool | None,
        health_check: HealthCheck | bool | None,
        panic_threshold: float,
        slow_start: float,
        service: str,
        connections: Connections[Any],
        hedge: Hedge | float | bool | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
        max_in_flight: int | None = None,
        bypass: bool = True,
    ) -> None:
        self.service, self.scheme, self.port = check_service(service)
        if not isinstance(bypass, bool):
            raise ValueError(f"bypass must be True or False, got {bypass!r}")
        #: False: a request that is not the pool's raises :class:`NotInPoolError` instead of going out.
        self.bypass = bypass
        self.retries = RetryPolicy.coerce(retries)
        self.health_check = HealthCheck.coerce(health_check)
        self.hedge = Hedge.coerce(hedge)
        #: Every transport this balancer sends through, and where each host's requests go.
        self.connections = connections
        self._rng = random.Random()  # backoff jitter
        self.pool, refresher = live_pool(
            hosts,
            strategy,
            service=self.service,
            panic_threshold=panic_threshold,
            outlier_detection=outlier_detection,
            health_check=self.health_check,
            slow_start=slow_start,
            on_event=on_event,
            host_check=self._check_sendable,
            latency_window=1024 if self.hedge is not None and self.hedge.delay is None else 0,
            max_in_flight=max_in_flight,
        )
        self.budget = retry_budget(self.retries)
        self.hedge_budget = None
        if self.hedge is not None:
            ratio, window = self.hedge.budget_ratio, self.hedge.budget_window
            self.hedge_budget = RetryBudget(ratio, 0.0, window, clock=time.monotonic, lock=threading.Lock())
        self._key_source = self.pool.strategy.key_source
        #: What the transports run in the background: health checks, and refreshes of a discovered pool.
        self.chores: list[HTTPHealthChecks | Refresher] = []
        if self.health_check is not None:
            self.chores.append(HTTPHealthChecks(self.pool, self.health_check, self.service, connections))
        if refresher is not None:
            refresher.connections = connections
            self.chores.append(refresher)

    @property
    def origin(self) -> str:
        """The pool's own origin, as pool requests name it: ``http://users``."""
        return f"{self.scheme}://{self.service}" + ("" if self.port is None else f":{self.port}")

    def owns(self, request: httpx.Request) -> bool:
        """A pool request names the pool's origin (scheme, service name and port); any other request
        passes through, or raises :class:`NotInPoolError` with ``bypass=False``. A request that names the
        service with another scheme or port always raises: the hosts give scheme and port, so sending
        it to one of them would go somewhere it does not name, and sending it as is would leave the pool
        for whatever that name resolves to."""
        url = request.url
        if url.host == self.service:
            if url.scheme == self.scheme and url.port == self.port:
                return True
            raise NotInPoolError(
                f"{url} names the pool's service {self.service!r} with another scheme or port than the "
                f"pool's {self.origin}: the hosts give scheme and port; use a relative URL or {self.origin}/...",
                request=request,
            )
        if not self.bypass:
            raise NotInPoolError(
                f"{url} is not a request for the pool {self.origin} and bypass=False keeps every request in the pool",
                request=request,
            )
        return False

    def key(self, request: httpx.Request) -> str | None:
        key: object = request.extensions.get("lb_key")
        if key is not None:
            # Bytes that are not UTF-8 still make a stable key (surrogate escapes, hashed as they are).
            return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)
        if self._key_source == "client_ip":
            return _client_ip(request)
        if self._key_source == "path":
            return request.url.path
        return None

    @staticmethod
    def _check_sendable(host: Host) -> None:
        """Refuse a host URL that httpx could not send a request to (it validates more than the core)."""
        try:
            httpx.Request("GET", host.url)
            Target(host.url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"host URL {host.url!r} is not valid for httpx: {exc}") from None

    def exchange(self, request: httpx.Request) -> _Exchange:
        return _Exchange(self, request)


class _StopWhen(tenacity.stop.stop_base):
    """A tenacity stop condition from a predicate, so it composes with ``|``."""

    def __init__(self, predicate: Callable[[tenacity.RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._predicate(retry_state)


def _overall_timeout(timeout: Any) -> float | None:
    """The request's deadline in seconds: httpx's timeout read as a bound on the whole request
    (the largest of connect, read and write; None when any of them is unbounded)."""
    if not isinstance(timeout, dict):
        return None
    values = [timeout.get(name) for name in ("connect", "read", "write")]
    bounded = [float(value) for value in values if value is not None]
    return max(bounded) if len(bounded) == len(values) else None


class _Exchange:
    """One pool request over its attempts. The transports drive it; it makes every decision."""

    __slots__ = (
        "balancer",
        "request",
        "attempts",
        "errors",
        "previous",
        "_url",
        "_host_header",
        "_own_host",
        "_key",
        "_timeout",
        "_timeout_changed",
        "_own_sni",
        "_started",
        "_plan",
        "_tried",
        "_seed",
        "_exhausted",
        "_idempotent",
        "hedge_won",
    )

    def __init__(self, balancer: _Balancer, request: httpx.Request) -> None:
        self.balancer = balancer
        self.request = request
        self._url = request.url
        self._host_header: str | None = request.headers.get("host")
        # httpx sets Host to the URL's netloc when none is given: any other value was given explicitly,
        # on the request or the client, and is sent as given.
        self._own_host = self._host_header is not None and self._host_header != request.url.netloc.decode("ascii")
        self._key = balancer.key(request)
        self._idempotent = request_idempotent(request)
        self._timeout: Any = request.extensions.get("timeout")
        self._timeout_changed = False
        self._own_sni = "sni_hostname" in request.extensions
        self._started = time.monotonic()
        self._plan: RetryPlan | None = None
        if balancer.retries.max_attempts > 1:
            balancer.budget.record_request()
        if balancer.hedge_budget is not None:
            balancer.hedge_budget.record_request()
        self.attempts = 0
        #: (host, error) of every failed attempt, for the error a user finally sees.
        self.errors: list[tuple[str, str]] = []
        #: The newest response, kept open until a newer one replaces it or it is returned.
        self.previous: httpx.Response | None = None
        self._tried: list[HostState] = []
        self._seed: httpx.Response | BaseException | None = None
        self._exhausted = False
        #: Set when one attempt of a hedged pair has won and the other is being cancelled.
        self.hedge_won = False

    @property
    def plan(self) -> RetryPlan | None:
        """The retry decisions, built when first needed (most requests never need them)."""
        policy = self.balancer.retries
        if self._plan is None and policy.max_attempts > 1:
            request = self.request
            overall = _overall_timeout(self._timeout)
            self._plan = RetryPlan(
                policy,
                method=request.method,
                idempotency_key="idempotency-key" in request.headers,
                replayable=isinstance(request.stream, httpx.ByteStream),
                deadline=None if overall is None else self._started + overall,
                clock=time.monotonic,
                rng=self.balancer._rng,
                budget=self.balancer.budget,
                idempotent=self._idempotent,
            )
        return self._plan

    def _may_resend(self, *, non_idempotent_too: bool) -> bool:
        """May this request be sent again once it may have reached a server (:func:`may_resend`)?"""
        request = self.request
        return may_resend(
            request.method,
            idempotency_key="idempotency-key" in request.headers,
            idempotent=self._idempotent,
            non_idempotent_too=non_idempotent_too,
        )

    # -- one attempt -------------------------------------------------------------------------------------

    def begin(self, request: httpx.Request | None = None) -> Lease | None:
        """Pick a host this request has not tried (while one is left) and point the request (or the
        hedge's copy of it) at it.

        None: no host can be picked, but an earlier response can be returned instead.
        """
        balancer = self.balancer
        connections = balancer.connections
        if connections.closed:
            raise ClientClosedError(
                f"the {balancer.service!r} client was closed before {self.request.method} {self._url} could be sent",
                request=self.request,
            )
        pool = balancer.pool
        lease = pool.acquire(self._key, self._tried)
        if lease is None:
            if self.previous is not None:
                self._exhausted = True
                return None
            if pool.saturated:
                message = f"every available host of {balancer.service!r} is at its max_in_flight: {pool!r}"
            else:
                message = f"no host of {balancer.service!r} can take the request: {pool!r}"
            raise NoAvailableHostError(message, request=self.request)
        self.attempts += 1
        self._tried.append(lease.host)
        request = request or self.request
        try:
            connections.target(lease.host).point(request, self._url, own_sni=self._own_sni, own_host=self._own_host)
        except BaseException:
            lease.abandon()
            raise
        if self.attempts > 1 or balancer.retries.per_try_timeout is not None:
            plan = self.plan
            if plan is not None:
                request.extensions["timeout"] = self._attempt_timeout(plan)
                self._timeout_changed = True
        return lease

    def _attempt_timeout(self, plan: RetryPlan) -> dict[str, float | None]:
        """The request's timeouts, bounded by the per-try timeout and what is left of the deadline."""
        bound = plan.remaining()
        per_try = plan.policy.per_try_timeout
        if per_try is not None:
            bound = per_try if bound is None else min(bound, per_try)
        original = self._timeout if isinstance(self._timeout, dict) else {}
        if bound is None:
            return dict(original)
        bound = max(bound, 0.001)
        return {name: bound if value is None else min(value, bound) for name, value in original.items()} or {
            name: bound for name in ("connect", "read", "write", "pool")
        }

    def responded(self, lease: Lease, response: httpx.Response, wrap: StreamWrapper) -> None:
        """Label the response with its host and attempt count, and tie the lease to its body (``wrap``
        builds the sync or async body)."""
        response.extensions["lb_host"] = lease.host.url
        response.extensions["lb_attempts"] = self.attempts
        status = response.status_code
        if response.is_closed:
            # A body built in memory (mock transports): no close will come, so the lease ends now.
            lease.release(status=status)
        else:
            response.stream = wrap(response.stream, lease, status)
        if status >= 500:
            self.errors.append((lease.host.url, f"HTTP {response.status_code}"))

    def keep(self, response: httpx.Response) -> httpx.Response | None:
        """Hold ``response`` as the newest; returns the one it replaces, for the caller to close."""
        stale, self.previous = self.previous, response
        return None if stale is response else stale

    # -- hedging -------------------------------------------------------------------------------------------

    def hedge_delay(self) -> float | None:
        """Seconds to wait before hedging this request, or None when it is not hedged (no hedging
        configured, turned off with ``extensions={"lb_hedge": False}``, a request that may not be sent
        twice (by its method, or ``lb_idempotent``), or not enough latency samples yet for a percentile delay)."""
        hedge = self.balancer.hedge
        request = self.request
        if hedge is None or request.extensions.get("lb_hedge", True) is False:
            return None
        if not self._may_resend(non_idempotent_too=False):  # a hedge is a resend chosen for speed alone
            return None
        if not isinstance(request.stream, httpx.ByteStream):
            return None
        if hedge.delay is not None:
            return hedge.delay
        observed = self.balancer.pool.latency_percentile(hedge.percentile)
        return None if observed is None else max(observed, hedge.min_delay)

    def may_hedge(self) -> bool:
        """Take a hedge from the hedging budget, if it has one left."""
        budget = self.balancer.hedge_budget
        return budget is not None and budget.try_withdraw()

    def hedge_request(self) -> httpx.Request:
        """A copy of the caller's request for the second attempt, so the two never share a URL."""
        request = self.request
        copy = httpx.Request(
            request.method,
            self._url,
            headers=request.headers.copy(),
            stream=request.stream,
            extensions=dict(request.extensions),
        )
        if self._host_header is not None:
            copy.headers["Host"] = self._host_header
        return copy

    def should_buffer(self, response: httpx.Response) -> bool:
        """Read this response's body inside the attempt? Only when a failure while reading it could be
        retried, and the body is small and of known length (never a stream of unknown end)."""
        policy = self.balancer.retries
        if self.attempts >= policy.max_attempts or not policy.buffer_limit or response.is_closed:
            return False
        request = self.request
        if not self._may_resend(non_idempotent_too=policy.retry_non_idempotent):
            return False
        length: str | None = response.headers.get("content-length")
        return (
            length is not None
            and length.isdigit()
            and 0 < int(length) <= policy.buffer_limit
            and request.method != "HEAD"
            and isinstance(request.stream, httpx.ByteStream)
        )

    @staticmethod
    def buffered(response: httpx.Response, body: bytes) -> None:
        """Give the response the body read inside the attempt."""
        response.stream = httpx.ByteStream(body)

    def failed(self, lease: Lease, exc: BaseException) -> None:
        """An attempt raised: count it against the host when the error is the host's doing."""
        kind = failure_kind(exc)
        if self.hedge_won and not isinstance(exc, Exception):
            # The loser of a hedge, cancelled by us: its time so far is a lower bound of the host's
            # latency, and the only news of a slow host the balancer would otherwise never get.
            lease.release(failed=False)
        elif kind is None or isinstance(exc, httpx.PoolTimeout) or self.balancer.connections.closed:
            lease.abandon()  # our side, or cut by the client closing: nothing to hold against the host
        else:
            lease.release(failed=True)
        if isinstance(exc, Exception):
            self.errors.append((lease.host.url, f"{type(exc).__name__}: {exc}"))

    def restore(self) -> None:
        """Give the caller's request back as it was: httpx reuses it for cookies, redirects, auth flows
        and re-sends, which must all see the pool's URL, not the host that happened to answer."""
        request = self.request
        request.url = self._url
        if self._host_header is None:
            request.headers.pop("host", None)
        else:
            request.headers["Host"] = self._host_header
        if not self._own_sni:
            request.extensions.pop("sni_hostname", None)
        if self._timeout_changed:
            if self._timeout is None:
                request.extensions.pop("timeout", None)
            else:
                request.extensions["timeout"] = self._timeout

    # -- the retry loop's questions -------------------------------------------------------------------------

    def should_retry(self, outcome: httpx.Response | BaseException) -> bool:
        if isinstance(outcome, httpx.Response) and outcome.status_code not in self.balancer.retries.retry_on_status:
            return False  # the common case, decided without building the plan
        plan = self.plan
        if plan is None or self._exhausted or self.balancer.connections.closed:
            return False
        if isinstance(outcome, BaseException):
            kind = failure_kind(outcome)
            return kind is not None and plan.retry_failure(kind)
        return plan.retry_status(outcome.status_code, _retry_after(outcome))

    def retries_after(self, first: httpx.Response | BaseException) -> bool:
        """Does the first attempt's outcome call for a retry? If so it is kept for the retry loop, which
        replays it as its attempt 1: the loop (about 20 us) is only built for requests that need it."""
        if not self.should_retry(first):
            return False
        self._seed = first
        return True

    def take_seed(self) -> httpx.Response | None:
        seed, self._seed = self._seed, None
        if isinstance(seed, BaseException):
            raise seed
        return seed

    def retrying_options(self, sleep: Callable[[float], Any]) -> dict[str, Any]:
        """tenacity's settings for this request: our decisions, our clock and random generator."""
        assert self.plan is not None
        plan = self.plan

        def retry(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            assert outcome is not None
            return self.should_retry(outcome.exception() or outcome.result())

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            retry_after = None
            if outcome is not None and not outcome.failed:
                retry_after = _retry_after(outcome.result())
            return plan.wait(state.attempt_number, retry_after)

        def out_of_time_or_budget(state: tenacity.RetryCallState) -> bool:
            if plan.may_continue(state.upcoming_sleep):
                return False
            logger.info(
                "%s: no retry for %s %s: deadline or retry budget spent",
                self.balancer.service,
                self.request.method,
                self._url,
            )
            return True

        def before_sleep(state: tenacity.RetryCallState) -> None:
            host, error = self.errors[-1] if self.errors else ("?", "?")
            logger.info(
                "%s: retrying %s %s after %s from %s (attempt %d of %d, waiting %.3fs)",
                self.balancer.service,
                self.request.method,
                self._url,
                error,
                host,
                state.attempt_number + 1,
                plan.policy.max_attempts,
                state.upcoming_sleep,
            )

        return {
            "sleep": sleep,
            "retry": retry,
            "wait": wait,
            # Attempts in all, hedges included: the exchange counts them, tenacity only counts its calls.
            "stop": _StopWhen(lambda _state: self.attempts >= plan.policy.max_attempts)
            | _StopWhen(out_of_time_or_budget),
            "before_sleep": before_sleep,
            "retry_error_callback": lambda state: state.outcome.result() if state.outcome else None,
        }

    def raise_if_closed(self, exc: Exception) -> None:
        """A request cut because the client closed raises :class:`ClientClosedError` from the error that
        cut it, whatever that was (a socket closed under a read can raise more than httpx's errors)."""
        if self.balancer.connections.closed and not isinstance(exc, ClientClosedError):
            raise ClientClosedError(
                f"the {self.balancer.service!r} client was closed while {self.request.method} {self._url} was "
                f"in flight; it was not retried",
                request=self.request,
            ) from exc

    def give_up(self, exc: Exception) -> httpx.Response:
        """The request failed for good: return the last response if there was one, else raise ``exc``
        with every attempt (host, error) noted on it; a request cut because the client closed raises
        :class:`ClientClosedError` from the error that cut it."""
        self.raise_if_closed(exc)
        if self.previous is not None:
            return self.previous
        if len(self.errors) > 1 or self.attempts > 1:
            attempts = "; ".join(f"{host}: {error}" for host, error in self.errors)
            exc.add_note(f"lbclient: {self.attempts} attempts failed: {attempts}")
        raise exc
