"""Tail latency: one slow host among fast ones, every strategy; the Linkerd-style run with a timeout in
force, with and without hedged requests.

The backends are ``lbclient.testing.Backend`` servers on loopback, run in a child process (spawned) so
that their threads do not take the GIL from the event loop being measured (in the same process they
raised the p50 at 16 tasks from 10.8 to 14.4 ms); their delays are changed through a pipe while they
run. Everything is measured with ``AsyncLBClient`` on asyncio.

7a. Five backends answer after ``BASE_DELAY``; one of them ``SLOW_EXTRA`` later. Every strategy of
``lbclient.STRATEGIES``, a closed loop of ``tasks`` tasks sharing one client and one counter of requests
(a task held up by the slow host does not hold up the end), after a warm-up that gives every latency
average its samples; hash strategies get a different ``lb_key`` per request. The baseline is
``peak_ewma`` on the same five with none slowed. Reported: p50, p99, p99.9 and the slow host's share.
``tasks`` is 8, not more: the client spends about 0.6 ms of CPU per request, so 16 tasks at 5 ms
saturate its core (about 1,600 requests/s, p50 10 ms instead of 6) and the latencies measure Python's
queue instead of the backends.

7b. Linkerd's experiment ("Beyond Round Robin: Load Balancing for Latency", 2016): 11 backends, one of
them slowed to ``LINKERD_SLOW`` for the middle half of the run; requests start at a fixed rate (open loop:
a slow answer does not hold back the next request, so the misses are not hidden), httpx timeout
``TIMEOUT``, one attempt (``retries=1``) and no outlier detection, so that neither retries nor ejection
hide what the strategy does. A request is within the timeout when it got its 200 in time; a timeout is a
miss. Then again with ``hedge=Hedge(delay=HEDGE_DELAY)`` (and ``Hedge()``): the extra load is the
requests that reached the servers over the requests sent, minus 1. An open loop can outrun a busy
client; past ``OVERLOAD`` requests in flight the run stops sending and is reported as overloaded.

With matplotlib (the ``plot`` extra), the latency CDFs of both parts go to ``PLOT``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http.server import ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import httpx

import lbclient
from lbclient.testing import Backend

from ._report import Ratio, Section
from ._settings import Settings
from ._timers import BenchError

__all__ = ["tail"]

BASE_DELAY = 0.005  # seconds every backend takes to answer
SLOW_EXTRA = 0.050  # 7a: what the slow host adds
SLOW_HOSTS = 5
LINKERD_HOSTS = 11
LINKERD_SLOW = 2.0  # 7b: the slowed host's delay
TIMEOUT = 1.0  # 7b: httpx timeout (connect, read, write, pool)
HEDGE_DELAY = 0.050  # 7b: a second attempt after this long without an answer
BASELINE = "all-fast"
LISTEN_BACKLOG = 128  # the backends' listen queue (the standard library's default is 5)
PLOT = Path(__file__).resolve().parent / "results" / "tail-cdf.png"
#: Percentiles kept in the JSON for each run (its latency CDF, in seconds).
CDF_POINTS = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)
#: A closed-loop run that takes longer than this fails (seconds).
RUN_LIMIT = 120.0
#: 7b: GETs in flight beyond which the client is overloaded (about 40 are expected at most: the slowed
#: host's share of a second of requests, plus hedges).
OVERLOAD = 250


@dataclass(frozen=True)
class TailSettings:
    """How much to measure. 7a: ``requests`` timed per strategy after ``warmup``, ``tasks`` at a time.
    7b: ``rate`` requests a second for ``duration`` seconds per strategy (the slow host's stretch is the
    middle half), after ``linkerd_warmup`` requests."""

    tasks: int
    requests: int
    warmup: int
    rate: float
    duration: float
    linkerd_warmup: int
    linkerd_strategies: tuple[str, ...]
    #: (strategy, hedge delay in seconds); None: ``Hedge()``'s default, a percentile of recent latencies.
    hedged: tuple[tuple[str, float | None], ...]


FULL = TailSettings(
    tasks=8,
    requests=3_000,
    warmup=400,
    rate=400.0,
    duration=10.0,
    linkerd_warmup=500,
    linkerd_strategies=(
        "round_robin",
        "least_connections",
        "power_of_two_choices",
        "least_response_time",
        "peak_ewma",
    ),
    hedged=(
        ("round_robin", HEDGE_DELAY),
        ("peak_ewma", HEDGE_DELAY),
        ("peak_ewma", None),
    ),
)
QUICK = TailSettings(
    tasks=8,
    requests=600,
    warmup=200,
    rate=400.0,
    duration=3.0,
    linkerd_warmup=300,
    linkerd_strategies=("round_robin", "peak_ewma"),
    hedged=(("round_robin", HEDGE_DELAY), ("peak_ewma", HEDGE_DELAY)),
)


# -- backends in a child process -----------------------------------------------------------------------


def _serve(conn: Connection, delays: list[float]) -> None:
    """The child: start the backends, send their URLs, then obey commands until told to stop."""
    # The standard library listens with a backlog of 5: a burst of new connections (hedges and timeouts
    # close theirs) overflows it and a SYN waits a second to be sent again. Real servers use 128 or more.
    ThreadingHTTPServer.request_queue_size = LISTEN_BACKLOG
    backends = [Backend(f"tail-{index}", delay=delay) for index, delay in enumerate(delays)]
    try:
        conn.send([backend.url for backend in backends])
        while True:
            try:
                command, *args = conn.recv()
            except (EOFError, KeyboardInterrupt):
                return
            if command == "stop":
                return
            if command == "delay":
                index, seconds = args
                backends[index].delay = seconds
                conn.send(None)
            elif command == "counts":
                conn.send([backend.count() for backend in backends])
            elif command == "reset":
                for backend in backends:
                    backend.reset_counts()
                conn.send(None)
    finally:
        for backend in backends:
            backend.kill()


class Farm:
    """``len(delays)`` backends on 127.0.0.1 in a child process, for the duration of a ``with`` block."""

    def __init__(self, delays: Sequence[float]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, list(delays)), name="tail-backends", daemon=True)
        self._process.start()
        child.close()
        self.urls: list[str] = self._reply(30.0)

    def _reply(self, timeout: float = 10.0) -> Any:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except EOFError:
            raise BenchError(f"the backend process ended (exit code {self._process.exitcode})") from None
        raise BenchError(f"the backend process did not answer within {timeout:g} s")

    def set_delay(self, index: int, seconds: float) -> None:
        self._conn.send(("delay", index, seconds))
        self._reply()

    def counts(self) -> list[int]:
        """Requests that arrived at each backend since the last ``reset``."""
        self._conn.send(("counts",))
        counts: list[int] = self._reply()
        return counts

    def reset(self) -> None:
        self._conn.send(("reset",))
        self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("stop",))
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- measurements ---------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of sorted values."""
    index = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(index, len(ordered) - 1)]


@dataclass
class Run:
    """One client's timed requests: latencies (seconds, every request, misses included) and outcomes."""

    name: str
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    timeouts: int = 0
    errors: int = 0
    late: int = 0  # a 200 that came after the timeout
    seconds: float = 0.0
    arrivals: list[int] = field(default_factory=list)  # per backend, timed requests only
    hedge: str | None = None
    max_lag: float = 0.0  # 7b: the latest a request started after its scheduled time
    max_inflight: int = 0  # 7b
    overloaded: bool = False  # 7b: sending stopped early, too many requests in flight
    #: 7b: summaries of earlier attempts of this run that were overloaded (run again once).
    earlier: list[dict[str, Any]] = field(default_factory=list)
    cpu: float = 0.0  # this process's CPU seconds per second of the run

    @property
    def ordered(self) -> list[float]:
        return sorted(self.latencies)

    @property
    def within(self) -> int:
        return self.sent - self.timeouts - self.errors - self.late

    @property
    def miss_share(self) -> float:
        return 1 - self.within / self.sent

    @property
    def extra(self) -> float:
        """Requests that reached the servers per request sent, minus 1 (hedges and retries)."""
        return sum(self.arrivals) / self.sent - 1

    def summary(self, slow: int | None) -> dict[str, Any]:
        ordered = self.ordered
        total = sum(self.arrivals)
        return {
            "name": self.name,
            "hedge": self.hedge,
            "sent": self.sent,
            "within_timeout": self.within,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "late": self.late,
            "seconds": round(self.seconds, 3),
            "requests_per_second": self.sent / self.seconds if self.seconds else None,
            "arrivals_per_backend": self.arrivals,
            "slow_host_share": None if slow is None or not total else self.arrivals[slow] / total,
            "extra_requests": self.extra,
            "max_start_lag_seconds": round(self.max_lag, 4),
            "max_in_flight": self.max_inflight,
            "overloaded": self.overloaded,
            "earlier_overloaded_attempts": self.earlier,
            "client_cpu_share": round(self.cpu, 3),
            "cdf_seconds": {f"p{q:g}": percentile(ordered, q) for q in CDF_POINTS},
        }


def _key_for(strategy: str) -> bool:
    return lbclient.STRATEGIES[strategy].key_source is not None


def _client(urls: Sequence[str], strategy: str, **kwargs: Any) -> lbclient.AsyncLBClient:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    return lbclient.AsyncLBClient(urls, strategy=strategy, trust_env=False, limits=limits, **kwargs)


async def _closed_loop(client: lbclient.AsyncLBClient, run: Run, count: int, tasks: int, keyed: bool) -> None:
    """``tasks`` tasks send ``count`` GETs between them, each waiting for its answer before taking the next
    request number (shared, so that a task held up by the slow host does not hold up the end)."""
    latencies = run.latencies
    get = client.get
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:
            extensions = {"lb_key": f"user-{i}"} if keyed else None
            started = time.perf_counter()
            response = await get("/tail", extensions=extensions)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise BenchError(f"{response.request.url} answered {response.status_code}")

    started = time.perf_counter()
    cpu = time.process_time()
    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(worker)
    run.seconds = time.perf_counter() - started
    run.cpu = (time.process_time() - cpu) / run.seconds
    run.sent = count


async def _one_slow(farm: Farm, strategy: str, slow: int | None, plan: TailSettings) -> Run:
    """7a: one strategy (a fresh client), warmed up, then ``plan.requests`` timed GETs."""
    keyed = _key_for(strategy)
    async with _client(farm.urls, strategy, timeout=10.0) as client:
        await _closed_loop(client, Run("warm-up"), plan.warmup, plan.tasks, keyed)
        farm.reset()
        gc.collect()
        run = Run(strategy if slow is not None else BASELINE)
        await _closed_loop(client, run, plan.requests, plan.tasks, keyed)
        run.arrivals = farm.counts()
    return run


async def _slow_host(plan: TailSettings) -> list[Run]:
    slow = SLOW_HOSTS // 2
    runs: list[Run] = []
    with Farm([BASE_DELAY] * SLOW_HOSTS) as farm:
        runs.append(await _one_slow(farm, "peak_ewma", None, plan))
        farm.set_delay(slow, BASE_DELAY + SLOW_EXTRA)
        # peak_ewma right after its baseline, round_robin next: the ratios compare neighbours in time.
        order = ["peak_ewma", "round_robin", *(s for s in lbclient.STRATEGIES if s not in ("peak_ewma", "round_robin"))]
        for strategy in order:
            runs.append(await _one_slow(farm, strategy, slow, plan))
    return runs


async def _open_loop(
    farm: Farm, client: lbclient.AsyncLBClient, run: Run, plan: TailSettings, slow: int, keyed: bool
) -> None:
    """7b: GETs started at ``plan.rate`` a second; the slow host is slowed for the middle half. Sending
    stops early, and the run is marked overloaded, when more than ``OVERLOAD`` GETs are in flight: the
    client (or the machine) cannot keep up and the rest would measure its queue, not the strategy."""
    total = round(plan.rate * plan.duration)
    slow_from, slow_until = total // 4, 3 * total // 4
    get = client.get
    inflight = 0

    async def one(i: int) -> None:
        nonlocal inflight
        inflight += 1
        run.max_inflight = max(run.max_inflight, inflight)
        extensions = {"lb_key": f"user-{i}"} if keyed else None
        started = time.perf_counter()
        try:
            response = await get("/tail", extensions=extensions)
        except httpx.TimeoutException:
            run.timeouts += 1
        except httpx.HTTPError:
            run.errors += 1
        else:
            if response.status_code != 200:
                run.errors += 1
            elif time.perf_counter() - started > TIMEOUT:
                run.late += 1
        finally:
            inflight -= 1
        run.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    cpu = time.process_time()
    sent = 0
    try:
        with anyio.fail_after(plan.duration + 10 * TIMEOUT + 30):
            async with anyio.create_task_group() as group:
                for i in range(total):
                    if i == slow_from:
                        farm.set_delay(slow, LINKERD_SLOW)
                    elif i == slow_until:
                        farm.set_delay(slow, BASE_DELAY)
                    if inflight > OVERLOAD:
                        run.overloaded = True
                        break
                    wait = started + i / plan.rate - time.perf_counter()
                    if wait > 0:
                        await anyio.sleep(wait)
                    else:
                        run.max_lag = max(run.max_lag, -wait)
                    group.start_soon(one, i)
                    sent += 1
    finally:
        farm.set_delay(slow, BASE_DELAY)
    run.seconds = time.perf_counter() - started
    run.cpu = (time.process_time() - cpu) / run.seconds
    run.sent = sent


async def _one_linkerd(farm: Farm, strategy: str, hedge: lbclient.Hedge | None, plan: TailSettings) -> Run:
    slow = LINKERD_HOSTS // 2
    keyed = _key_for(strategy)
    extra: dict[str, Any] = {} if hedge is None else {"hedge": hedge}
    async with _client(farm.urls, strategy, timeout=TIMEOUT, retries=1, outlier_detection=None, **extra) as client:
        await _closed_loop(client, Run("warm-up"), plan.linkerd_warmup, plan.tasks, keyed)
        farm.reset()
        gc.collect()
        run = Run(strategy, hedge=None if hedge is None else _hedge_label(hedge))
        await _open_loop(farm, client, run, plan, slow, keyed)
        await anyio.sleep(0.05)  # requests are counted when they arrive: let the last ones land
        run.arrivals = farm.counts()
    return run


def _hedge_label(hedge: lbclient.Hedge) -> str:
    if hedge.delay is not None:
        return f"{hedge.delay * 1000:g} ms"
    return f"p{hedge.percentile * 100:g}"


def hedge_support() -> str | None:
    """None when ``lbclient.Hedge`` and ``hedge=`` are there, else why not."""
    hedge_class = getattr(lbclient, "Hedge", None)
    if hedge_class is None:
        return "lbclient.Hedge is not available in this lbclient"
    try:
        lbclient.AsyncLoadBalancingTransport(["127.0.0.1:9"], hedge=hedge_class(delay=HEDGE_DELAY))
    except TypeError as exc:
        return f"the async balancer does not take hedge= ({exc})"
    return None


async def _linkerd(plan: TailSettings, hedging: bool) -> list[Run]:
    configs: list[tuple[str, float | None, bool]] = [(s, None, False) for s in plan.linkerd_strategies]
    if hedging:
        configs += [(strategy, delay, True) for strategy, delay in plan.hedged]
    runs: list[Run] = []
    with Farm([BASE_DELAY] * LINKERD_HOSTS) as farm:
        for strategy, delay, hedged in configs:
            hedge = lbclient.Hedge(delay=delay) if hedged else None
            run = await _one_linkerd(farm, strategy, hedge, plan)
            if run.overloaded:  # a busy moment of the machine: once more (the JSON keeps the first)
                first = run.summary(LINKERD_HOSTS // 2)
                run = await _one_linkerd(farm, strategy, hedge, plan)
                run.earlier.append(first)
            runs.append(run)
    return runs


# -- report ---------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _share(value: float) -> str:
    return f"{value * 100:.2f}%"


def _plot(slow_runs: Sequence[Run], linkerd_runs: Sequence[Run]) -> str | None:
    """CDFs of the latencies per strategy, when matplotlib is there (``pip install -e .[plot]``)."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(1, 2, figsize=(15, 6))
    panels = [
        (axes[0], slow_runs, f"one of {SLOW_HOSTS} hosts +{SLOW_EXTRA * 1000:g} ms"),
        (axes[1], linkerd_runs, f"one of {LINKERD_HOSTS} hosts at {LINKERD_SLOW:g} s for a stretch"),
    ]
    colours = plt.get_cmap("tab20").colors
    for axis, runs, title in panels:
        for index, run in enumerate(runs):
            ordered = run.ordered
            if not ordered:
                continue
            # Midpoint shares stay inside (0, 1), as the logit scale needs.
            shares = [(i + 0.5) / len(ordered) for i in range(len(ordered))]
            label = run.name if run.hedge is None else f"{run.name} + hedge {run.hedge}"
            style = "--" if run.hedge is not None or run.name == BASELINE else "-"
            axis.plot([x * 1000 for x in ordered], shares, style, color=colours[index % 20], label=label, linewidth=1.2)
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_yscale("logit")
        axis.set_ylim(0.01, 0.9995)
        axis.set_xlabel("latency (ms, log scale)")
        axis.set_ylabel("share of requests answered (logit scale)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)
    plt.close(figure)
    return str(PLOT)


def _display(run: Run) -> str:
    return run.name if run.hedge is None else f"{run.name} + hedge {run.hedge}"


def _row(run: Run, label: str, slow: int | None, open_loop: bool) -> list[str]:
    ordered = run.ordered
    share = run.summary(slow)["slow_host_share"]
    return [
        label,
        _display(run) + (" (overloaded)" if run.overloaded else ""),
        _ms(percentile(ordered, 50)),
        _ms(percentile(ordered, 99)),
        _ms(percentile(ordered, 99.9)),
        "-" if share is None else _share(share),
        f"{run.within / run.sent * 100:.2f}%" if open_loop else "-",
        _share(run.extra) if open_loop else "-",
    ]


def _section(
    slow_runs: Sequence[Run], linkerd_runs: Sequence[Run], plan: TailSettings, unavailable: str | None
) -> Section:
    slow, linkerd_slow = SLOW_HOSTS // 2, LINKERD_HOSTS // 2
    total = round(plan.rate * plan.duration)
    a_label = f"a: 1 of {SLOW_HOSTS} +{SLOW_EXTRA * 1000:g} ms"
    b_label = f"b: 1 of {LINKERD_HOSTS} at {LINKERD_SLOW:g} s"
    section = Section(
        key="tail",
        title=(
            f"7. Tail latency, AsyncLBClient on asyncio, backends answering after {BASE_DELAY * 1000:g} ms "
            "(a: closed loop; b: open loop, a timeout in force)"
        ),
        headers=[
            "run",
            "strategy",
            "p50",
            "p99",
            "p99.9",
            "slow host share",
            f"within {TIMEOUT:g} s",
            "extra requests",
        ],
    )
    by_name = {run.name: run for run in slow_runs}
    section.rows.append(_row(by_name[BASELINE], f"a: {SLOW_HOSTS}, none slow", None, False))
    for name in lbclient.STRATEGIES:
        section.rows.append(_row(by_name[name], a_label, slow, False))
    for run in linkerd_runs:
        section.rows.append(_row(run, b_label, linkerd_slow, True))
    if unavailable is not None:
        for strategy, _ in plan.hedged:
            section.rows.append([b_label, f"{strategy} + hedge", "-", "-", "-", "-", "not available", "-"])
        section.notes.append(f"hedged runs skipped: {unavailable}")
    section.notes += [
        f"a: {SLOW_HOSTS} backends, one (index {slow}) {SLOW_EXTRA * 1000:g} ms slower; {plan.tasks} tasks share one "
        f"client, {plan.requests:,} GETs per strategy after {plan.warmup:,} of warm-up; hash strategies get "
        "lb_key=user-<n>; the first row is peak_ewma before the host is slowed (the baseline)",
        f"b: {LINKERD_HOSTS} backends, one (index {linkerd_slow}) at {LINKERD_SLOW:g} s for GETs {total // 4:,} to "
        f"{3 * total // 4:,} of {total:,} sent at {plan.rate:g}/s whatever the answers; timeout={TIMEOUT:g}, "
        f"retries=1, outlier_detection=None; a timeout is a miss; hedge {HEDGE_DELAY * 1000:g} ms = "
        f"Hedge(delay={HEDGE_DELAY:g}), hedge p95 = Hedge() (the pool's recent p95), with the default budget "
        "(5%); extra requests = arrivals at the backends / GETs sent - 1",
    ]
    errors = sum(run.errors + run.late for run in linkerd_runs)
    if errors:
        section.notes.append(f"b: {errors} misses were errors or late 200s rather than timeouts (see the JSON)")
    p99 = {name: percentile(run.ordered, 99) for name, run in by_name.items()}
    label = f"7a. p99, 1 of {SLOW_HOSTS} hosts +{SLOW_EXTRA * 1000:g} ms: peak_ewma"
    section.ratios.append(
        Ratio(f"{label} / all-fast pool", p99["peak_ewma"], p99[BASELINE], p99["peak_ewma"] / p99[BASELINE], 1.5)
    )
    section.ratios.append(
        Ratio(
            f"{label} / round_robin", p99["peak_ewma"], p99["round_robin"], p99["peak_ewma"] / p99["round_robin"], 0.2
        )
    )
    # Shares in percent, so that the summary's three decimals show them.
    for run in linkerd_runs:
        name = _display(run)
        if run.name == "peak_ewma":
            label = f"7b. {name}: % of GETs not answered within {TIMEOUT:g} s"
            value = run.miss_share * 100
            section.ratios.append(Ratio(label, value, 0.0, None if run.overloaded else value, 0.1, "count"))
        if run.hedge is not None and run.name in ("peak_ewma", "round_robin"):
            label = f"7b. {name}: % extra requests (arrivals / sent - 1)"
            value = run.extra * 100
            section.ratios.append(Ratio(label, value, 0.0, None if run.overloaded else value, 5.0, "count"))
    rerun = [_display(run) for run in linkerd_runs if run.earlier]
    if rerun:
        section.notes.append(
            f"b: run again after an overloaded first attempt (over {OVERLOAD} GETs in flight): {', '.join(rerun)}"
        )
    overloaded = [_display(run) for run in linkerd_runs if run.overloaded]
    if overloaded:
        section.notes.append(
            f"b: OVERLOADED, sending stopped early with over {OVERLOAD} GETs in flight: {', '.join(overloaded)}; "
            "the client could not keep the rate (is the machine busy?), so these rows measure its queue (n/a)"
        )
    section.data = {
        "slow_host": {
            "settings": {
                **asdict(plan),
                "base_delay": BASE_DELAY,
                "slow_extra": SLOW_EXTRA,
                "hosts": SLOW_HOSTS,
                "slow_index": slow,
            },
            "runs": [run.summary(None if run.name == BASELINE else slow) for run in slow_runs],
        },
        "linkerd": {
            "settings": {
                **asdict(plan),
                "base_delay": BASE_DELAY,
                "slow_delay": LINKERD_SLOW,
                "timeout": TIMEOUT,
                "hedge_delay": HEDGE_DELAY,
                "hosts": LINKERD_HOSTS,
                "slow_index": linkerd_slow,
                "slowed_requests": [total // 4, 3 * total // 4],
            },
            "hedging": "available" if unavailable is None else unavailable,
            "runs": [run.summary(linkerd_slow) for run in linkerd_runs],
        },
    }
    return section


def tail(settings: Settings) -> Section:
    plan = QUICK if settings.name == "quick" else FULL
    unavailable = hedge_support()
    slow_runs = anyio.run(_slow_host, plan, backend="asyncio")
    linkerd_runs = anyio.run(_linkerd, plan, unavailable is None, backend="asyncio")
    section = _section(slow_runs, linkerd_runs, plan, unavailable)
    plot = _plot(slow_runs, linkerd_runs)
    section.data["plot"] = plot
    section.notes.append(f"latency CDFs: {plot}" if plot else "no plot: pip install -e '.[plot]' for matplotlib")
    return section
