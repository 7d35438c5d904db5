"""Interleaved rounds: every contender runs in every round, in an order that changes from round to round.

A :class:`Rounds` hands out :class:`Job` objects (warm-up first, then the measured rounds) and takes back
the seconds each one took; the sync and async drivers in ``_timers`` are two-line loops over it. Noise
that drifts over time (another process, CPU frequency, the GC) then hits every contender alike, and
paired statistics (the same round's times) cancel most of what is left.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Job", "Plan", "Rounds", "round_orders"]


@dataclass(frozen=True)
class Job:
    """Send ``count`` requests with ``name``, starting at request index ``offset``."""

    name: str
    count: int
    offset: int
    warmup: bool


@dataclass(frozen=True)
class Plan:
    """``rounds`` rounds of ``count`` requests per contender after ``warmup`` requests each (a number, or
    one per contender name). No new round starts once ``budget`` seconds have passed and ``min_rounds``
    are done; warm-up stops early at the budget too."""

    rounds: int
    count: int
    warmup: int | Mapping[str, int]
    budget: float
    min_rounds: int = 3

    def warmup_for(self, name: str) -> int:
        return self.warmup if isinstance(self.warmup, int) else self.warmup.get(name, 0)


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Round ``i`` runs ``names`` rotated by ``i // 2`` and reversed on odd rounds: every contender runs
    first, last and before or after each other one about equally often (all 6 orders for 3 names)."""
    count = len(names)
    orders = []
    for index in range(rounds):
        shift = (index // 2) % count
        order = [*names[shift:], *names[:shift]]
        orders.append(order[::-1] if index % 2 else order)
    return orders


class Rounds:
    """The jobs of a plan and the per-request seconds measured in each round."""

    def __init__(self, names: Sequence[str], plan: Plan) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"contender names must be distinct and non-empty: {names!r}")
        self.names = list(names)
        self.plan = plan
        self.samples: dict[str, list[float]] = {name: [] for name in names}
        self.stopped_early = False
        self.elapsed = 0.0

    def jobs(self) -> Iterator[Job]:
        plan = self.plan
        start = time.perf_counter()
        deadline = start + plan.budget
        for name in self.names:
            done = 0
            total = plan.warmup_for(name)
            while done < total and time.perf_counter() < deadline:
                chunk = min(max(plan.count, 1_000), total - done)
                yield Job(name, chunk, done, warmup=True)
                done += chunk
        for index, order in enumerate(round_orders(self.names, plan.rounds)):
            if index >= plan.min_rounds and time.perf_counter() > deadline:
                self.stopped_early = True
                break
            gc.collect()  # start every round with the same (empty) garbage
            for name in order:
                yield Job(name, plan.count, index * plan.count, warmup=False)
        self.elapsed = time.perf_counter() - start

    def record(self, job: Job, seconds: float) -> None:
        if not job.warmup:
            self.samples[job.name].append(seconds / job.count)

    @property
    def completed(self) -> int:
        """Measured rounds done (every contender ran in each)."""
        return min(len(values) for values in self.samples.values())

    def median(self, name: str) -> float:
        """Median seconds per request of ``name`` over the rounds."""
        return statistics.median(self.samples[name])

    def paired_ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of ``name``'s time / ``baseline``'s time in the same round."""
        pairs = zip(self.samples[name], self.samples[baseline], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def paired_difference(self, name: str, baseline: str) -> float:
        """Median over rounds of ``name``'s time - ``baseline``'s time in the same round (seconds)."""
        pairs = zip(self.samples[name], self.samples[baseline], strict=True)
        return statistics.median(a - b for a, b in pairs)

    def spread(self, name: str) -> tuple[float, float]:
        """The quartiles of ``name``'s per-request seconds (min and max with fewer than 4 rounds)."""
        values = sorted(self.samples[name])
        if len(values) < 4:
            return values[0], values[-1]
        quartiles = statistics.quantiles(values, n=4)
        return quartiles[0], quartiles[2]

    def to_json(self) -> dict[str, object]:
        return {
            "rounds": self.completed,
            "requests_per_round": self.plan.count,
            "warmup": {name: self.plan.warmup_for(name) for name in self.names},
            "stopped_early_at_budget": self.stopped_early,
            "seconds": round(self.elapsed, 3),
            "per_request_seconds": self.samples,
        }
