"""The pool: the host set, its live state, health in front of the strategy, and leases.

Four separate concerns, as in gRPC's and Finagle's balancers: the host set (``update`` keeps the state
of hosts that stay), the load metrics (in-flight counts and latency, recorded by leases), health
(passive outlier ejection and active check results, a filter in front of the strategy, with panic when
too few hosts are left) and the pick itself (the strategy).

The pool is pure: it takes its clock, random generator and lock as arguments, so the clients pass
``time.monotonic``, ``random.Random()`` and a ``threading.Lock`` while tests and simulators pass a
fake clock, a seeded generator and no lock. It does no logging either: it reports :class:`PoolEvent`
objects to a listener, outside its lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from cachetools import TLRUCache

from ._config import GATEWAY_STATUSES, HealthCheck, OutlierDetection
from ._host import Host, HostLike, HostState, check_max_in_flight, parse_hosts
from ._latency import LatencyWindow
from ._outliers import success_rate_outliers
from ._strategies import PoolView, Strategy, make_strategy

__all__ = [
    "DEFAULT_EWMA_DECAY",
    "DEFAULT_PANIC_THRESHOLD",
    "OVERLOAD_QUIET",
    "EventKind",
    "HostStats",
    "Lease",
    "Pool",
    "PoolEvent",
    "PoolStats",
]

#: Below this share of available hosts the pool spreads requests over every host (Envoy's 50%).
DEFAULT_PANIC_THRESHOLD = 0.5
#: Time constant of the latency averages, in seconds (Finagle's and Linkerd's 10 s).
DEFAULT_EWMA_DECAY = 10.0
#: A failed request is recorded as a latency sample of at least this many seconds (and at least twice
#: the host's average), so latency-aware strategies do not favour a host that fails fast.
FAILURE_LATENCY_PENALTY = 0.25
#: A host in slow start begins at this share of its weight (Envoy's min_weight_percent, 10%).
_SLOW_START_FLOOR = 0.1
_SLOW_START_STEPS = 10
#: A refusal because every host is at its max_in_flight reports an "overloaded" event only when none came
#: in this many seconds before: one event per episode of overload, however many requests it refuses.
OVERLOAD_QUIET = 1.0
#: How often a pick that proposed a host at its cap is asked again before any other host is taken.
_REPICKS = 3

EventKind = Literal[
    "ejected", "returned", "unhealthy", "healthy", "panic", "panic_over", "added", "removed", "overloaded"
]
#: How a request ended, for health: answered (below 500), an error answer (a 5xx other than 502-504),
#: or a gateway failure (a transport error, 502, 503 or 504).
_Outcome = Literal["success", "error", "gateway"]


def _outcome(failed: bool, status: int | None) -> _Outcome:
    if failed or status in GATEWAY_STATUSES:
        return "gateway"
    return "error" if status is not None and status >= 500 else "success"


@dataclass(frozen=True)
class PoolEvent:
    """Something that changed in the pool: ``kind``, the host's URL (None for pool-wide events) and a
    ``reason`` a person can read.

    ``overloaded`` (pool-wide) starts an episode of refusals because every available host was at its
    ``max_in_flight``: it is reported for the first refusal after ``OVERLOAD_QUIET`` seconds without any,
    so a pool that stays full reports once, not once per request; :attr:`PoolStats.rejected` counts
    every refusal."""

    kind: EventKind
    host: str | None
    reason: str


@dataclass(frozen=True)
class HostStats:
    """One host at one moment (see :meth:`Pool.stats`). ``requests``, ``failures`` and ``times_ejected``
    only grow (counters for metrics); ``outstanding`` is the requests in flight; ``ewma_latency`` seconds
    or None before the first answer."""

    url: str
    weight: float
    healthy: bool
    ejected: bool
    #: Takes new requests outside panic: weight > 0, healthy and not ejected.
    available: bool
    #: At its max_in_flight: skipped by every strategy until a request ends.
    overloaded: bool
    outstanding: int
    requests: int
    failures: int
    ewma_latency: float | None
    times_ejected: int
    consecutive_failures: int


@dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of a pool: every host's :class:`HostStats`, whether the pool is in panic,
    how many hosts take new requests outside panic, and ``rejected``: the requests refused so far because
    every available host was at its ``max_in_flight`` (a counter that only grows)."""

    hosts: tuple[HostStats, ...]
    panic: bool
    available: int
    rejected: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, ready for ``json.dumps``."""
        return dataclasses.asdict(self)


def _check_share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
    return float(value)


def _check_non_negative(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


class Lease:
    """One request's hold on a host, from the pick until it is released (exactly once)."""

    __slots__ = ("host", "started_at", "then", "_pool", "_released", "_settled")

    def __init__(self, pool: Pool, host: HostState, started_at: float) -> None:
        self.host = host
        self.started_at = started_at
        #: Called once when the lease ends (the transports free the request's inner connection pool slot).
        self.then: Callable[[], None] | None = None
        self._pool = pool
        self._released = False
        self._settled = False

    def settle(self) -> None:
        """Record success now, while the lease stays held: for a long-lived connection whose outcome is
        known once it is up (the TCP proxy), but which counts as in flight until it closes. Its latency is
        the time from the pick to now; its age no longer counts as a latency signal. The later
        :meth:`release` or :meth:`abandon` then only ends the hold."""
        if not self._released and not self._settled:
            self._settled = True
            self._pool._settle(self)

    def release(self, *, failed: bool = False, status: int | None = None) -> None:
        """End the request: in-flight count down, and its outcome recorded. ``failed``: it broke without
        a whole answer (connect error, reset, timeout); ``status``: the status it was answered with.

        A gateway failure (``failed``, or 502, 503, 504) counts toward consecutive-failure ejection; any
        other 5xx only against the host's success rate (and ``consecutive_5xx`` when set), because every
        host may give it for that request; anything else is a success and records its latency.
        Idempotent, so every exit path of a request can call it safely."""
        self._end(_outcome(failed, status))

    def abandon(self) -> None:
        """End a request that says nothing about the host (cancelled, or failed on our side): only the
        in-flight count goes down."""
        self._end(None)

    def _end(self, outcome: _Outcome | None) -> None:
        if not self._released:
            self._released = True
            try:
                self._pool._release(self, None if self._settled else outcome, timed=not self._settled)
            finally:
                if self.then is not None:
                    self.then()


class Pool:
    """A balanced set of hosts: ``hosts`` (live :class:`HostState`), ``update(hosts)``, ``acquire()``.

    Args:
        hosts: a non-empty sequence of URL strings, :class:`Host` objects or ``{"url", "weight"}``
            mappings.
        strategy: a name from :data:`STRATEGIES` or a :class:`Strategy` object (one per pool).
        clock: seconds, monotonic; ``time.monotonic`` in the clients.
        rng: the random generator given to a strategy that has none of its own, and used for jitter.
        lock: held around every state change; ``None`` for single-threaded use.
        panic_threshold: below this share of available members, pick among all members.
        outlier_detection: passive ejection, or None for none.
        health_check: the thresholds applied to :meth:`report_check` results, or None.
        slow_start: seconds over which a joining or returning host ramps from 10% to its full weight
            (0: off). Weighted strategies honour it.
        ewma_decay: time constant of the latency averages, seconds.
        listener: called with each :class:`PoolEvent`, outside the lock.
        host_check: called with every host given to the constructor or ``update``; raises
            ``ValueError`` for a host that the caller cannot use.
        latency_window: keep this many recent latencies for :meth:`latency_percentile` (0: none).
        max_in_flight: the most requests in flight per host (an int >= 1) for hosts that set none of
            their own; None: no cap. A host at its cap is skipped by every strategy (hash strategies
            rehash, panic and retries skip it too); when every candidate is at its cap, :meth:`acquire`
            refuses at once (None) and :attr:`rejected` counts it. Without caps this costs one attribute
            test per pick.
    """

    def __init__(
        self,
        hosts: Iterable[HostLike],
        strategy: str | Strategy = "round_robin",
        *,
        clock: Callable[[], float],
        rng: random.Random,
        lock: AbstractContextManager[object] | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        outlier_detection: OutlierDetection | None = None,
        health_check: HealthCheck | None = None,
        slow_start: float = 0.0,
        ewma_decay: float = DEFAULT_EWMA_DECAY,
        listener: Callable[[PoolEvent], None] | None = None,
        host_check: Callable[[Host], None] | None = None,
        latency_window: int = 0,
        max_in_flight: int | None = None,
    ) -> None:
        self._max_in_flight = check_max_in_flight(max_in_flight)
        self._panic_threshold = _check_share("panic_threshold", panic_threshold)
        self._slow_start = _check_non_negative("slow_start", slow_start)
        self._decay = _check_non_negative("ewma_decay", ewma_decay, positive=True)
        self._outliers = outlier_detection
        self._health = health_check
        self._host_check = host_check
        self._recent = LatencyWindow(latency_window) if latency_window > 0 else None
        self._states = [HostState(host) for host in self._parse(hosts)]
        for state in self._states:
            self._set_cap(state)
        self._strategy = make_strategy(strategy)
        self._strategy.attach(rng)
        self._tracks_load = self._strategy.tracks_load
        self._clock = clock
        self._rng = rng
        self._lock: AbstractContextManager[object] = lock if lock is not None else contextlib.nullcontext()
        self._listener = listener
        self._pending: list[PoolEvent] = []
        # Ejected hosts by URL; each expires at its own ejected_until (cachetools' time-aware LRU).
        self._ejected: TLRUCache[str, HostState] = TLRUCache(
            maxsize=math.inf, ttu=lambda _url, host, _now: host.ejected_until or 0.0, timer=clock
        )
        self._next_return = math.inf
        self._ramping: list[HostState] = []
        self._next_ramp_step = math.inf
        self._panic = False
        self._rejected = 0
        self._last_refusal = -math.inf
        interval = outlier_detection.success_rate_interval if outlier_detection is not None else None
        self._next_sweep = math.inf if interval is None else clock() + interval
        self._candidates: tuple[HostState, ...] = ()
        self._signature: tuple[object, ...] = ()
        self._generation = 0
        self._rebuild()
        self._pending.clear()  # no events for the initial state

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[HostState]:
        """The live state of every host, in configuration order (a new list; the items are live).

        Ejections that have run out end here too, so ``ejected`` is current even without traffic."""
        events: list[PoolEvent] = []
        with self._lock:
            now = self._clock()
            if now >= self._next_return or now >= self._next_ramp_step:
                self._timed_changes(now)
                events = self._take_events()
            states = list(self._states)
        if events:
            self._emit(events)
        return states

    def stats(self) -> PoolStats:
        """A snapshot of every host's counters and state, taken at once under the pool's lock."""
        hosts = self.hosts  # ends ejections that ran out
        with self._lock:
            snapshot = tuple(
                HostStats(
                    h.url,
                    h.weight,
                    h.healthy,
                    h.ejected,
                    h.available,
                    h.overloaded,
                    h.outstanding,
                    h.requests,
                    h.failures,
                    h.ewma_latency,
                    h.times_ejected,
                    h.consecutive_failures,
                )
                for h in hosts
            )
            panic = self._panic
            rejected = self._rejected
        return PoolStats(snapshot, panic, sum(1 for h in snapshot if h.available), rejected)

    def latency_percentile(self, share: float) -> float | None:
        """The ``share`` quantile of the pool's recent successful latencies (needs ``latency_window``);
        None until enough samples are in."""
        with self._lock:
            return None if self._recent is None else self._recent.percentile(share)

    def __len__(self) -> int:
        """The number of hosts."""
        return len(self._states)

    @property
    def strategy(self) -> Strategy:
        """The strategy object that picks hosts for this pool (one strategy serves one pool)."""
        return self._strategy

    @property
    def panic(self) -> bool:
        """True while too few hosts are available and requests go to every member."""
        return self._panic

    @property
    def generation(self) -> int:
        """How many times :meth:`update` ran: cheap to compare, to notice a change of the host set."""
        return self._generation

    @property
    def saturated(self) -> bool:
        """True while every candidate host is at its max_in_flight, so that :meth:`acquire` refuses."""
        with self._lock:
            return self._saturated()

    @property
    def rejected(self) -> int:
        """Requests refused so far because every candidate host was at its max_in_flight."""
        return self._rejected

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the pool reads (seconds, monotonic)."""
        return self._clock

    # -- changing the host set and health -----------------------------------------------------------------

    def update(self, hosts: Iterable[HostLike]) -> None:
        """Replace the host set. Hosts that stay keep their state (counters, latency, health); hosts that
        leave finish their in-flight requests but get no new ones; hosts that join ramp up under slow
        start. Validates like the constructor."""
        parsed = self._parse(hosts)
        with self._lock:
            now = self._clock()
            current = {state.url: state for state in self._states}
            states = []
            reloaded: list[HostState] = []
            for host in parsed:
                state = current.pop(host.url, None)
                if state is None:
                    state = HostState(host)
                    self._start_ramp(state, now)
                    self._pending.append(PoolEvent("added", state.url, "pool update"))
                else:
                    state.host = host
                    state.weight = host.weight
                    state.effective_weight = host.weight * self._ramp_share(state, now)
                if self._set_cap(state) and self._tracks_load:
                    reloaded.append(state)
                states.append(state)
            for gone in current.values():
                gone.candidate = gone.selectable = False
                gone.left = True
                self._ejected.pop(gone.url, None)
                self._pending.append(PoolEvent("removed", gone.url, "pool update"))
            self._states = states
            self._generation += 1
            self._rebuild()
            for state in reloaded:  # a new cap put it at, or took it off, its limit
                self._strategy.on_load_change(state)
            events = self._take_events()
        self._emit(events)

    def _parse(self, hosts: Iterable[HostLike]) -> list[Host]:
        parsed = parse_hosts(hosts)
        if self._host_check is not None:
            for host in parsed:
                self._host_check(host)
        return parsed

    def refresh(self) -> None:
        """Re-derive the candidates after a host's ``healthy``, ``ejected`` or ``weight`` was changed by
        hand."""
        with self._lock:
            now = self._clock()
            for state in self._states:
                state.effective_weight = state.weight * self._ramp_share(state, now)
                if not state.ejected:
                    self._ejected.pop(state.url, None)
            self._rebuild()
            events = self._take_events()
        self._emit(events)

    def report_check(self, host: HostState, ok: bool, detail: str) -> None:
        """Apply one active health-check result. ``healthy_threshold`` good checks in a row make an
        unhealthy host healthy, ``unhealthy_threshold`` bad ones the reverse; a good check also returns
        an ejected host at once."""
        config = self._health or HealthCheck()
        with self._lock:
            if host not in self._states:
                return
            now = self._clock()
            changed = False
            if ok:
                host.checks_passed += 1
                host.checks_failed = 0
                if not host.healthy and host.checks_passed >= config.healthy_threshold:
                    host.healthy = True
                    self._start_ramp(host, now)
                    self._pending.append(PoolEvent("healthy", host.url, f"{host.checks_passed} checks passed"))
                    changed = True
                if host.ejected:
                    self._return(host, now, f"health check passed: {detail}")
                    changed = True
            else:
                host.checks_failed += 1
                host.checks_passed = 0
                if host.healthy and host.checks_failed >= config.unhealthy_threshold:
                    host.healthy = False
                    self._pending.append(
                        PoolEvent("unhealthy", host.url, f"{host.checks_failed} checks failed, last: {detail}")
                    )
                    changed = True
            if changed:
                self._rebuild()
            events = self._take_events()
        self._emit(events)

    # -- requests --------------------------------------------------------------------------------------

    def acquire(self, key: str | None = None, exclude: Collection[HostState] = ()) -> Lease | None:
        """Pick a host and count the request against it; ``None`` when no host can take it (none is a
        candidate, or every candidate is at its max_in_flight: then the refusal is counted).

        ``exclude`` holds hosts this request already tried: when the strategy proposes one of them, a
        random candidate not yet tried is taken instead, while one is left. A strategy that proposes a
        host that is no candidate of the pool is a bug: ``RuntimeError`` names it and the host.
        """
        events: list[PoolEvent] = []
        with self._lock:
            now = self._clock()
            if now >= self._next_return or now >= self._next_ramp_step:
                self._timed_changes(now)
            host = self._strategy.pick(key, now)
            if host is not None and not host.selectable:
                host = self._repick(host, key, now)
            if host is not None and exclude and host in exclude:
                host = self._untried(exclude) or host
            if host is not None:
                host.outstanding += 1
                host.inflight_started += now
                host.inflight_timed += 1
                host.requests += 1
                cap = host.max_in_flight
                if cap is not None and host.outstanding >= cap:
                    host.overloaded = True
                    host.selectable = False
                if self._tracks_load:
                    self._strategy.on_load_change(host)
            elif self._saturated():
                self._refused(now)
            if self._pending:
                events = self._take_events()
        if events:
            self._emit(events)
        return None if host is None else Lease(self, host, now)

    def _repick(self, host: HostState, key: str | None, now: float) -> HostState | None:
        """The strategy proposed a host it may not pick now: one at its cap (ask the strategy again, then
        take any candidate with room), or one that is no candidate at all (a bug: raise)."""
        for attempt in range(_REPICKS + 1):
            if not host.candidate:
                where = "is not in the pool" if host not in self._states else "is ejected, unhealthy or drained"
                raise RuntimeError(
                    f"strategy {self._strategy!r} picked host {host.url!r}, which {where}; a strategy must "
                    "pick among the candidates of its PoolView"
                )
            if attempt == _REPICKS:
                break
            picked = self._strategy.pick(key, now)
            if picked is None or picked.selectable:
                return picked
            host = picked
        candidates = self._candidates
        start = int(self._rng.random() * len(candidates))
        for step in range(len(candidates)):
            candidate = candidates[(start + step) % len(candidates)]
            if candidate.selectable:
                return candidate
        return None

    def _saturated(self) -> bool:
        candidates = self._candidates
        return bool(candidates) and all(h.overloaded for h in candidates)

    def _refused(self, now: float) -> None:
        self._rejected += 1
        if now - self._last_refusal >= OVERLOAD_QUIET:
            self._pending.append(
                PoolEvent(
                    "overloaded",
                    None,
                    f"every one of {len(self._candidates)} available hosts is at its max_in_flight; "
                    "requests are refused until one has room",
                )
            )
        self._last_refusal = now

    def _untried(self, exclude: Collection[HostState]) -> HostState | None:
        candidates = self._candidates
        for _ in range(8):
            host = candidates[int(self._rng.random() * len(candidates))]
            if host.selectable and host not in exclude:
                return host
        return next((h for h in candidates if h.selectable and h not in exclude), None)

    def _release(self, lease: Lease, outcome: _Outcome | None, *, timed: bool = True) -> None:
        host = lease.host
        events: list[PoolEvent] = []
        with self._lock:
            host.outstanding -= 1
            if host.overloaded and (host.max_in_flight is None or host.outstanding < host.max_in_flight):
                host.overloaded = False
                host.selectable = host.candidate
            if timed:
                self._untime(lease)
            if outcome is not None:
                self._record(lease, outcome)
            if self._tracks_load:
                self._strategy.on_load_change(host)
            if self._pending:
                events = self._take_events()
        if events:
            self._emit(events)

    def _settle(self, lease: Lease) -> None:
        events: list[PoolEvent] = []
        with self._lock:
            self._untime(lease)
            self._record(lease, "success")
            if self._tracks_load:
                self._strategy.on_load_change(lease.host)
            if self._pending:
                events = self._take_events()
        if events:
            self._emit(events)

    def _record(self, lease: Lease, outcome: _Outcome) -> None:
        """Fold one request's outcome into its host's health and latency (Envoy's rules: a gateway
        failure continues a run of them, any other answer ends it; every 5xx and transport error counts
        against the success rate)."""
        host = lease.host
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)  # the interval that ended is judged before this outcome opens the next
        host.window_requests += 1
        if outcome == "success":
            host.consecutive_failures = host.consecutive_errors = 0
            host.record_latency(now - lease.started_at, now, self._decay)
            if self._recent is not None:
                self._recent.record(now - lease.started_at)
            return
        host.failures += 1
        host.window_failures += 1
        host.consecutive_errors += 1
        host.consecutive_failures = host.consecutive_failures + 1 if outcome == "gateway" else 0
        penalty = max(now - lease.started_at, 2 * (host.ewma_latency or 0.0), FAILURE_LATENCY_PENALTY)
        host.record_latency(penalty, now, self._decay)
        config = self._outliers
        if config is None or host.ejected:
            return
        if host.consecutive_failures >= config.consecutive_failures:
            self._eject(host, config, f"{host.consecutive_failures} consecutive gateway failures")
        elif config.consecutive_5xx is not None and host.consecutive_errors >= config.consecutive_5xx:
            self._eject(host, config, f"{host.consecutive_errors} consecutive failures (5xx included)")

    def _sweep(self, now: float) -> None:
        """End a success-rate interval: eject the hosts whose success rate is an outlier against the
        others' (worst first, within the ejection cap), and start the next interval."""
        config = self._outliers
        assert config is not None
        assert config.success_rate_interval is not None
        outliers, threshold = success_rate_outliers(
            ((h, h.window_requests, h.window_requests - h.window_failures) for h in self._states),
            minimum_hosts=config.success_rate_minimum_hosts,
            request_volume=config.success_rate_request_volume,
            stdev_factor=config.success_rate_stdev_factor,
        )
        for state in self._states:
            state.window_requests = state.window_failures = 0
        interval = config.success_rate_interval
        self._next_sweep += interval * (math.floor((now - self._next_sweep) / interval) + 1)
        for host, rate in outliers:
            if not host.ejected:
                self._eject(host, config, f"success rate {rate:.1%} is below the pool's threshold {threshold:.1%}")

    def _untime(self, lease: Lease) -> None:
        host = lease.host
        host.inflight_timed -= 1
        host.inflight_started = host.inflight_started - lease.started_at if host.inflight_timed else 0.0

    # -- internals (called under the lock) -------------------------------------------------------------

    def _eject(self, host: HostState, config: OutlierDetection, reason: str) -> None:
        if host not in self._states:
            return  # it left the pool while the request was in flight
        now = self._clock()
        if now >= self._next_return:
            self._timed_changes(now)  # ejections that ran out end before this one is counted
        members = sum(1 for s in self._states if s.weight > 0)
        cap = max(1 if members >= 2 else 0, math.floor(config.max_ejection_percent / 100 * members))
        if sum(1 for s in self._states if s.ejected) >= cap:
            return
        if host.returned_at is not None and now - host.returned_at > config.max_ejection_time:
            host.ejections = 0  # a long healthy stretch forgives earlier ejections
        host.ejections += 1
        host.times_ejected += 1
        duration = min(config.base_ejection_time * host.ejections, config.max_ejection_time)
        duration *= 1.0 + self._rng.uniform(0.0, config.jitter)
        host.ejected = True
        host.ejected_until = now + duration
        host.consecutive_failures = host.consecutive_errors = 0
        self._ejected[host.url] = host
        self._next_return = min(self._next_return, host.ejected_until)
        self._pending.append(
            PoolEvent("ejected", host.url, f"{reason}; ejected for {duration:.1f}s (ejection #{host.ejections})")
        )
        self._rebuild()

    def _return(self, host: HostState, now: float, reason: str) -> None:
        host.ejected = False
        host.ejected_until = None
        host.returned_at = now
        self._ejected.pop(host.url, None)
        self._start_ramp(host, now)
        self._pending.append(PoolEvent("returned", host.url, reason))

    def _timed_changes(self, now: float) -> None:
        """Return hosts whose ejection ran out, and advance slow-start ramps."""
        changed = False
        if now >= self._next_return:
            for _url, host in self._ejected.expire(now):
                if host.ejected and host in self._states:
                    self._return(host, now, "ejection time over")
                    changed = True
            self._next_return = min((h.ejected_until or math.inf for h in self._ejected.values()), default=math.inf)
        if now >= self._next_ramp_step:
            for host in self._ramping:
                host.effective_weight = host.weight * self._ramp_share(host, now)
            self._ramping = [h for h in self._ramping if h.ramp_started_at is not None]
            step = self._slow_start / _SLOW_START_STEPS
            self._next_ramp_step = now + step if self._ramping else math.inf
            changed = True
        if changed:
            self._rebuild()

    def _start_ramp(self, host: HostState, now: float) -> None:
        if self._slow_start <= 0:
            return
        host.ramp_started_at = now
        host.effective_weight = host.weight * _SLOW_START_FLOOR
        if host not in self._ramping:
            self._ramping.append(host)
        self._next_ramp_step = min(self._next_ramp_step, now + self._slow_start / _SLOW_START_STEPS)

    def _ramp_share(self, host: HostState, now: float) -> float:
        if host.ramp_started_at is None:
            return 1.0
        share = (now - host.ramp_started_at) / self._slow_start
        if share >= 1.0:
            host.ramp_started_at = None
            return 1.0
        return max(_SLOW_START_FLOOR, share)

    def _rebuild(self) -> None:
        members = tuple(s for s in self._states if s.weight > 0)
        available = tuple(s for s in members if s.available)
        panic = len(available) < self._panic_threshold * len(members)
        if panic != self._panic:
            self._panic = panic
            self._pending.append(
                PoolEvent(
                    "panic" if panic else "panic_over",
                    None,
                    f"{len(available)} of {len(members)} hosts available, threshold {self._panic_threshold:g}",
                )
            )
        candidates = members if panic else available
        for state in self._states:
            state.candidate = state.selectable = False
        for state in candidates:
            state.candidate = True
            state.selectable = not state.overloaded
        self._candidates = candidates
        # Only a real change reaches the strategy, so a no-op refresh keeps its rotation.
        signature = (candidates, members, panic, tuple(s.effective_weight for s in members))
        if signature != self._signature:
            self._signature = signature
            self._strategy.update(PoolView(candidates, members, panic, self._decay))

    def _set_cap(self, state: HostState) -> bool:
        """The host's own max_in_flight, else the pool's; ``overloaded`` follows a changed cap at once
        (``selectable`` follows at the next rebuild). True when ``overloaded`` changed."""
        cap = state.host.max_in_flight
        state.max_in_flight = cap = self._max_in_flight if cap is None else cap
        overloaded = cap is not None and state.outstanding >= cap
        changed = overloaded != state.overloaded
        state.overloaded = overloaded
        return changed

    def _take_events(self) -> list[PoolEvent]:
        events, self._pending = self._pending, []
        return events

    def _emit(self, events: list[PoolEvent]) -> None:
        if self._listener is not None:
            for event in events:
                self._listener(event)

    def __repr__(self) -> str:
        ejected = sum(1 for s in self._states if s.ejected)
        unhealthy = sum(1 for s in self._states if not s.healthy)
        overloaded = sum(1 for s in self._states if s.overloaded)
        extra = (
            (f" unhealthy={unhealthy}" if unhealthy else "")
            + (f" overloaded={overloaded}" if overloaded else "")
            + (" panic" if self._panic else "")
        )
        return f"<Pool hosts={len(self._states)} ejected={ejected}{extra} strategy={self._strategy.name}>"
