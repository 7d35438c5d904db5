"""Agreement of the fleet simulator with the real client: bench's tail scenario (7a) run for real and in
``lbclient.sim``, side by side, with the figures the simulator needs measured in the same run.

The real part reuses ``_tail``: five ``Backend`` servers in a child process answering after ``BASE_DELAY``,
index 2 ``SLOW_EXTRA`` later, one ``AsyncLBClient`` driven by a closed loop of ``tasks`` tasks, a warm-up,
then the measured GETs (``_one_slow``), for each strategy of ``STRATEGIES`` at each of ``CONCURRENCY``.

What the simulator needs is measured first, on the same five backends with none slowed:

- a calibration run with one task (nothing queues in the client): the client's CPU per request
  (``time.process_time`` over the run, per GET), and what is left of each latency after the servers'
  delay and that CPU, which is what loopback, the kernel's wake-ups and the servers' own handling add:
  its median is the simulator's round trip (``rtt`` is the mean of a lognormal with that median);
- per concurrency, all-fast runs (round robin, no slow host, one per round): the spread of the round
  trip, ``rtt_sigma``, is fitted so that the simulated all-fast runs have the real ones' p99.5
  (``fit_sigma``, ``FIT_QUANTILE``: where ``peak_ewma``'s p99 lands among fast answers). The
  backends' five servers share one process, whose own queue grows with the load, so a spread fitted with
  one task leaves the simulated fast answers at 16 tasks short of the real tail; and that tail is what sets
  ``peak_ewma``'s peaks, hence how often it tries the slow host. (A fit through the one-task median and
  p75, tried first, swung from 0.8 to 1.8 between runs and gave the simulator a tail 8x the measured one.)
  These runs are the calibration: they carry no bar;
- the same run again with a watcher task on the event loop (sleeps of ``STALL_TICK``; one that wakes
  more than ``STALL_MIN`` late, beyond the CPU the loop spent meanwhile, saw the process wait for a core),
  plus garbage collections longer than ``STALL_MIN``: the stalls, shown for reference. They matter for
  ``peak_ewma``: a stall makes every fast host's peak jump at once, so the slow host is tried again sooner
  (with none, the simulator sent it 0.1% of the GETs at 8 tasks where the real client sent it about 1%,
  and the p99 hangs on that 1%);
- for every measured run, its own stalls, watched the same way (there are more under load: the backends'
  process and the client compete for the 2 cores), given to that run's simulation as ``stall_rate`` and
  ``stall_mean``;
- for every measured run, its own CPU per request (the cost per GET falls as the client gets busier:
  a wake-up of the event loop serves more answers), which the simulator spends as one event loop,
  a request at a time.

Then ``lbclient.sim.single_client_configs`` runs the same scenario (same requests, warm-up and tasks)
on the fake clock with those figures, and each p50 and p99 is compared: simulated / real, with the bar
``BAND`` (the issue's "agree within 20%"). The all-fast runs at each concurrency are shown too, without
a bar: they are where the round trip's spread was fitted.

32 tasks are left out: at about 0.5 ms of CPU per GET a 2-core machine's event loop saturates near 16
(about 1,900 GETs/s), and beyond that the real latencies measure the machine's scheduler (the backends'
process and whatever else runs share the other core), not the client's queue the simulator models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from lbclient import sim

from ._report import Ratio, Section
from ._settings import Settings
from ._tail import (
    BASE_DELAY,
    BASELINE,
    FULL,
    QUICK,
    SLOW_EXTRA,
    SLOW_HOSTS,
    Farm,
    Run,
    TailSettings,
    _one_slow,
    percentile,
)

__all__ = ["agreement"]

STRATEGIES = ("round_robin", "least_connections", "power_of_two_choices", "peak_ewma")
CONCURRENCY = (8, 16)
#: Simulated / real within this band passes (the issue's "within 20%").
BAND = (0.8, 1.2)
#: The calibration run: one task, so nothing waits for the client's CPU.
CALIBRATION_TASKS = 1
CALIBRATION = {"full": (200, 1_000), "quick": (100, 300)}  # (warm-up, measured) GETs
SLOW = SLOW_HOSTS // 2
SEED = 0
#: Rounds of every measured run; the figures pool them, real and simulated alike.
ROUNDS = {"full": 3, "quick": 1}
#: The bisection of the round trip's spread at each concurrency: its range and steps.
SIGMA_MAX = 3.0
SIGMA_STEPS = 16
#: The quantile of the all-fast runs the fit matches: where peak_ewma's p99 lands among the fast answers
#: when it sends 0.5-1% of its GETs to the slow host (for the other strategies the p99 is a slow answer).
FIT_QUANTILE = 99.5
#: The stall watcher's sleep, and the lateness beyond which a wake-up counts as a stall (seconds). With one
#: task the client's own work is about 1 ms of CPU per GET in several callbacks: none takes 2 ms.
STALL_TICK = 0.001
STALL_MIN = 0.002


@dataclass(frozen=True)
class Band(Ratio):
    """A ratio that passes within ``low``..``bar`` (both ends), not only under ``bar``."""

    low: float = BAND[0]

    @property
    def verdict(self) -> str:
        if self.bar is None:
            return ""
        if self.ratio is None:
            return "n/a"
        # "OVER" on both sides: it is the word ``--strict`` looks for.
        return "ok" if self.low <= self.ratio <= self.bar else "OVER"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "bar_low": self.low}


@dataclass(frozen=True)
class Calibration:
    """What the simulator takes from the one-task all-fast run (seconds)."""

    requests: int
    p50: float
    p99: float
    cpu_per_request: float
    rtt: float
    rtt_sigma: float
    rtt_p50: float
    rtt_p75: float
    rtt_p99: float
    stalls: int = 0
    stall_seconds: float = 0.0  # the watched run's length
    stall_rate: float = 0.0
    stall_mean: float = 0.0


@dataclass(frozen=True)
class Stalls:
    """The event loop's stalls over one run: how many, over how many seconds, and their mean length."""

    count: int
    seconds: float
    mean: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @classmethod
    def of(cls, lengths: Sequence[float], seconds: float) -> Stalls:
        return cls(len(lengths), seconds, statistics.fmean(lengths) if lengths else 0.0)


async def _watch(stalls: list[tuple[float, float]], done: anyio.Event) -> None:
    """Stalls until ``done``: a ``STALL_TICK`` sleep that wakes more than ``STALL_MIN`` late *beyond the CPU
    this thread used meanwhile*. Lateness spent running other callbacks is the client's own queue, which the
    simulator models from the CPU per GET; what is left is time the process was ready but not running
    (another process had the core). Each stall is (when it began, its length)."""
    while not done.is_set():
        wall, cpu = time.perf_counter(), time.thread_time()
        await anyio.sleep(STALL_TICK)
        woke = time.perf_counter()
        off_cpu = woke - wall - STALL_TICK - (time.thread_time() - cpu)
        if off_cpu > STALL_MIN:
            stalls.append((woke - off_cpu, off_cpu))


@contextlib.contextmanager
def _gc_pauses(stalls: list[tuple[float, float]]) -> Iterator[None]:
    """Garbage collections longer than ``STALL_MIN``: a pause of the whole loop, which the watcher counts as
    CPU (it is this thread's), so they are timed here."""
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        elif (pause := time.perf_counter() - started) > STALL_MIN:
            stalls.append((started, pause))

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


async def _watched(farm: Farm, strategy: str, slow: int | None, plan: TailSettings) -> tuple[Run, Stalls]:
    """A run of ``_one_slow`` with the stall watcher and the GC timer on; the stalls counted are those that
    began in its measured part (its last ``run.seconds``: not the warm-up, nor the full collection that
    ``_one_slow`` makes between the two, when nothing is in flight)."""
    stalls: list[tuple[float, float]] = []
    done = anyio.Event()
    with _gc_pauses(stalls):
        async with anyio.create_task_group() as group:
            group.start_soon(_watch, stalls, done)
            run = await _one_slow(farm, strategy, slow, plan)
            measured_from = time.perf_counter() - run.seconds
            done.set()
    return run, Stalls.of([length for began, length in stalls if began >= measured_from], run.seconds)


def with_stalls(calibration: Calibration, stalls: Stalls) -> Calibration:
    return dataclasses.replace(
        calibration,
        stalls=stalls.count,
        stall_seconds=stalls.seconds,
        stall_rate=stalls.rate,
        stall_mean=stalls.mean,
    )


def cpu_per_request(run: Run) -> float:
    """The client process's CPU seconds per GET over the measured part of ``run``."""
    return run.cpu * run.seconds / run.sent


def calibrate(run: Run) -> Calibration:
    """Fit the simulator's round trip to the one-task run: what each latency has beyond the servers' delay
    and the client's CPU, as a lognormal through that remainder's median and p99 (see the module
    docstring for why not the p75)."""
    cpu = cpu_per_request(run)
    ordered = run.ordered
    rest = [latency - BASE_DELAY - cpu for latency in ordered]
    rest_p50, rest_p75, rest_p99 = percentile(rest, 50), percentile(rest, 75), percentile(rest, 99)
    if rest_p50 <= 0:
        raise ValueError(
            f"the one-task median ({ordered[len(ordered) // 2] * 1e3:.3f} ms) is not above the servers' delay plus "
            f"the client's CPU ({(BASE_DELAY + cpu) * 1e3:.3f} ms): nothing left for the round trip"
        )
    sigma = math.log(max(rest_p99, rest_p50) / rest_p50) / statistics.NormalDist().inv_cdf(0.99)
    return Calibration(
        requests=run.sent,
        p50=percentile(ordered, 50),
        p99=percentile(ordered, 99),
        cpu_per_request=cpu,
        rtt=rest_p50 * math.exp(sigma**2 / 2),  # the mean of a lognormal of that median
        rtt_sigma=sigma,
        rtt_p50=rest_p50,
        rtt_p75=rest_p75,
        rtt_p99=rest_p99,
    )


@dataclass
class Trial:
    """One real run, and what it measured for the simulator."""

    real: Run
    cpu: float  # the real client's CPU per GET
    stalls: Stalls  # the real run's own stalls


@dataclass
class Pair:
    """One strategy at one concurrency: its real trials, one per round, and the simulator's run of them
    all. Figures pool the rounds: the real p50 and p99 are those of every round's GETs together, and the
    simulator runs as many GETs as the rounds did, with their CPU per GET and stalls taken together. A p99
    of one round is a noisy estimate where a strategy sends about 1% to the slow host (peak_ewma)."""

    tasks: int
    strategy: str  # a strategy, or BASELINE ("all-fast") for the run with no slow host
    trials: list[Trial]
    simulated: sim.SimResult | None = None
    #: The same run simulated with the servers' delays alone: a control of how much the figures test.
    null: sim.SimResult | None = None

    @property
    def fast(self) -> bool:
        return self.strategy == BASELINE

    @property
    def sim(self) -> sim.SimResult:
        if self.simulated is None:
            raise RuntimeError(f"{self.strategy} x{self.tasks} was not simulated")
        return self.simulated

    def real_share(self) -> float:
        return sum(t.real.arrivals[SLOW] for t in self.trials) / sum(sum(t.real.arrivals) for t in self.trials)

    def sim_share(self) -> float:
        return self.sim.host_attempts[SLOW] / sum(self.sim.host_attempts)

    def real(self, name: str) -> list[float]:
        """The real ``p50`` or ``p99`` of each round (seconds)."""
        share = {"p50": 50, "p99": 99}[name]
        return [percentile(t.real.ordered, share) for t in self.trials]

    def figures(self) -> dict[str, tuple[float, float]]:
        """(real, simulated) p50 and p99, seconds, over the rounds pooled."""
        pooled = self.pooled()
        return {"p50": (percentile(pooled, 50), self.sim.p50), "p99": (percentile(pooled, 99), self.sim.p99)}

    def null_ratios(self) -> tuple[float, float] | None:
        """The control's p50 and p99 over the real ones (None before it ran)."""
        if self.null is None:
            return None
        (r50, _), (r99, _) = self.figures().values()
        return self.null.p50 / r50, self.null.p99 / r99

    def pooled(self) -> list[float]:
        """Every round's latencies, sorted."""
        return sorted(latency for t in self.trials for latency in t.real.latencies)

    @property
    def cpu(self) -> float:
        """CPU per GET over the rounds (they have the same number of GETs)."""
        return statistics.fmean(t.cpu for t in self.trials)

    @property
    def stalls(self) -> Stalls:
        """The rounds' stalls together."""
        count = sum(t.stalls.count for t in self.trials)
        length = sum(t.stalls.count * t.stalls.mean for t in self.trials)
        return Stalls(count, sum(t.stalls.seconds for t in self.trials), length / count if count else 0.0)


NO_STALLS = Stalls(0, 1.0, 0.0)


def _simulate(
    tasks: int,
    strategy: str,
    fast: bool,
    plan: TailSettings,
    rtt_median: float,
    cpu: float,
    stalls: Stalls,
    rounds: int,
    sigma: float,
) -> sim.SimResult:
    (config,) = sim.single_client_configs(
        tasks,
        strategies=(strategy,),
        requests=plan.requests * rounds,
        warmup=plan.warmup,
        slow_extra=0.0 if fast else SLOW_EXTRA,
        rtt=rtt_median * math.exp(sigma**2 / 2),  # the mean of a lognormal of that median
        rtt_sigma=sigma,
        client_cpu=cpu,
        stall_rate=stalls.rate,
        stall_mean=stalls.mean,
        seed=SEED,
    )
    return sim.run(config)


def fit_sigma(fast: Pair, plan: TailSettings, calibration: Calibration) -> float:
    """The round trip's spread at ``fast``'s concurrency: the ``rtt_sigma`` for which the simulated all-fast
    runs have the real ones' ``FIT_QUANTILE`` (bisection; the simulated quantile grows with it). The
    backends' five servers share one process, whose own queue grows with the load: a spread fitted at one
    task leaves the simulator's fast answers at 16 tasks short of the real tail, and that tail is what
    sets ``peak_ewma``'s peaks."""
    target = percentile(fast.pooled(), FIT_QUANTILE)
    low, high = 0.0, SIGMA_MAX
    rounds = len(fast.trials)
    for _ in range(SIGMA_STEPS):
        middle = (low + high) / 2
        simulated = _simulate(
            fast.tasks, "round_robin", True, plan, calibration.rtt_p50, fast.cpu, fast.stalls, rounds, middle
        )
        low, high = (middle, high) if simulated.cdf[f"p{FIT_QUANTILE:g}"] < target else (low, middle)
    return (low + high) / 2


async def _measure(
    plan: TailSettings, calibration_plan: TailSettings, rounds: int
) -> tuple[Calibration, list[tuple[int, Run, Stalls]]]:
    """The calibration run, again with the stall watcher, then per concurrency the all-fast run, then
    ``rounds`` rounds in which every strategy runs at every concurrency with the slow host (interleaved, so
    a change in the machine's load falls on all of them alike), each watched for its own stalls. The same
    backends throughout (connections are per client). The watcher's own wake-ups stay out of the
    calibration run's CPU and latencies; in the measured runs they are part of the client's CPU per GET."""
    runs: list[tuple[int, Run, Stalls]] = []
    with Farm([BASE_DELAY] * SLOW_HOSTS) as farm:
        calibration = calibrate(await _one_slow(farm, "round_robin", None, calibration_plan))
        calibration = with_stalls(calibration, (await _watched(farm, "round_robin", None, calibration_plan))[1])
        for _ in range(rounds):
            farm.set_delay(SLOW, BASE_DELAY)
            for tasks in CONCURRENCY:
                run, stalls = await _watched(farm, "round_robin", None, dataclasses.replace(plan, tasks=tasks))
                runs.append((tasks, run, stalls))
            farm.set_delay(SLOW, BASE_DELAY + SLOW_EXTRA)
            for tasks in CONCURRENCY:
                for strategy in STRATEGIES:
                    run, stalls = await _watched(farm, strategy, SLOW, dataclasses.replace(plan, tasks=tasks))
                    runs.append((tasks, run, stalls))
    return calibration, runs


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _ratios(pair: Pair) -> tuple[float, float]:
    (r50, s50), (r99, s99) = pair.figures().values()
    return s50 / r50, s99 / r99


def _verdict(ratio: float) -> str:
    low, high = BAND
    return "ok" if low <= ratio <= high else ("high" if ratio > high else "low")


def _section(
    pairs: Sequence[Pair], calibration: Calibration, plan: TailSettings, rounds: int, sigmas: dict[int, float]
) -> Section:
    low, high = BAND
    section = Section(
        key="agreement",
        title=(
            f"8. Simulator vs real client, tail scenario 7a (5 backends of {BASE_DELAY * 1000:g} ms, index {SLOW} "
            f"+{SLOW_EXTRA * 1000:g} ms), AsyncLBClient on asyncio; sim / real within {low:g}..{high:g}"
        ),
        headers=[
            "tasks",
            "strategy",
            "real p50 ms",
            "sim p50 ms",
            "sim/real",
            "real p99 ms",
            "real p99 each round",
            "sim p99 ms",
            "sim/real",
            "slow share real/sim",
            "CPU/GET ms",
            "stalls /s / mean ms",
            "",
            "control p50, p99",
        ],
    )
    for pair in pairs:
        figures = pair.figures()
        (r50, s50), (r99, s99) = figures["p50"], figures["p99"]
        ratios = (s50 / r50, s99 / r99)
        verdicts = "-" if pair.fast else " ".join(_verdict(r) for r in ratios)
        control = pair.null_ratios()
        share = "-" if pair.fast else f"{pair.real_share() * 100:.1f}% / {pair.sim_share() * 100:.1f}%"
        section.rows.append(
            [
                str(pair.tasks),
                pair.strategy,
                _ms(r50),
                _ms(s50),
                f"{ratios[0]:.2f}",
                _ms(r99),
                " ".join(_ms(value) for value in pair.real("p99")),
                _ms(s99),
                f"{ratios[1]:.2f}",
                share,
                f"{pair.cpu * 1000:.3f}",
                ", ".join(f"{t.stalls.rate:.1f}/{_ms(t.stalls.mean)}" for t in pair.trials),
                verdicts,
                "-" if pair.fast or control is None else f"{control[0]:.2f} {control[1]:.2f}",
            ]
        )
        if pair.fast:
            continue
        for name, (real, simulated) in figures.items():
            section.ratios.append(
                Band(
                    f"8. {name} x{pair.tasks} {pair.strategy}: simulated / real (bar {low:g}..{high:g})",
                    simulated,
                    real,
                    simulated / real,
                    high,
                )
            )
    c = calibration
    compared = [pair for pair in pairs if not pair.fast]
    agreed = sum(low <= r <= high for pair in compared for r in _ratios(pair))
    by_control = sum(low <= r <= high for pair in compared for r in (pair.null_ratios() or ()))
    section.notes += [
        f"{agreed} of {2 * len(compared)} figures within {low:g}..{high:g}; the control, a simulator given only "
        f"the servers' delays (no round trip, client CPU or stalls), puts {by_control} within the band: those "
        "figures are set by the delays the simulator is given exactly (a slow answer's 55 ms, a fast one's 5 ms), "
        "and the ones the control misses are those that test the model of the client",
        f"{plan.requests:,} GETs per run after {plan.warmup:,} of warm-up, {rounds} round(s) of every run with the "
        "slow host, interleaved; real p50/p99 are over the rounds' GETs pooled, and the simulator (seed "
        f"{SEED}) runs as many GETs with the rounds' CPU per GET and stalls taken together; 'all-fast' rows "
        "(round_robin, no slow host) are the calibration of the round trip's spread and have no bar; "
        "rtt_sigma fitted to them: " + ", ".join(f"{sigma:.3f} at {tasks} tasks" for tasks, sigma in sigmas.items()),
        "peak_ewma's p99 is on a knife edge: it sends about 1% of GETs to the slow host, so its p99 is either a "
        "fast answer or a slow one depending on whether that share is just under or just over 1% (about +-20% "
        "from sampling alone at 3,000 GETs); the 'each round' column shows how far single rounds differ, and "
        "the slow share column is the quantity behind it",
        f"measured for the simulator, one task and no slow host ({c.requests:,} GETs): p50 {_ms(c.p50)} ms, p99 "
        f"{_ms(c.p99)} ms, client CPU {c.cpu_per_request * 1000:.3f} ms/GET; beyond the servers' "
        f"{BASE_DELAY * 1000:g} ms and that CPU: median {_ms(c.rtt_p50)} ms, p75 {_ms(c.rtt_p75)} ms, "
        f"p99 {_ms(c.rtt_p99)} ms (a lognormal through median and p99: mean {_ms(c.rtt)} ms, sigma "
        f"{c.rtt_sigma:.3f}, shown for comparison); event-loop stalls over "
        f"{STALL_MIN * 1000:g} ms in the same run watched again: {c.stalls} in {c.stall_seconds:.1f} s -> "
        f"stall_rate {c.stall_rate:.1f}/s, stall_mean {_ms(c.stall_mean)} ms (exponential)",
        "client_cpu of each simulated run = the real run's own process_time / GETs (the CPU/GET column); "
        "stall_rate and stall_mean = the real run's own stalls (the stalls column: wake-ups of a 1 ms watcher "
        f"late by more than {STALL_MIN * 1000:g} ms beyond the CPU the loop used meanwhile, and GC pauses)",
        f"{max(CONCURRENCY) * 2} tasks left out: the client's event loop saturates (about 0.5 ms of CPU per GET, "
        "~1,900 GETs/s at 16 on 2 cores), and past that the real latencies measure the OS scheduler",
    ]
    section.data = {
        "settings": {
            **dataclasses.asdict(plan),
            "concurrency": list(CONCURRENCY),
            "strategies": list(STRATEGIES),
            "band": list(BAND),
            "base_delay": BASE_DELAY,
            "slow_extra": SLOW_EXTRA,
            "hosts": SLOW_HOSTS,
            "slow_index": SLOW,
            "seed": SEED,
        },
        "calibration": dataclasses.asdict(calibration),
        "runs": [
            {
                "tasks": pair.tasks,
                "strategy": pair.strategy,
                "ratios": {name: simulated / real for name, (real, simulated) in pair.figures().items()},
                "simulated": {
                    "client_cpu_per_request": pair.cpu,
                    "stalls": {**dataclasses.asdict(pair.stalls), "rate": pair.stalls.rate},
                    "p50": pair.sim.p50,
                    "p99": pair.sim.p99,
                    "p999": pair.sim.p999,
                    "host_attempts": pair.sim.host_attempts,
                    "simulated_seconds": pair.sim.simulated_seconds,
                },
                "trials": [
                    {
                        "client_cpu_per_request": t.cpu,
                        "stalls": {**dataclasses.asdict(t.stalls), "rate": t.stalls.rate},
                        "real": t.real.summary(None if pair.fast else SLOW),
                    }
                    for t in pair.trials
                ],
            }
            for pair in pairs
        ],
    }
    return section


def agreement(settings: Settings) -> Section:
    plan = QUICK if settings.name == "quick" else FULL
    warmup, requests = CALIBRATION[settings.name]
    calibration_plan = dataclasses.replace(plan, tasks=CALIBRATION_TASKS, warmup=warmup, requests=requests)
    rounds = ROUNDS[settings.name]
    calibration, runs = anyio.run(_measure, plan, calibration_plan, rounds, backend="asyncio")
    pairs: dict[tuple[int, str], Pair] = {}
    for tasks, run, stalls in runs:
        pair = pairs.setdefault((tasks, run.name), Pair(tasks, run.name, []))
        pair.trials.append(Trial(run, cpu_per_request(run), stalls))
    sigmas = {pair.tasks: fit_sigma(pair, plan, calibration) for pair in pairs.values() if pair.fast}
    for pair in pairs.values():
        strategy = "round_robin" if pair.fast else pair.strategy
        sigma = sigmas[pair.tasks]
        trials = len(pair.trials)
        rtt = calibration.rtt_p50
        pair.simulated = _simulate(pair.tasks, strategy, pair.fast, plan, rtt, pair.cpu, pair.stalls, trials, sigma)
        # The control: the servers' delays alone (no round trip, client CPU or stalls).
        pair.null = _simulate(pair.tasks, strategy, pair.fast, plan, 0.0, 0.0, NO_STALLS, trials, 0.0)
    return _section(list(pairs.values()), calibration, plan, rounds, sigmas)
