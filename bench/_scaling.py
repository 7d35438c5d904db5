"""Section 3: the balancer's own cost as the pool grows from 10 to 10,000 hosts, for every strategy.

Requests go through ``httpx.MockTransport``, which answers in memory and never opens a connection, so the
10,000 made-up host addresses (``10.x.y.1``) are never contacted. In each round a plain ``httpx.Client``
on the same mock transport sends the same requests as absolute URLs on one host; an LBClient's cost is its time
per request minus the plain client's in the same round. Requests cycle through 16,384 distinct paths
(and, for ``ip_hash``, as many ``lb_key`` addresses) so that hash strategies hash different keys.

3b times the pick alone: ``pool.acquire(key)`` + ``lease.release(failed=False)`` on a bare ``Pool``.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import timeit
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import httpx

import lbclient

from ._report import Ratio, Section, fmt_ratio, fmt_us
from ._rounds import Rounds
from ._settings import Settings
from ._timers import Extensions, Requests, SyncTimer, drive, sync_timer

__all__ = ["pick_costs", "scaling"]

SCALING_BAR = 2.0
PLAIN = "plain"
KEYS = 16_384
PLAIN_BASE = "http://10.0.0.1"  # the plain client's absolute URLs; MockTransport never connects


def host_urls(count: int) -> list[str]:
    """``count`` distinct made-up hosts; only ever used with MockTransport."""
    return [f"http://10.{i // 250}.{i % 250}.1:80" for i in range(count)]


def _respond(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


def _paths() -> list[str]:
    return [f"/item/{i}" for i in range(KEYS)]


def _keys(strategy: str) -> Sequence[str | None]:
    """The key each request carries into the pick: what the transport would derive from the request."""
    source = lbclient.STRATEGIES[strategy].key_source
    if source == "client_ip":
        return [f"198.18.{i // 256}.{i % 256}" for i in range(KEYS)]
    if source == "path":
        return _paths()
    return [None] * KEYS


def _extensions(strategy: str) -> list[Extensions]:
    """``lb_key`` for ``ip_hash`` (its key would otherwise come from a header); the path strategies
    hash the varying paths themselves."""
    if lbclient.STRATEGIES[strategy].key_source == "client_ip":
        return [{"lb_key": key} for key in _keys(strategy)]
    return [None] * KEYS


@dataclass
class _StrategyResult:
    rounds: Rounds
    cold: dict[int, float]  # hosts -> cost per request over a fresh client's first requests
    build: dict[int, float]  # hosts -> seconds to construct the LBClient
    warmup: dict[int, tuple[int, float]]  # hosts -> (warm-up requests, share of hosts picked by then)

    def cost(self, hosts: int) -> float:
        return self.rounds.paired_difference(str(hosts), PLAIN)


def _picked_share(pool: lbclient.Pool) -> float:
    hosts = pool.hosts
    return sum(1 for host in hosts if host.requests) / len(hosts)


def _warm_up(timer: SyncTimer, pool: lbclient.Pool, settings: Settings) -> tuple[int, float]:
    """Send requests until ``scale_warmup_coverage`` of the hosts were picked at least once, or no new
    host was picked in the last chunk (hash strategies reach only the hosts that the keys map to), within
    ``scale_warmup_max_per_host`` x hosts requests and ``scale_budget`` seconds. The rounds then measure
    steady state, not the first request to each host (``cold@N`` shows that one)."""
    size = len(pool.hosts)
    limit = settings.scale_warmup_max_per_host * size + settings.scale_warmup
    chunk = max(100, size // 4)
    deadline = time.perf_counter() + settings.scale_budget
    sent, share, previous = 0, _picked_share(pool), -1.0
    while sent < limit and share < settings.scale_warmup_coverage and share > previous:
        if time.perf_counter() > deadline:
            break
        count = min(chunk, limit - sent)
        timer(count, sent)
        sent += count
        previous, share = share, _picked_share(pool)
    return sent, share


def _measure_strategy(strategy: str, settings: Settings) -> _StrategyResult:
    """Cold cost, warm-up, then interleaved rounds of the plain client and one LBClient per pool size."""
    mock = httpx.MockTransport(_respond)
    extensions = _extensions(strategy)
    relative = Requests(_paths(), extensions)
    absolute = Requests([PLAIN_BASE + path for path in _paths()], extensions)
    cold_count = settings.scale_cold_requests
    cold: dict[int, float] = {}
    build: dict[int, float] = {}
    warmup: dict[int, tuple[int, float]] = {}
    with ExitStack() as stack:
        plain = sync_timer(stack.enter_context(httpx.Client(transport=mock, trust_env=False)), absolute)
        plain(settings.scale_warmup, 0)
        timers: dict[str, SyncTimer] = {PLAIN: plain}
        for hosts in settings.scale_hosts:
            started = time.perf_counter()
            client = lbclient.LBClient(host_urls(hosts), strategy=strategy, transport=mock, trust_env=False)
            build[hosts] = time.perf_counter() - started
            timer = sync_timer(stack.enter_context(client), relative)
            gc.collect()  # the cold pass measures first requests to each host, not the construction's garbage
            cold[hosts] = (timer(cold_count, 0) - plain(cold_count, 0)) / cold_count
            warmup[hosts] = _warm_up(timer, client.pool, settings)
            timers[str(hosts)] = timer
        rounds = drive(Rounds(list(timers), settings.scale_plan()), timers)
    return _StrategyResult(rounds, cold, build, warmup)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def scaling(settings: Settings) -> Section:
    small, large = settings.scale_hosts[0], settings.scale_hosts[-1]
    section = Section(
        key="balancer_cost",
        title=(
            f"3. Balancer cost per request = LBClient - plain httpx.Client, same MockTransport, same round "
            f"({settings.scale_rounds} rounds x {settings.scale_requests} requests, median of differences)"
        ),
        headers=[
            "strategy",
            "plain",
            *(f"cost@{h:,}" for h in settings.scale_hosts),
            f"{large:,}/{small}",
            f"cold@{small}",
            f"cold@{large:,}",
            f"build@{large:,}",
        ],
    )
    for strategy in lbclient.STRATEGIES:
        result = _measure_strategy(strategy, settings)
        costs = {hosts: result.cost(hosts) for hosts in settings.scale_hosts}
        ratio = _ratio(costs[large], costs[small])
        section.rows.append(
            [
                strategy,
                fmt_us(result.rounds.median(PLAIN)),
                *(fmt_us(cost) for cost in costs.values()),
                fmt_ratio(ratio),
                fmt_us(result.cold[small]),
                fmt_us(result.cold[large]),
                f"{result.build[large]:.2f} s",
            ]
        )
        section.ratios.append(
            Ratio(f"3. cost({large:,})/cost({small}): {strategy}", costs[large], costs[small], ratio, SCALING_BAR)
        )
        section.data[strategy] = {
            "cost_seconds": costs,
            "ratio": ratio,
            "cold_cost_seconds": result.cold,
            "build_seconds": result.build,
            "warmup_requests_and_share_of_hosts_picked": result.warmup,
            **result.rounds.to_json(),
        }
    section.notes += [
        f"warm-up: each LBClient is sent requests until {settings.scale_warmup_coverage:.0%} of its hosts were "
        "picked, or no new one was (hash keys reach only some hosts), at most "
        f"{settings.scale_warmup_max_per_host} x hosts requests: the rounds measure steady state",
        f"cold@N: cost over the first {settings.scale_cold_requests:,} requests of a new LBClient (one sample)",
    ]
    return section


def _pick_seconds(strategy: str, hosts: int, settings: Settings) -> float:
    pool = lbclient.Pool(host_urls(hosts), strategy, clock=time.monotonic, rng=random.Random(1), lock=threading.Lock())
    keys = _keys(strategy)
    sample = [keys[i % KEYS] for i in range(settings.pick_ops)]
    acquire = pool.acquire

    def loop() -> None:
        for key in sample:
            lease = acquire(key)
            if lease is None:
                raise RuntimeError(f"{strategy}: no host picked")
            lease.release(failed=False)

    loop()  # warm-up
    return min(timeit.repeat(loop, number=1, repeat=settings.pick_repeats)) / settings.pick_ops


def pick_costs(settings: Settings) -> Section:
    small, large = settings.scale_hosts[0], settings.scale_hosts[-1]
    section = Section(
        key="pick_cost",
        title=(
            f"3b. Raw pick: pool.acquire(key) + lease.release(failed=False), "
            f"min of {settings.pick_repeats} x {settings.pick_ops:,} picks"
        ),
        headers=["strategy", f"pick@{small}", f"pick@{large:,}", f"{large:,}/{small}"],
    )
    for strategy in lbclient.STRATEGIES:
        seconds = {hosts: _pick_seconds(strategy, hosts, settings) for hosts in (small, large)}
        ratio = seconds[large] / seconds[small]
        section.rows.append([strategy, fmt_us(seconds[small]), fmt_us(seconds[large]), fmt_ratio(ratio)])
        section.ratios.append(
            Ratio(f"3b. pick({large:,})/pick({small}): {strategy}", seconds[large], seconds[small], ratio)
        )
        section.data[strategy] = {"seconds": seconds, "ratio": ratio}
    return section
