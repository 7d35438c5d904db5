"""The pool: the host set, its live state, the health filter in front of the strategy, and leases.

The pool is pure: it takes its clock, random generator and lock as arguments, so the clients pass
``time.monotonic``, ``random.Random()`` and a ``threading.Lock`` while tests and simulators pass a
fake clock, a seeded generator and no lock.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from ._host import HostLike, HostState, parse_hosts
from ._strategies import PoolView, Strategy, make_strategy

__all__ = ["DEFAULT_EWMA_DECAY", "DEFAULT_PANIC_THRESHOLD", "Lease", "Pool"]

#: Below this share of available hosts the pool spreads requests over every host (Envoy's 50%).
DEFAULT_PANIC_THRESHOLD = 0.5
#: Time constant of the latency averages, in seconds (Finagle's and Linkerd's 10 s).
DEFAULT_EWMA_DECAY = 10.0


def _check_share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
    return float(value)


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


class Lease:
    """One request's hold on a host, from the pick until :meth:`release` (called exactly once)."""

    __slots__ = ("host", "started_at", "_pool", "_released")

    def __init__(self, pool: Pool, host: HostState, started_at: float) -> None:
        self.host = host
        self.started_at = started_at
        self._pool = pool
        self._released = False

    def release(self, *, failed: bool) -> None:
        """End the request: in-flight count down, totals and (for a success) the latency recorded.

        Idempotent, so every exit path of a request can call it safely.
        """
        if self._released:
            return
        self._released = True
        self._pool._release(self, failed)


class Pool:
    """A balanced set of hosts: ``hosts`` (live :class:`HostState`), ``update(hosts)``, ``acquire()``.

    Args:
        hosts: a non-empty sequence of URL strings, :class:`Host` objects or ``{"url", "weight"}``
            mappings.
        strategy: a name from :data:`STRATEGIES` or a :class:`Strategy` object (one per pool).
        clock: seconds, monotonic; ``time.monotonic`` in the clients.
        rng: the random generator given to a strategy that has none of its own.
        lock: held around every state change; ``None`` for single-threaded use.
        panic_threshold: below this share of available members, pick among all members.
        ewma_decay: time constant of the latency averages, seconds.
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
        ewma_decay: float = DEFAULT_EWMA_DECAY,
    ) -> None:
        self._panic_threshold = _check_share("panic_threshold", panic_threshold)
        self._decay = _check_positive("ewma_decay", ewma_decay)
        self._states = [HostState(host) for host in parse_hosts(hosts)]
        self._strategy = make_strategy(strategy)
        self._strategy.attach(rng)
        self._tracks_load = self._strategy.tracks_load
        self._clock = clock
        self._lock: AbstractContextManager[object] = lock if lock is not None else contextlib.nullcontext()
        self._panic = False
        self._signature: tuple[object, ...] = ()
        self._rebuild()

    @property
    def hosts(self) -> list[HostState]:
        """The live state of every host, in configuration order (a new list; the items are live)."""
        return list(self._states)

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def panic(self) -> bool:
        """True while too few hosts are available and requests go to every member."""
        return self._panic

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def update(self, hosts: Iterable[HostLike]) -> None:
        """Replace the host set. Hosts that stay keep their state (counters, latency, health); hosts that
        leave finish their in-flight requests but get no new ones. Validates like the constructor."""
        parsed = parse_hosts(hosts)
        with self._lock:
            current = {state.url: state for state in self._states}
            states = []
            for host in parsed:
                state = current.pop(host.url, None)
                if state is None:
                    state = HostState(host)
                else:
                    state.host = host
                    state.weight = host.weight
                states.append(state)
            for gone in current.values():
                gone.selectable = False
            self._states = states
            self._rebuild()

    def refresh(self) -> None:
        """Re-derive the candidates after a host's ``healthy``, ``ejected`` or ``weight`` changed."""
        with self._lock:
            self._rebuild()

    def _rebuild(self) -> None:
        members = tuple(s for s in self._states if s.weight > 0)
        available = tuple(s for s in members if s.healthy and not s.ejected)
        self._panic = len(available) < self._panic_threshold * len(members)
        candidates = members if self._panic else available
        for state in self._states:
            state.selectable = False
        for state in candidates:
            state.selectable = True
        # Only a real change reaches the strategy, so a no-op refresh keeps its rotation.
        signature = (candidates, members, self._panic, tuple(s.weight for s in members))
        if signature != self._signature:
            self._signature = signature
            self._strategy.update(PoolView(candidates, members, self._panic, self._decay))

    def acquire(self, key: str | None = None) -> Lease | None:
        """Pick a host and count the request against it; ``None`` when no host can take it."""
        with self._lock:
            now = self._clock()
            host = self._strategy.pick(key, now)
            if host is None:
                return None
            host.outstanding += 1
            host.requests += 1
            if self._tracks_load:
                self._strategy.on_load_change(host)
        return Lease(self, host, now)

    def _release(self, lease: Lease, failed: bool) -> None:
        host = lease.host
        with self._lock:
            host.outstanding -= 1
            if failed:
                host.failures += 1
            else:
                now = self._clock()
                host.record_latency(now - lease.started_at, now, self._decay)
            if self._tracks_load:
                self._strategy.on_load_change(host)

    def __repr__(self) -> str:
        ejected = sum(1 for s in self._states if s.ejected)
        unhealthy = sum(1 for s in self._states if not s.healthy)
        extra = (f" unhealthy={unhealthy}" if unhealthy else "") + (" panic" if self._panic else "")
        return f"<Pool hosts={len(self._states)} ejected={ejected}{extra} strategy={self._strategy.name}>"
