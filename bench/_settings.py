"""How much to measure: the ``full`` default (a few minutes) and ``--quick`` (under a minute)."""

from __future__ import annotations

from dataclasses import dataclass

from ._rounds import Plan

__all__ = ["FULL", "QUICK", "Settings"]


@dataclass(frozen=True)
class Settings:
    """Counts are requests per contender; budgets are seconds after which no new round starts (once
    ``min_rounds`` are done) and warm-up stops early."""

    name: str
    # 1 and 4: sync, sequential, against nginx.
    sync_rounds: int
    sync_requests: int
    sync_warmup: int
    sync_budget: float
    # 2: async, ``async_tasks`` tasks sharing one client, against nginx.
    async_rounds: int
    async_requests: int
    async_warmup: int
    async_budget: float
    # 3: balancer cost per strategy and pool size, with httpx.MockTransport.
    scale_rounds: int
    scale_requests: int
    scale_warmup_max_per_host: int
    scale_warmup_coverage: float
    scale_budget: float
    # 3b: raw pick cost (pool.acquire + lease.release), timeit.
    pick_ops: int
    pick_repeats: int
    async_tasks: int = 64
    scale_hosts: tuple[int, ...] = (10, 100, 1_000, 10_000)
    scale_warmup: int = 500
    scale_cold_requests: int = 1_000  # a fresh client's first requests, timed once
    min_rounds: int = 3
    async_round_timeout: float = 120.0  # seconds; a round (or warm-up chunk) that takes longer fails

    def sync_plan(self) -> Plan:
        return Plan(self.sync_rounds, self.sync_requests, self.sync_warmup, self.sync_budget, self.min_rounds)

    def async_plan(self) -> Plan:
        return Plan(self.async_rounds, self.async_requests, self.async_warmup, self.async_budget, self.min_rounds)

    def scale_plan(self) -> Plan:
        return Plan(self.scale_rounds, self.scale_requests, self.scale_warmup, self.scale_budget, self.min_rounds)


FULL = Settings(
    name="full",
    sync_rounds=20,
    sync_requests=1_000,
    sync_warmup=1_000,
    sync_budget=60.0,
    async_rounds=16,
    async_requests=512,
    async_warmup=1_536,
    async_budget=40.0,
    scale_rounds=12,
    scale_requests=400,
    scale_warmup_max_per_host=3,
    scale_warmup_coverage=0.95,
    scale_budget=12.0,
    pick_ops=10_000,
    pick_repeats=5,
)

QUICK = Settings(
    name="quick",
    sync_rounds=6,
    sync_requests=300,
    sync_warmup=300,
    sync_budget=4.0,
    async_rounds=3,
    async_requests=256,
    async_warmup=512,
    async_budget=4.0,
    scale_rounds=3,
    scale_requests=200,
    scale_warmup_max_per_host=1,
    scale_warmup_coverage=0.95,
    scale_budget=2.0,
    scale_cold_requests=200,
    pick_ops=3_000,
    pick_repeats=3,
)
