"""A fleet simulator: many clients, each with its own :class:`~lbclient._core.Pool`, in front of many hosts,
on a fake clock.

The point is what a single client never shows: every client sees only its own requests in flight and its
own latencies, so strategies that look fine in one process can herd, amplify or collapse in a fleet.
The simulation runs the real core, not a model of it: every pick is ``Pool.acquire`` of the client's own
pool (with its own seeded generator), every end is ``Lease.release``/``abandon``, retries are decided by
:class:`RetryPlan` and :class:`RetryBudget` in the order the transports ask them (retry? wait, then stop
on attempts, deadline or budget), ejection, panic and slow start are the pool's own, health checks go
through ``Pool.report_check`` and host-set changes through ``Pool.update``. Only the network and the
servers are modelled.

It is a discrete-event simulation: a heap of timed events, simulated seconds, no sleeping.

- Hosts (:class:`HostModel`): a service time distribution around a mean (lognormal, exponential or
  constant), ``workers`` requests served at once with a FIFO queue behind them (None: unlimited), a share
  of error answers, ``down`` (connection refused at once; killing a host resets what it was serving),
  ``hang`` (accepts, never answers), and what an active health check sees.
- Changes (:class:`Change`): at a time, any of those attributes change for some hosts (a host slows down,
  recovers, fails, is restarted), and hosts leave or join every client's pool (``pool.update``), each
  client at its own moment within ``spread`` seconds (discovery lag). :func:`rolling_restart` builds a
  deploy.
- Clients (:class:`Workload`): an open loop (each client a Poisson process of ``rate`` requests a second)
  or a closed loop (``concurrency`` requests in flight per client), ``requests`` in all over the fleet,
  with an overall timeout, a network round trip and, optionally, the client's own CPU per request (one
  event loop per client, which a busy client queues behind).

Not modelled: hedged requests (async only), connection pools and connect timeouts, and httpx's
per-phase timeouts (an attempt's timeout bounds the whole attempt here).

Reported per run (:class:`SimResult`, JSON-able): latency percentiles as the caller sees them (every
request, failed ones included), error rate, attempts per request, per-host load imbalance over the whole
run (max/mean and coefficient of variation of the attempts each host received) and within time windows
(the mean over windows of max/mean: transient herding that evens out over a run), and the peak number of
requests at one host.

``python -m lbclient.sim --help`` lists the built-in scenarios; each prints its numbers.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import itertools
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ._core import (
    STRATEGIES,
    HealthCheck,
    Host,
    HostState,
    Lease,
    OutlierDetection,
    Pool,
    RetryPolicy,
    RoundRobin,
    Strategy,
    make_strategy,
)
from ._core._pool import DEFAULT_EWMA_DECAY, DEFAULT_PANIC_THRESHOLD
from ._core._retry import FailureKind, RetryBudget, RetryPlan

__all__ = [
    "SCENARIOS",
    "Change",
    "HostModel",
    "Part",
    "PartResult",
    "Scenario",
    "ScenarioResult",
    "SimConfig",
    "SimResult",
    "Workload",
    "format_table",
    "main",
    "percentile",
    "plot",
    "rolling_restart",
    "run",
    "run_scenario",
    "single_client_configs",
]

Distribution = Literal["lognormal", "exponential", "constant"]
Loop = Literal["open", "closed"]


# -- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostModel:
    """One simulated server.

    ``latency`` is the mean service time in seconds, drawn per request from ``distribution`` (lognormal
    with shape ``sigma``, exponential, or constant). ``workers`` requests are served at once, the rest wait
    in a FIFO queue (None: no limit). ``error_rate`` of the answers are ``error_status`` (after the same
    service time). ``down``: connections are refused at once. ``hang``: requests are accepted and never
    answered (only a timeout ends them). ``health_ok``: what an active health check of a running host sees.
    ``in_pool``: listed in every client's pool at the start.
    """

    latency: float = 0.005
    distribution: Distribution = "lognormal"
    sigma: float = 0.5
    workers: int | None = None
    error_rate: float = 0.0
    error_status: int = 503
    down: bool = False
    hang: bool = False
    health_ok: bool = True
    weight: float = 1.0
    in_pool: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"HostModel.latency must be a number >= 0, got {self.latency!r}")
        if self.distribution not in ("lognormal", "exponential", "constant"):
            raise ValueError(
                f"HostModel.distribution must be lognormal, exponential or constant, got {self.distribution!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"HostModel.workers must be None or >= 1, got {self.workers!r}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"HostModel.error_rate must be in 0..1, got {self.error_rate!r}")


@dataclass(frozen=True)
class Change:
    """At ``at`` seconds, set the given attributes of hosts ``hosts`` (indices). ``in_pool`` removes them
    from (False) or adds them to (True) every client's pool with ``pool.update``, each client at ``at``
    plus a uniform delay in [0, ``spread``] (its discovery lag). A host that goes ``down`` resets the
    requests it was serving (the clients see a failure after the request was sent)."""

    at: float
    hosts: tuple[int, ...]
    latency: float | None = None
    error_rate: float | None = None
    down: bool | None = None
    hang: bool | None = None
    health_ok: bool | None = None
    in_pool: bool | None = None
    spread: float = 0.0


@dataclass(frozen=True)
class Workload:
    """The clients and their requests.

    ``clients`` clients send ``requests`` requests in all: ``loop="open"``, each client a Poisson process of
    ``rate`` requests a second (a slow answer does not hold the next request back); ``loop="closed"``, each
    client keeps ``concurrency`` requests in flight. Clients start at uniform times within
    ``start_spread`` seconds of 0 (0: all at once, as a fleet restarted together). ``timeout``: each
    request's overall deadline, retries included (httpx's timeout; also the bound of each attempt).
    ``warmup``: the first requests issued are not measured. ``rtt``: network round trip added to every
    attempt, refused connections included; with ``rtt_sigma`` > 0 each attempt's round trip is drawn from
    a lognormal of mean ``rtt`` and shape ``rtt_sigma`` (what loopback, the kernel's wake-ups and a
    server's own handling add is not constant: its tail is what a latency-aware strategy reacts to).
    ``client_cpu``: seconds of the client's own CPU per attempt,
    half to send it and half to handle its answer, spent one at a time in arrival order (one event loop
    per client): a client that needs more than a second of CPU a second queues its own requests.
    ``stall_rate``: pauses of each client's event loop a second (a Poisson process: garbage collection,
    the process waiting for a core on a busy machine), each of an exponential length of mean
    ``stall_mean`` seconds, during which it neither sends nor handles answers; every request in flight
    is delayed together, so a latency-aware strategy sees every host slow down at once.
    """

    clients: int = 10
    requests: int = 10_000
    loop: Loop = "open"
    rate: float = 100.0
    concurrency: int = 1
    method: str = "GET"
    timeout: float | None = None
    warmup: int = 0
    rtt: float = 0.0
    rtt_sigma: float = 0.0
    start_spread: float = 0.0
    client_cpu: float = 0.0
    stall_rate: float = 0.0
    stall_mean: float = 0.0

    def __post_init__(self) -> None:
        if self.clients < 1 or self.requests < 1:
            raise ValueError("Workload needs clients >= 1 and requests >= 1")
        if self.loop not in ("open", "closed"):
            raise ValueError(f"Workload.loop must be 'open' or 'closed', got {self.loop!r}")
        if self.loop == "open" and not self.rate > 0:
            raise ValueError(f"Workload.rate must be > 0 for an open loop, got {self.rate!r}")
        if self.loop == "closed" and self.concurrency < 1:
            raise ValueError(f"Workload.concurrency must be >= 1 for a closed loop, got {self.concurrency!r}")
        if not (self.rtt >= 0 and self.rtt_sigma >= 0 and self.client_cpu >= 0):
            raise ValueError("Workload.rtt, rtt_sigma and client_cpu must be >= 0")
        if not (self.stall_rate >= 0 and self.stall_mean >= 0):
            raise ValueError("Workload.stall_rate and stall_mean must be >= 0")


@dataclass(frozen=True)
class SimConfig:
    """One run: the hosts, the changes over time, the workload and the clients' settings (the same
    keywords and defaults as ``LBClient``: ``retries=3``, outlier detection on, panic at 50%).

    ``strategy``: a name of :data:`~lbclient.STRATEGIES`, or a callable that makes a :class:`Strategy`
    (one per client: a custom strategy's class will do). ``budget=False`` turns the retry budget off
    (every retry the policy allows is made). ``window``: the width of the windows of the windowed load
    imbalance, seconds.
    """

    hosts: tuple[HostModel, ...]
    workload: Workload = field(default_factory=Workload)
    strategy: str | Callable[[], Strategy] = "round_robin"
    changes: tuple[Change, ...] = ()
    retries: int | RetryPolicy | None = 3
    budget: bool = True
    outlier_detection: OutlierDetection | None = field(default_factory=OutlierDetection)
    health_check: HealthCheck | None = None
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    slow_start: float = 0.0
    ewma_decay: float = DEFAULT_EWMA_DECAY
    seed: int = 0
    window: float = 1.0
    label: str = ""

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("SimConfig.hosts must not be empty")
        if isinstance(self.strategy, str) and self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; valid names: {', '.join(STRATEGIES)}")
        if not isinstance(self.strategy, str) and not callable(self.strategy):
            raise ValueError(f"strategy must be a name or a callable that makes a Strategy, got {self.strategy!r}")
        hangs = any(h.hang for h in self.hosts) or any(c.hang for c in self.changes)
        policy = RetryPolicy.coerce(self.retries)
        if hangs and self.workload.timeout is None and policy.per_try_timeout is None:
            raise ValueError("hosts that hang need a timeout (Workload.timeout or RetryPolicy.per_try_timeout)")
        for change in self.changes:
            for index in change.hosts:
                if not 0 <= index < len(self.hosts):
                    raise ValueError(f"Change at {change.at} names host {index}; there are {len(self.hosts)}")
        if not any(h.in_pool for h in self.hosts):
            raise ValueError("at least one host must be in the pool at the start")
        if not self.window > 0:
            raise ValueError(f"SimConfig.window must be > 0, got {self.window!r}")


def rolling_restart(
    hosts: Iterable[int], *, start: float, every: float, down_for: float, spread: float = 0.0
) -> tuple[Change, ...]:
    """A deploy: host after host (one each ``every`` seconds from ``start``), each leaves the pools and
    goes down, then ``down_for`` seconds later comes back and rejoins the pools. The clients notice each
    membership change within ``spread`` seconds (discovery lag), so some still send to a host that went
    down, and find a returning host a little late."""
    changes: list[Change] = []
    for step, index in enumerate(hosts):
        at = start + step * every
        changes.append(Change(at, (index,), down=True, in_pool=False, spread=spread))
        changes.append(Change(at + down_for, (index,), down=False, in_pool=True, spread=spread))
    return tuple(changes)


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class SimResult:
    """What one run measured (the measured requests: after ``Workload.warmup``). Latencies in seconds.

    ``host_attempts``: attempts that reached each host (answered or queued; refused connections are in
    ``host_refused``). ``load_max_mean`` and ``load_cv``: max/mean and coefficient of variation of
    ``host_attempts``. ``window_max_mean``: max/mean of the attempts per host within each ``window``,
    averaged over the windows. ``peak_concurrency``: the most requests one host held at once (served and
    queued); ``concurrency_max_mean``: the busiest host's time-averaged requests held over the mean's.
    ``leases_open``/``pool_outstanding``/``unfinished``: conservation checks, all 0 after a correct run.
    """

    label: str
    strategy: str
    clients: int
    hosts: int
    requests: int
    errors: int
    error_rate: float
    attempts: int
    attempts_per_request: float
    retries_denied: int
    no_host: int
    panic_attempts: int
    p50: float
    p99: float
    p999: float
    mean: float
    load_max_mean: float
    load_cv: float
    window_max_mean: float
    peak_concurrency: int
    concurrency_max_mean: float
    host_attempts: list[int]
    host_refused: list[int]
    host_errors: list[int]
    host_peak: list[int]
    cdf: dict[str, float]
    simulated_seconds: float
    wall_seconds: float
    events: int
    completed: int
    unfinished: int
    leases_open: int
    pool_outstanding: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN becomes None)."""
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


#: Percentiles kept in :attr:`SimResult.cdf` (the latency CDF, for plots).
CDF_POINTS = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of sorted values; NaN when there are none."""
    if not ordered:
        return math.nan
    index = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(index, len(ordered) - 1)]


def _max_mean(values: Sequence[float]) -> float:
    total = sum(values)
    return max(values) / (total / len(values)) if total else math.nan


def _cv(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    if not mean:
        return math.nan
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean


# -- the simulation -------------------------------------------------------------------------------------------

# Event kinds, in the heap as (time, sequence, kind, payload).
_ARRIVAL = 0  # an open-loop client's next request
_ATTEMPT = 1  # a request's next attempt (after its backoff)
_DONE = 2  # a host finished serving an attempt
_RESPONSE = 3  # an answer or a refused connection reaches its client (after the network round trip)
_SEND = 4  # an attempt leaves its client (after the client's CPU got to it)
_TIMEOUT = 5  # an attempt's timeout
_CHANGE = 6  # a scheduled change of hosts
_MEMBERSHIP = 7  # one client applies a host-set change
_HEALTH = 8  # one client's round of active health checks
_START = 9  # a closed-loop client starts
_RECEIVED = 10  # the client's CPU got to an answer or a refused connection
_STALL = 11  # a client's event loop stops for a while (a GC pause, the process not scheduled)

#: The status of an attempt whose connection was refused.
_REFUSED = -1


class _NoBudget(RetryBudget):
    """The retry budget turned off: every retry is allowed."""

    def record_request(self) -> None:
        pass

    def try_withdraw(self) -> bool:
        return True


class _Server:
    """A simulated host: its current model, its workers and queue, and its counters."""

    __slots__ = (
        "index",
        "host",
        "latency",
        "distribution",
        "mu",
        "sigma",
        "workers",
        "error_rate",
        "error_status",
        "down",
        "hang",
        "health_ok",
        "busy",
        "queue",
        "serving",
        "epoch",
        "rng",
        "attempts",
        "refused",
        "errors",
        "held",
        "peak",
        "area",
        "last",
    )

    def __init__(self, index: int, model: HostModel, rng: random.Random) -> None:
        self.index = index
        self.host = Host(f"http://h{index}.sim", weight=model.weight)
        self.distribution = model.distribution
        self.sigma = model.sigma
        self.workers = model.workers if model.workers is not None else sys.maxsize
        self.error_rate = model.error_rate
        self.error_status = model.error_status
        self.down = model.down
        self.hang = model.hang
        self.health_ok = model.health_ok
        self.latency = 0.0
        self.mu = 0.0
        self.set_latency(model.latency)
        self.busy = 0
        self.queue: deque[_Attempt] = deque()
        self.serving: set[_Attempt] = set()
        self.epoch = 0
        self.rng = rng
        self.attempts = 0
        self.refused = 0
        self.errors = 0
        self.held = 0  # requests served or queued now
        self.peak = 0
        self.area = 0.0  # integral of held over time
        self.last = 0.0

    def set_latency(self, latency: float) -> None:
        self.latency = latency
        self.mu = math.log(latency) - self.sigma**2 / 2 if latency > 0 else -math.inf

    def service_time(self) -> float:
        if self.distribution == "lognormal":
            return self.rng.lognormvariate(self.mu, self.sigma) if self.latency > 0 else 0.0
        if self.distribution == "exponential":
            return self.rng.expovariate(1.0 / self.latency) if self.latency > 0 else 0.0
        return self.latency

    def hold(self, now: float, delta: int) -> None:
        self.area += self.held * (now - self.last)
        self.last = now
        self.held += delta
        self.peak = max(self.peak, self.held)


class _Client:
    __slots__ = ("index", "pool", "rng", "budget", "members", "cpu_free")

    def __init__(self, index: int, pool: Pool, rng: random.Random, budget: RetryBudget, members: set[int]) -> None:
        self.index = index
        self.pool = pool
        self.rng = rng
        self.budget = budget
        self.members = members
        #: When the client's CPU (its event loop) is next free.
        self.cpu_free = 0.0


class _Request:
    __slots__ = (
        "client",
        "index",
        "started",
        "deadline",
        "key",
        "attempts",
        "tried",
        "plan",
        "previous",
        "outcome",
        "done",
    )

    def __init__(self, client: _Client, index: int, started: float, deadline: float | None, key: str | None) -> None:
        self.client = client
        self.index = index
        self.started = started
        self.deadline = deadline
        self.key = key
        self.attempts = 0
        self.tried: list[HostState] = []
        self.plan: RetryPlan | None = None
        #: The newest response's status (the transports keep the newest response to return it at the end).
        self.previous: int | None = None
        #: How the newest attempt ended: a status, or None for a transport failure.
        self.outcome: int | None = None
        self.done = False


class _Attempt:
    __slots__ = ("request", "lease", "server", "live", "epoch", "status")

    def __init__(self, request: _Request, lease: Lease, server: _Server) -> None:
        self.request = request
        self.lease = lease
        self.server = server
        self.live = True  # until its client saw it end
        self.epoch = -1  # the server's epoch when the attempt reached it
        self.status = 0


class _Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        workload = config.workload
        self.workload = workload
        self.policy = RetryPolicy.coerce(config.retries)
        #: Client CPU per attempt, spent once to send it and once to handle its answer.
        self.cpu = workload.client_cpu / 2
        #: Whether sends and answers wait for the client's event loop (its CPU, its stalls).
        self.queued = bool(workload.client_cpu or (workload.stall_rate and workload.stall_mean))
        self.now = 0.0
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        master = random.Random(config.seed)
        self.servers = [_Server(i, m, random.Random(master.getrandbits(64))) for i, m in enumerate(config.hosts)]
        self.by_url = {s.host.url: s for s in self.servers}
        self.change_rng = random.Random(master.getrandbits(64))
        self.arrival_rng = random.Random(master.getrandbits(64))
        sample = make_strategy(config.strategy) if isinstance(config.strategy, str) else config.strategy()
        self.strategy_name = sample.name
        self.keyed = sample.key_source is not None
        initial = {s.index for s in self.servers if config.hosts[s.index].in_pool}
        self.clients: list[_Client] = []
        for index in range(workload.clients):
            rng = random.Random(master.getrandbits(64))
            pool = Pool(
                [self.servers[i].host for i in sorted(initial)],
                config.strategy if isinstance(config.strategy, str) else config.strategy(),
                clock=self.clock,
                rng=rng,
                lock=None,
                panic_threshold=config.panic_threshold,
                outlier_detection=config.outlier_detection,
                health_check=config.health_check,
                slow_start=config.slow_start,
                ewma_decay=config.ewma_decay,
            )
            budget: RetryBudget
            if config.budget:
                policy = self.policy
                budget = RetryBudget(
                    policy.budget_ratio, policy.budget_min_retries, policy.budget_window, clock=self.clock
                )
            else:
                budget = _NoBudget(0.0, 0.0, 1.0, clock=self.clock)
            self.clients.append(_Client(index, pool, rng, budget, set(initial)))
        self.total = workload.requests
        self.issued = 0
        self.completed = 0
        self.events = 0
        self.measuring = workload.warmup == 0
        # measured requests
        self.latencies: list[float] = []
        self.errors = 0
        self.attempts = 0
        self.retries_denied = 0
        self.no_host = 0
        self.panic_attempts = 0
        self.leases_open = 0
        # windowed load
        self.window = config.window
        self.window_index = -1
        self.window_counts = [0] * len(self.servers)
        self.window_ratios: list[float] = []
        self.measure_started = 0.0
        # Drawn last, so that adding it left every other generator (and every earlier result) as it was.
        self.network_rng = random.Random(master.getrandbits(64))
        self.stall_rng = random.Random(master.getrandbits(64))

    def clock(self) -> float:
        return self.now

    def push(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), kind, payload))

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.perf_counter()
        workload = self.workload
        for client in self.clients:
            at = self.arrival_rng.uniform(0.0, workload.start_spread) if workload.start_spread else 0.0
            if workload.loop == "open":
                self.push(at + self.arrival_rng.expovariate(workload.rate), _ARRIVAL, client)
            else:
                self.push(at, _START, client)
            if self.config.health_check is not None:
                check = self.config.health_check
                self.push(client.rng.uniform(0.0, check.interval), _HEALTH, client)
            if self.queued and workload.stall_rate:
                self.push(at + self.stall_rng.expovariate(workload.stall_rate), _STALL, client)
        for change in self.config.changes:
            self.push(change.at, _CHANGE, change)
        self.loop()
        self.finish_window()
        return self.result(time.perf_counter() - started)

    def loop(self) -> None:
        heap = self.heap
        pop = heapq.heappop
        total = self.total
        events = 0
        while heap and self.completed < total:
            at, _, kind, payload = pop(heap)
            self.now = at
            events += 1
            if kind == _DONE:
                self.on_done(payload)
            elif kind == _RESPONSE:
                self.receive(payload)
            elif kind == _RECEIVED:
                self.handle(payload)
            elif kind == _SEND:
                self.arrive(payload)
            elif kind == _ARRIVAL:
                self.on_arrival(payload)
            elif kind == _ATTEMPT:
                self.attempt(payload)
            elif kind == _TIMEOUT:
                if payload.live:
                    self.on_failure(payload, "sent")
            else:
                self.on_rare(kind, payload)
        self.events = events

    def on_rare(self, kind: int, payload: Any) -> None:
        if kind == _START:
            for _ in range(self.workload.concurrency):
                self.issue(payload)
        elif kind == _CHANGE:
            self.on_change(payload)
        elif kind == _MEMBERSHIP:
            client, index, present = payload
            self.on_membership(client, index, present)
        elif kind == _HEALTH:
            self.on_health(payload)
        elif kind == _STALL:
            self.on_stall(payload)

    def on_stall(self, client: _Client) -> None:
        """The client's event loop stops: whatever it would send or handle next waits until it resumes."""
        workload = self.workload
        client.cpu_free = max(self.now, client.cpu_free) + self.stall_rng.expovariate(1.0 / workload.stall_mean)
        if self.completed < self.total:
            self.push(self.now + self.stall_rng.expovariate(workload.stall_rate), _STALL, client)

    # -- requests ------------------------------------------------------------------------------------------

    def on_arrival(self, client: _Client) -> None:
        self.issue(client)
        if self.issued < self.total:
            self.push(self.now + self.arrival_rng.expovariate(self.workload.rate), _ARRIVAL, client)

    def issue(self, client: _Client) -> None:
        if self.issued >= self.total:
            return
        index = self.issued
        self.issued += 1
        if index == self.workload.warmup and not self.measuring:
            self.measuring = True
            self.measure_started = self.now
            for server in self.servers:
                server.area = 0.0
                server.last = self.now
                server.peak = server.held
        timeout = self.workload.timeout
        key = f"user-{client.rng.getrandbits(32)}" if self.keyed else None
        request = _Request(client, index, self.now, None if timeout is None else self.now + timeout, key)
        if self.policy.max_attempts > 1:
            client.budget.record_request()
        self.attempt(request)

    def plan(self, request: _Request) -> RetryPlan | None:
        """The request's retry plan, built when first needed, as the transports do."""
        if request.plan is None and self.policy.max_attempts > 1:
            request.plan = RetryPlan(
                self.policy,
                method=self.workload.method,
                idempotency_key=False,
                replayable=True,
                deadline=request.deadline,
                clock=self.clock,
                rng=request.client.rng,
                budget=request.client.budget,
            )
        return request.plan

    def attempt(self, request: _Request) -> None:
        pool = request.client.pool
        lease = pool.acquire(request.key, request.tried)
        if lease is None:
            # No host can take it: the transports return the newest response if there is one, else raise.
            if request.index >= self.workload.warmup:
                self.no_host += 1
            request.outcome = request.previous
            self.finish(request)
            return
        self.leases_open += 1
        request.attempts += 1
        request.tried.append(lease.host)
        if pool.panic and request.index >= self.workload.warmup:
            self.panic_attempts += 1
        attempt = _Attempt(request, lease, self.by_url[lease.host.url])
        bound = self.attempt_timeout(request)
        if bound is not None:
            self.push(self.now + bound, _TIMEOUT, attempt)
        if self.queued:
            client = request.client
            client.cpu_free = max(self.now, client.cpu_free) + self.cpu
            self.push(client.cpu_free, _SEND, attempt)
        else:
            self.arrive(attempt)

    def arrive(self, attempt: _Attempt) -> None:
        """The attempt reaches its host: refused, queued, served, or held forever by a host that hangs."""
        if not attempt.live:
            return  # timed out before the client's CPU could send it
        server = attempt.server
        attempt.epoch = server.epoch
        if server.down:
            server.refused += self.measuring
            attempt.status = _REFUSED
            if self.workload.rtt:
                self.push(self.now + self.round_trip(), _RESPONSE, attempt)
            else:
                self.receive(attempt)
            return
        if self.measuring:
            server.attempts += 1
            self.count_window(server.index)
        if not server.hang:
            server.hold(self.now, 1)
            if server.busy < server.workers:
                self.serve(server, attempt)
            else:
                server.queue.append(attempt)

    def round_trip(self) -> float:
        workload = self.workload
        if not workload.rtt_sigma:
            return workload.rtt
        sigma = workload.rtt_sigma
        return self.network_rng.lognormvariate(math.log(workload.rtt) - sigma**2 / 2, sigma)

    def attempt_timeout(self, request: _Request) -> float | None:
        """The attempt's timeout: the per-try timeout, within what is left of the request's deadline."""
        bound = None if request.deadline is None else request.deadline - self.now
        per_try = self.policy.per_try_timeout
        if per_try is not None:
            bound = per_try if bound is None else min(bound, per_try)
        return None if bound is None else max(bound, 0.001)

    def serve(self, server: _Server, attempt: _Attempt) -> None:
        server.busy += 1
        server.serving.add(attempt)
        error = server.error_rate and server.rng.random() < server.error_rate
        attempt.status = server.error_status if error else 200
        self.push(self.now + server.service_time(), _DONE, attempt)

    def on_done(self, attempt: _Attempt) -> None:
        server = attempt.server
        if attempt.epoch != server.epoch:
            return  # the host was killed while serving it; its client already saw the reset
        server.busy -= 1
        server.serving.discard(attempt)
        server.hold(self.now, -1)
        if attempt.status != 200 and self.measuring:
            server.errors += 1
        queue = server.queue
        while queue and server.busy < server.workers:
            self.serve(server, queue.popleft())
        if attempt.live:
            if self.workload.rtt:
                self.push(self.now + self.round_trip(), _RESPONSE, attempt)
            else:
                self.receive(attempt)

    def receive(self, attempt: _Attempt) -> None:
        """An answer or a refusal reaches the client, which handles it when its CPU gets to it."""
        if not attempt.live:
            return
        if self.queued:
            client = attempt.request.client
            client.cpu_free = max(self.now, client.cpu_free) + self.cpu
            self.push(client.cpu_free, _RECEIVED, attempt)
        else:
            self.handle(attempt)

    def handle(self, attempt: _Attempt) -> None:
        if attempt.status == _REFUSED:
            self.on_failure(attempt, "connect")
        else:
            self.on_answer(attempt)

    def on_answer(self, attempt: _Attempt) -> None:
        if not attempt.live:
            return  # timed out meanwhile
        attempt.live = False
        status = attempt.status
        attempt.lease.release(status=status)
        self.leases_open -= 1
        request = attempt.request
        request.previous = request.outcome = status
        policy = self.policy
        if status not in policy.retry_on_status:
            self.finish(request)
            return
        plan = self.plan(request)
        if plan is None or not plan.retry_status(status, None):
            self.finish(request)
            return
        self.maybe_retry(request, plan)

    def on_failure(self, attempt: _Attempt, kind: FailureKind) -> None:
        """A refused connection ("connect"), a timeout or a reset ("sent"): counted against the host."""
        if not attempt.live:
            return
        attempt.live = False
        attempt.lease.release(failed=True)
        self.leases_open -= 1
        request = attempt.request
        request.outcome = None
        plan = self.plan(request)
        if plan is None or not plan.retry_failure(kind):
            request.outcome = request.previous
            self.finish(request)
            return
        self.maybe_retry(request, plan)

    def maybe_retry(self, request: _Request, plan: RetryPlan) -> None:
        """tenacity's order in the transports: the wait first, then stop on attempts, deadline or budget."""
        wait = plan.wait(request.attempts, None)
        if request.attempts >= plan.policy.max_attempts:
            self.give_up(request)
            return
        if not plan.may_continue(wait):
            remaining = plan.remaining()
            if (remaining is None or remaining > wait) and request.index >= self.workload.warmup:
                self.retries_denied += 1
            self.give_up(request)
            return
        self.push(self.now + wait, _ATTEMPT, request)

    def give_up(self, request: _Request) -> None:
        if request.outcome is None:
            request.outcome = request.previous  # the newest response, if any, else the error
        self.finish(request)

    def finish(self, request: _Request) -> None:
        if request.done:
            raise RuntimeError(f"request {request.index} ended twice")
        request.done = True
        client = request.client
        self.completed += 1
        if request.index >= self.workload.warmup:
            self.latencies.append(self.now - request.started)
            status = request.outcome
            if status is None or status >= 400:
                self.errors += 1
            self.attempts += request.attempts
        if self.workload.loop == "closed":
            self.issue(client)

    # -- the fleet's changes ---------------------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        for index in change.hosts:
            server = self.servers[index]
            if change.latency is not None:
                server.set_latency(change.latency)
            if change.error_rate is not None:
                server.error_rate = change.error_rate
            if change.health_ok is not None:
                server.health_ok = change.health_ok
            if change.hang is not None:
                server.hang = change.hang
            if change.down is not None and change.down != server.down:
                server.down = change.down
                if change.down:
                    self.kill(server)
            if change.in_pool is not None:
                for client in self.clients:
                    lag = self.change_rng.uniform(0.0, change.spread) if change.spread else 0.0
                    self.push(self.now + lag, _MEMBERSHIP, (client, index, change.in_pool))

    def kill(self, server: _Server) -> None:
        """The host stops: what it was serving or queueing is reset (the clients see a failure)."""
        server.epoch += 1
        victims = [*server.serving, *server.queue]
        victims.sort(key=lambda a: a.request.index)  # a set's order is not deterministic across runs
        server.serving.clear()
        server.queue.clear()
        server.busy = 0
        server.hold(self.now, -server.held)
        for attempt in victims:
            self.on_failure(attempt, "sent")

    def on_membership(self, client: _Client, index: int, present: bool) -> None:
        members = client.members
        if present and index not in members:
            members.add(index)
        elif not present and index in members and len(members) > 1:  # discovery never empties a pool
            members.discard(index)
        else:
            return
        client.pool.update([self.servers[i].host for i in sorted(members)])

    def on_health(self, client: _Client) -> None:
        check = self.config.health_check
        assert check is not None
        pool = client.pool
        for state in pool.hosts:
            server = self.by_url[state.url]
            ok = not server.down and not server.hang and server.health_ok
            pool.report_check(state, ok, "200" if ok else "failed")
        if self.completed < self.total:
            wait = check.interval * (1.0 + client.rng.uniform(0.0, check.jitter))
            self.push(self.now + wait, _HEALTH, client)

    # -- measuring -------------------------------------------------------------------------------------------

    def count_window(self, index: int) -> None:
        window = int(self.now / self.window)
        if window != self.window_index:
            self.finish_window()
            self.window_index = window
        self.window_counts[index] += 1

    def finish_window(self) -> None:
        counts = self.window_counts
        total = sum(counts)
        if total >= len(counts):  # windows with fewer attempts than hosts say nothing about balance
            self.window_ratios.append(max(counts) * len(counts) / total)
        self.window_counts = [0] * len(counts)

    def result(self, wall: float) -> SimResult:
        ordered = sorted(self.latencies)
        measured = len(ordered)
        attempts = [s.attempts for s in self.servers]
        span = self.now - self.measure_started
        for server in self.servers:
            server.hold(self.now, 0)
        held = [s.area / span if span > 0 else 0.0 for s in self.servers]
        outstanding = sum(abs(h.outstanding) for c in self.clients for h in c.pool.hosts)
        config = self.config
        return SimResult(
            label=config.label or self.strategy_name,
            strategy=self.strategy_name,
            clients=self.workload.clients,
            hosts=len(self.servers),
            requests=measured,
            errors=self.errors,
            error_rate=self.errors / measured if measured else math.nan,
            attempts=self.attempts,
            attempts_per_request=self.attempts / measured if measured else math.nan,
            retries_denied=self.retries_denied,
            no_host=self.no_host,
            panic_attempts=self.panic_attempts,
            p50=percentile(ordered, 50),
            p99=percentile(ordered, 99),
            p999=percentile(ordered, 99.9),
            mean=sum(ordered) / measured if measured else math.nan,
            load_max_mean=_max_mean(attempts),
            load_cv=_cv(attempts),
            window_max_mean=sum(self.window_ratios) / len(self.window_ratios) if self.window_ratios else math.nan,
            peak_concurrency=max(s.peak for s in self.servers),
            concurrency_max_mean=_max_mean(held),
            host_attempts=attempts,
            host_refused=[s.refused for s in self.servers],
            host_errors=[s.errors for s in self.servers],
            host_peak=[s.peak for s in self.servers],
            cdf={f"p{q:g}": percentile(ordered, q) for q in CDF_POINTS},
            simulated_seconds=self.now,
            wall_seconds=wall,
            events=self.events,
            completed=self.completed,
            unfinished=self.issued - self.completed + (self.total - self.issued),
            leases_open=self.leases_open,
            pool_outstanding=outstanding,
        )


def run(config: SimConfig) -> SimResult:
    """Run one simulation to the end of its requests."""
    return _Simulation(config).run()


# -- reporting -------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:,.0f}"


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


TABLE_HEADERS = (
    "run",
    "requests",
    "errors",
    "att/req",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "load max/mean",
    "load CV",
    "window max/mean",
    "peak conc",
)


def format_table(results: Sequence[SimResult]) -> str:
    """A compact text table, one row per run."""
    rows = [TABLE_HEADERS]
    for r in results:
        rows.append(
            (
                r.label,
                f"{r.requests:,}",
                f"{r.error_rate * 100:.2f}%" if not math.isnan(r.error_rate) else "-",
                _num(r.attempts_per_request),
                _ms(r.p50),
                _ms(r.p99),
                _ms(r.p999),
                _num(r.load_max_mean),
                _num(r.load_cv),
                _num(r.window_max_mean),
                str(r.peak_concurrency),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADERS))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- scenarios -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One table of a scenario: runs that differ in one thing (the strategy, the budget, panic)."""

    title: str
    configs: tuple[SimConfig, ...]


@dataclass
class PartResult:
    title: str
    results: list[SimResult]


@dataclass
class ScenarioResult:
    """A scenario's tables and the findings read off them (JSON-able with :meth:`to_dict`)."""

    name: str
    title: str
    parts: list[PartResult]
    findings: list[str]
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The scenario, its parts' results and its findings, JSON-able."""
        return {
            "name": self.name,
            "title": self.title,
            "findings": self.findings,
            "wall_seconds": self.wall_seconds,
            "parts": [{"title": p.title, "results": [r.to_dict() for r in p.results]} for p in self.parts],
        }

    def render(self) -> str:
        """The scenario as text: a table per part, then the findings."""
        lines = [f"== {self.name}: {self.title}"]
        for part in self.parts:
            lines += ["", part.title, format_table(part.results)]
        if self.findings:
            lines += ["", *(f"* {finding}" for finding in self.findings)]
        lines.append(f"({self.wall_seconds:.1f} s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Scenario:
    """A built-in scenario: ``build(scale, seed)`` gives its parts (``scale`` multiplies the number of
    measured requests, not the warm-up or the times of changes; 1.0 is the full size), ``findings`` reads
    the numbers that matter off the results."""

    name: str
    title: str
    build: Callable[[float, int], list[Part]]
    findings: Callable[[list[PartResult]], list[str]]


def _sized(requests: float, scale: float) -> int:
    return max(1, round(requests * scale))


def _by_label(part: PartResult) -> dict[str, SimResult]:
    return {r.label: r for r in part.results}


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.1f}%"


FLEET_STRATEGIES = ("round_robin", "least_connections", "least_response_time", "power_of_two_choices", "peak_ewma")


# (a) herding ------------------------------------------------------------------------------------------------

HERD_HOSTS = 50
HERD_CLIENTS = 100


#: The control of a1: round robin with the same generator in every client, so every rotation starts at the
#: same host, as every strategy's did before each client drew its own start.
SAME_START = "round_robin seeded alike"


def _same_start() -> Strategy:
    return RoundRobin(rng=random.Random(0))


def _herding(scale: float, seed: int) -> list[Part]:
    """Every client sees only its own requests. At a few requests in flight per client every host looks
    idle to every client, so what decides a pick is the tie-break (or a latency every client measures
    alike): when that is the same in every client, they all pick the same host at once. The strategies
    draw their start (round robin) or their first tie-break order (least-loaded) from each client's own
    generator, so a1 compares them with a control that gives every client the same one."""
    hosts = tuple(HostModel(latency=0.020, workers=4) for _ in range(HERD_HOSTS))
    restart = Workload(clients=HERD_CLIENTS, requests=_sized(40_000, scale), loop="open", rate=40.0)
    # The fleet has run a while (clients started over 3 s): then a host joins, or one gets faster.
    warm = 24_000
    steady = Workload(
        clients=HERD_CLIENTS,
        requests=warm + _sized(36_000, scale),
        loop="open",
        rate=60.0,
        start_spread=3.0,
        warmup=warm,
    )
    joins = tuple(HostModel(latency=0.020, workers=4, in_pool=i < HERD_HOSTS - 1) for i in range(HERD_HOSTS))
    change_at = 2.0 + warm / 6000.0  # about half a second after the measurement starts
    join = (Change(change_at, (HERD_HOSTS - 1,), in_pool=True),)
    faster = (Change(change_at, (0,), latency=0.005),)
    return [
        Part(
            f"a1. fleet restarted together: {HERD_CLIENTS} clients x {HERD_HOSTS} hosts (20 ms, 4 workers each), "
            "40 req/s per client (open loop, 40% busy), all clients start at t=0",
            (
                *(SimConfig(hosts, restart, s, seed=seed, window=0.1) for s in FLEET_STRATEGIES),
                SimConfig(hosts, restart, _same_start, seed=seed, window=0.1, label=SAME_START),
            ),
        ),
        Part(
            f"a2. a host joins every pool at t={change_at:.1f}s (host {HERD_HOSTS - 1}; clients started over 3 s, "
            "60 req/s each, 60% busy; measured from just before the join)",
            tuple(SimConfig(joins, steady, s, changes=join, seed=seed, window=0.1) for s in FLEET_STRATEGIES),
        ),
        Part(
            f"a3. host 0 gets 4x faster (20 -> 5 ms, still 4 workers) at t={change_at:.1f}s",
            tuple(SimConfig(hosts, steady, s, changes=faster, seed=seed, window=0.1) for s in FLEET_STRATEGIES),
        ),
    ]


def _herding_findings(parts: list[PartResult]) -> list[str]:
    restart, join, faster = (_by_label(p) for p in parts)
    newcomer = HERD_HOSTS - 1

    def share(r: SimResult, index: int) -> str:
        mean = sum(r.host_attempts) / len(r.host_attempts)
        return f"{r.host_attempts[index] / mean:.2f}x the mean" if mean else "-"

    return [
        "a1 restart, peak requests at one host (4 workers) / p99: "
        + ", ".join(f"{k} {r.peak_concurrency} / {_ms(r.p99)} ms" for k, r in restart.items()),
        "a2 join, the newcomer's peak requests / its load over the run: "
        + ", ".join(f"{k} {r.host_peak[newcomer]} / {share(r, newcomer)}" for k, r in join.items()),
        "a3 faster host, its load / window max/mean: "
        + ", ".join(f"{k} {share(r, 0)} / {_num(r.window_max_mean)}" for k, r in faster.items()),
    ]


# (b) retry amplification ----------------------------------------------------------------------------------

RETRY_HOSTS = 20


def _retries(scale: float, seed: int) -> list[Part]:
    """An outage of a dependency: every host answers 503 to 70% of requests for the measured stretch.
    Retries (3 attempts) multiply the load the hosts see; the budget (20% of requests + 10/s, per client)
    caps it, but its floor is per client: a fleet of many small clients has a large floor."""
    hosts = tuple(HostModel(latency=0.020, workers=8) for _ in range(RETRY_HOSTS))
    outage = (Change(2.0, tuple(range(RETRY_HOSTS)), error_rate=0.7),)
    parts = []
    for clients, rate in ((100, 40.0), (10, 400.0)):
        warm = 8_000
        workload = Workload(
            clients=clients, requests=warm + _sized(16_000, scale), loop="open", rate=rate, warmup=warm, timeout=2.0
        )
        variants = [
            ("no retries", SimConfig(hosts, workload, "power_of_two_choices", retries=1)),
            ("3 attempts, no budget", SimConfig(hosts, workload, "power_of_two_choices", budget=False)),
            ("3 attempts, budget 20%+10/s", SimConfig(hosts, workload, "power_of_two_choices")),
            (
                "3 attempts, budget 20%+0/s",
                SimConfig(hosts, workload, "power_of_two_choices", retries=RetryPolicy(budget_min_retries=0.0)),
            ),
        ]
        parts.append(
            Part(
                f"b. {clients} clients x {rate:g} req/s, {RETRY_HOSTS} hosts (20 ms, 8 workers: 4,000 req/s is 50% "
                "busy); from t=2s every host answers 503 to 70% of requests; measured over the outage; "
                "power_of_two_choices, outlier detection on, timeout 2 s",
                tuple(replace(c, label=label, seed=seed, changes=outage) for label, c in variants),
            )
        )
    return parts


def _retries_findings(parts: list[PartResult]) -> list[str]:
    lines = []
    for part in parts:
        by = _by_label(part)
        clients = part.results[0].clients
        lines.append(
            f"{clients} clients: attempts per request (= load on the hosts per request) / errors / p99: "
            + ", ".join(
                f"{k} {_num(r.attempts_per_request)} / {_pct(r.error_rate)} / {_ms(r.p99)} ms" for k, r in by.items()
            )
        )
    return lines


# (c) panic --------------------------------------------------------------------------------------------------

PANIC_HOSTS = 20


def _panic(scale: float, seed: int) -> list[Part]:
    """12 of 20 hosts (60%) fail at t=2s; active health checks (every 0.5 s, 3 failures) mark them
    unhealthy. Below 50% available the pool panics and spreads requests over every host."""
    down = tuple(range(PANIC_HOSTS - 12, PANIC_HOSTS))
    hosts = tuple(HostModel(latency=0.020, workers=8) for _ in range(PANIC_HOSTS))
    warm = 6_800
    workload = Workload(clients=100, requests=warm + _sized(27_200, scale), loop="open", rate=34.0, warmup=warm)
    check = HealthCheck(interval=0.5)
    parts = []
    for title, change in (
        ("the hosts are down (connection refused)", Change(2.0, down, down=True)),
        ("only their health checks fail (a broken /health; the hosts still serve)", Change(2.0, down, health_ok=False)),
    ):
        configs = tuple(
            SimConfig(
                hosts,
                workload,
                "power_of_two_choices",
                changes=(change,),
                health_check=check,
                panic_threshold=threshold,
                seed=seed,
                label=label,
            )
            for label, threshold in (("panic at 50% (default)", 0.5), ("no panic (threshold 0)", 0.0))
        )
        parts.append(
            Part(
                f"c. 100 clients x 34 req/s, {PANIC_HOSTS} hosts (20 ms, 8 workers; 43% busy, the 8 left alone "
                "would be 106% busy), 12 of them (60%) fail "
                f"at t=2s: {title}; health checks every 0.5 s; power_of_two_choices; measured from t=2s",
                configs,
            )
        )
    return parts


def _panic_findings(parts: list[PartResult]) -> list[str]:
    lines = []
    kept = PANIC_HOSTS - 12
    for part, what in zip(parts, ("hosts down", "health checks failing"), strict=True):
        for r in part.results:
            tried = [a + f for a, f in zip(r.host_attempts, r.host_refused, strict=True)]
            in_panic = r.panic_attempts / r.attempts if r.attempts else math.nan
            lines.append(
                f"{what}, {r.label}: attempts in panic {_pct(in_panic)}, on the {kept} healthy hosts "
                f"{_pct(sum(tried[:kept]) / sum(tried))}, refused {sum(r.host_refused):,}, errors "
                f"{_pct(r.error_rate)}, attempts/request {_num(r.attempts_per_request)}, p99 {_ms(r.p99)} ms, "
                f"peak requests at a host {r.peak_concurrency}"
            )
    return lines


# (d) one slow host --------------------------------------------------------------------------------------------

SLOW_HOSTS = 20


def _slow(scale: float, seed: int) -> list[Part]:
    """One host of 20 answers in 100 ms instead of 10 ms."""
    hosts = tuple(HostModel(latency=0.100 if i == 0 else 0.010, workers=16) for i in range(SLOW_HOSTS))
    warm = 10_000
    workload = Workload(
        clients=100, requests=warm + _sized(50_000, scale), loop="open", rate=30.0, warmup=warm, start_spread=2.0
    )
    flat = tuple(HostModel(latency=0.010, workers=16) for _ in range(SLOW_HOSTS))
    later = warm / 3000.0
    changing = (Change(later + 3.0, (0,), latency=0.100), Change(later + 10.0, (0,), latency=0.010))
    return [
        Part(
            f"d1. 100 clients x 30 req/s, {SLOW_HOSTS} hosts of 10 ms, host 0 at 100 ms from the start (16 workers "
            "each); measured after a warm-up",
            tuple(SimConfig(hosts, workload, s, seed=seed) for s in FLEET_STRATEGIES),
        ),
        Part(
            f"d2. the same, but host 0 turns 100 ms at t={later + 3:.1f}s and recovers at t={later + 10:.1f}s",
            tuple(SimConfig(flat, workload, s, changes=changing, seed=seed) for s in FLEET_STRATEGIES),
        ),
    ]


def _slow_findings(parts: list[PartResult]) -> list[str]:
    lines = []
    for part, what in zip(parts, ("slow all along", "slow for 7 s"), strict=True):
        by = _by_label(part)
        rr, pe = by["round_robin"], by["peak_ewma"]
        lines.append(
            f"{what}: p99 / p99.9 / the slow host's share: "
            + ", ".join(
                f"{k} {_ms(r.p99)} / {_ms(r.p999)} ms / {_pct(r.host_attempts[0] / sum(r.host_attempts))}"
                for k, r in by.items()
            )
            + f"; peak_ewma's p99 is {pe.p99 / rr.p99:.2f}x round_robin's"
        )
    return lines


# (e) rolling deploy -------------------------------------------------------------------------------------------


def _deploy(scale: float, seed: int) -> list[Part]:
    """A rolling restart of 20 hosts, one a second, each down 3 s; the clients learn of each change within
    1 s (discovery lag), so they still send to a host that went down, and retry elsewhere."""
    hosts = tuple(HostModel(latency=0.010, workers=16) for _ in range(20))
    changes = rolling_restart(range(20), start=2.0, every=1.0, down_for=3.0, spread=1.0)
    workload = Workload(clients=100, requests=_sized(75_000, scale), loop="open", rate=30.0, start_spread=1.0)
    return [
        Part(
            "e. 100 clients x 30 req/s, 20 hosts (10 ms, 16 workers), rolling restart from t=2s: each host leaves "
            "the pools and goes down for 3 s, one a second; discovery lag up to 1 s",
            tuple(
                SimConfig(hosts, workload, s, changes=changes, seed=seed)
                for s in ("round_robin", "least_connections", "power_of_two_choices", "peak_ewma")
            ),
        )
    ]


def _deploy_findings(parts: list[PartResult]) -> list[str]:
    return [
        "errors / attempts per request / refused connections: "
        + ", ".join(
            f"{r.label} {_pct(r.error_rate)} / {_num(r.attempts_per_request, 3)} / {sum(r.host_refused)}"
            for r in parts[0].results
        )
    ]


# single client (agreement with the real benchmark) ----------------------------------------------------------

SINGLE_BASE = 0.005
SINGLE_EXTRA = 0.050


def single_client_configs(
    concurrency: int = 16,
    *,
    strategies: Sequence[str] = ("round_robin", "least_connections", "power_of_two_choices", "peak_ewma"),
    requests: int = 3_000,
    warmup: int = 400,
    slow_extra: float = SINGLE_EXTRA,
    rtt: float = 0.0,
    rtt_sigma: float = 0.0,
    client_cpu: float = 0.0,
    stall_rate: float = 0.0,
    stall_mean: float = 0.0,
    seed: int = 0,
) -> list[SimConfig]:
    """bench's tail scenario for one client: 5 hosts answering after 5 ms, host 2 ``slow_extra`` later
    (0: the all-fast baseline), a closed loop of ``concurrency`` requests, ``warmup`` requests then
    ``requests`` measured. ``rtt`` (its spread ``rtt_sigma``), ``client_cpu`` (seconds per request) and
    the client's stalls (``stall_rate``, ``stall_mean``; see :class:`Workload`) stand for what loopback,
    the servers and the real client add to the servers' delay; ``python -m bench --only agreement``
    measures them and compares the two."""
    hosts = tuple(
        HostModel(latency=SINGLE_BASE + (slow_extra if i == 2 else 0.0), distribution="constant") for i in range(5)
    )
    workload = Workload(
        clients=1,
        requests=warmup + requests,
        loop="closed",
        concurrency=concurrency,
        warmup=warmup,
        rtt=rtt,
        rtt_sigma=rtt_sigma,
        client_cpu=client_cpu,
        stall_rate=stall_rate,
        stall_mean=stall_mean,
    )
    return [SimConfig(hosts, workload, s, seed=seed, label=f"{s} x{concurrency}") for s in strategies]


def _single(scale: float, seed: int) -> list[Part]:
    return [
        Part(
            f"single client, 5 hosts of {SINGLE_BASE * 1000:g} ms, one +{SINGLE_EXTRA * 1000:g} ms, closed loop of "
            f"{concurrency} (bench's tail scenario)",
            tuple(single_client_configs(concurrency, requests=_sized(3_000, scale), seed=seed)),
        )
        for concurrency in (8, 16, 32)
    ]


def _single_findings(parts: list[PartResult]) -> list[str]:
    return [
        f"{r.label}: p50 {_ms(r.p50)} ms, p99 {_ms(r.p99)} ms, "
        f"slow host share {_pct(r.host_attempts[2] / sum(r.host_attempts))}"
        for part in parts
        for r in part.results
    ]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("herding", "herding when every client sees only its own load, and P2C", _herding, _herding_findings),
        Scenario(
            "retries", "retry amplification during an outage, with and without a budget", _retries, _retries_findings
        ),
        Scenario("panic", "panic mode when 60% of the hosts fail", _panic, _panic_findings),
        Scenario("slow", "one slow host among many: the tail per strategy", _slow, _slow_findings),
        Scenario("deploy", "a rolling restart with discovery lag", _deploy, _deploy_findings),
        Scenario(
            "single",
            "one client, bench's tail scenario (for agreement with the real client)",
            _single,
            _single_findings,
        ),
    )
}


def run_scenario(name: str, *, scale: float = 1.0, seed: int = 0, client_cpu: float | None = None) -> ScenarioResult:
    """Run a built-in scenario (a name of :data:`SCENARIOS`); ``scale`` multiplies its measured requests;
    ``client_cpu`` (seconds per request) replaces every run's :attr:`Workload.client_cpu`."""
    scenario = SCENARIOS[name]
    started = time.perf_counter()

    def adjusted(config: SimConfig) -> SimConfig:
        if client_cpu is None:
            return config
        return replace(config, workload=replace(config.workload, client_cpu=client_cpu))

    parts = [
        PartResult(part.title, [run(adjusted(config)) for config in part.configs])
        for part in scenario.build(scale, seed)
    ]
    findings = scenario.findings(parts)
    return ScenarioResult(name, scenario.title, parts, findings, time.perf_counter() - started)


# -- plot (optional) ---------------------------------------------------------------------------------------------


def plot(results: Sequence[ScenarioResult], path: Path) -> bool:
    """Latency CDFs, one panel per part, when matplotlib is importable; False when it is not."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    matplotlib: Any = importlib.import_module("matplotlib")  # optional: not a dependency, no stubs
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    panels = [(f"{s.name}: {p.title[:70]}", p.results) for s in results for p in s.parts]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    shares = [q / 100 for q in CDF_POINTS]
    for axis, (title, runs) in zip(axes[:, 0], panels, strict=True):
        for r in runs:
            points = [r.cdf[f"p{q:g}"] * 1000 for q in CDF_POINTS]
            axis.plot(points, shares, marker=".", label=r.label, linewidth=1.2)
        axis.set_xscale("log")
        axis.set_xlabel("latency (ms, log)")
        axis.set_ylabel("share of requests")
        axis.set_title(title, fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# -- command line -----------------------------------------------------------------------------------------------


def _custom(args: argparse.Namespace) -> list[SimResult]:
    hosts = [HostModel(latency=args.latency, workers=args.workers, distribution=args.distribution)] * args.hosts
    if args.slow:
        hosts[0] = replace(hosts[0], latency=args.latency * args.slow)
    workload = Workload(
        clients=args.clients,
        requests=args.requests,
        loop=args.loop,
        rate=args.rate,
        concurrency=args.concurrency,
        start_spread=args.start_spread,
    )
    results = []
    for strategy in args.strategy:
        config = SimConfig(
            tuple(hosts),
            workload,
            strategy,
            retries=args.retries,
            budget=not args.no_budget,
            panic_threshold=args.panic_threshold,
            seed=args.seed,
        )
        results.append(run(config))
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lbclient.sim",
        description="Fleet simulator: many clients, each with its own pool, on a fake clock.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the built-in scenarios")
    for name, scenario in [*SCENARIOS.items(), ("all", None)]:
        title = scenario.title.replace("%", "%%") if scenario else "every scenario, one after the other"
        sub = commands.add_parser(name, help=title)
        sub.add_argument("--scale", type=float, default=1.0, help="multiply the measured requests (default 1.0)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument(
            "--client-cpu", type=float, help="seconds of client CPU per request in every run (default: each run's own)"
        )
        sub.add_argument("--json", type=Path, help="write the results here as JSON")
        sub.add_argument("--plot", type=Path, help="latency CDFs as a PNG (needs matplotlib)")
    custom = commands.add_parser("run", help="a fleet of identical hosts (defaults: 100 clients x 50 hosts x 100,000)")
    custom.add_argument("--clients", type=int, default=100)
    custom.add_argument("--hosts", type=int, default=50)
    custom.add_argument("--requests", type=int, default=100_000)
    custom.add_argument("--strategy", nargs="+", default=["round_robin", "power_of_two_choices", "peak_ewma"])
    custom.add_argument("--loop", choices=["open", "closed"], default="open")
    custom.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second per client")
    custom.add_argument("--concurrency", type=int, default=4, help="closed loop: requests in flight per client")
    custom.add_argument("--latency", type=float, default=0.020, help="mean service time, seconds")
    custom.add_argument("--distribution", choices=["lognormal", "exponential", "constant"], default="lognormal")
    custom.add_argument("--workers", type=int, default=8, help="requests a host serves at once")
    custom.add_argument("--slow", type=float, default=0.0, help="host 0 is this many times slower")
    custom.add_argument(
        "--start-spread", type=float, default=1.0, help="clients start within this many seconds (0: together)"
    )
    custom.add_argument("--retries", type=int, default=3)
    custom.add_argument("--no-budget", action="store_true")
    custom.add_argument("--panic-threshold", type=float, default=DEFAULT_PANIC_THRESHOLD)
    custom.add_argument("--seed", type=int, default=0)
    custom.add_argument("--json", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lbclient.sim`` / ``lbclient sim``: run scenarios and print them (or JSON); 0 when done."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:10} {scenario.title}")
        return 0
    if args.command == "run":
        started = time.perf_counter()
        results = _custom(args)
        print(format_table(results))
        for r in results:
            print(
                f"{r.label}: {r.clients} clients x {r.hosts} hosts x {r.completed:,} requests "
                f"in {r.wall_seconds:.2f} s "
                f"({r.events:,} events, {r.simulated_seconds:.1f} simulated s)"
            )
        print(f"total {time.perf_counter() - started:.2f} s")
        if args.json:
            args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1))
        return 0
    names = list(SCENARIOS) if args.command == "all" else [args.command]
    done = []
    for name in names:
        result = run_scenario(name, scale=args.scale, seed=args.seed, client_cpu=args.client_cpu)
        print(result.render(), end="\n\n", flush=True)
        done.append(result)
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in done], indent=1))
    if args.plot:
        print(f"plot: {args.plot}" if plot(done, args.plot) else "no plot: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
