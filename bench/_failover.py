"""Failover: one of three backends is killed in the middle of a run; does the caller see anything?

3 ``lbclient.testing.Backend`` servers on loopback, ``AsyncLBClient`` with its defaults (3 attempts,
outlier detection after 5 consecutive failures), 2,000 GETs from 8 tasks; one backend is killed after
a quarter of them. Reported: failures the caller saw, the time from the kill to the ejection, and the
attempts the dead host got after its ejection (the bar: none).
"""

from __future__ import annotations

import logging
import time

import anyio

import lbclient
from lbclient.testing import Backend

from ._report import Ratio, Section
from ._settings import Settings

__all__ = ["failover"]

REQUESTS = 2_000
CONCURRENCY = 8
KILL_AFTER = REQUESTS // 4


class _EjectionWatch(logging.Handler):
    """Notes when the pool logs the ejection of ``url``, and how many requests that host had then."""

    def __init__(self, url: str, client: lbclient.AsyncLBClient) -> None:
        super().__init__(level=logging.WARNING)
        self.url = url
        self.client = client
        self.at: float | None = None
        self.requests_then: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and "ejected" in record.getMessage() and self.url in record.getMessage():
            self.at = time.monotonic()
            state = next(h for h in self.client.pool.hosts if h.url == self.url)
            self.requests_then = state.requests


async def _run() -> dict[str, float | int | None]:
    backends = [Backend(name) for name in ("a", "b", "c")]
    victim = backends[1]
    logger = logging.getLogger("lbclient")
    try:
        async with lbclient.AsyncLBClient([b.url for b in backends], trust_env=False, timeout=10.0) as client:
            watch = _EjectionWatch(victim.url, client)
            logger.addHandler(watch)
            previous_level = logger.level
            logger.setLevel(logging.WARNING)
            failures = 0
            done = 0
            killed_at: float | None = None
            started = time.monotonic()

            async def worker(offset: int) -> None:
                nonlocal failures, done, killed_at
                for _ in range(offset, REQUESTS, CONCURRENCY):
                    try:
                        response = await client.get("/work")
                        failures += response.status_code != 200
                    except lbclient.NoAvailableHostError:
                        failures += 1
                    except Exception:  # noqa: BLE001 - every error the caller sees is what we count
                        failures += 1
                    done += 1
                    if done == KILL_AFTER and killed_at is None:
                        killed_at = time.monotonic()
                        victim.kill()

            try:
                async with anyio.create_task_group() as group:
                    for offset in range(CONCURRENCY):
                        group.start_soon(worker, offset)
            finally:
                logger.removeHandler(watch)
                logger.setLevel(previous_level)
            elapsed = time.monotonic() - started
            dead = next(h for h in client.pool.hosts if h.url == victim.url)
            attempts = sum(h.requests for h in client.pool.hosts)
            after = None if watch.requests_then is None else dead.requests - watch.requests_then
            return {
                "requests": REQUESTS,
                "failures": failures,
                "attempts": attempts,
                "seconds": elapsed,
                "kill_to_ejection": None if watch.at is None or killed_at is None else watch.at - killed_at,
                "dead_host_attempts_before_ejection": None if watch.requests_then is None else watch.requests_then,
                "dead_host_attempts_after_ejection": after,
                "dead_host_failures": dead.failures,
            }
    finally:
        for backend in backends:
            backend.kill()


async def _outage() -> tuple[int, int]:
    """Every host answers 503: (requests sent by the caller, attempts that reached the hosts)."""
    backends = [Backend(name, status=503) for name in ("a", "b", "c")]
    try:
        async with lbclient.AsyncLBClient(
            [b.url for b in backends], trust_env=False, outlier_detection=None, timeout=10.0
        ) as client:

            async def worker(offset: int) -> None:
                for _ in range(offset, REQUESTS, CONCURRENCY):
                    await client.get("/work")

            async with anyio.create_task_group() as group:
                for offset in range(CONCURRENCY):
                    group.start_soon(worker, offset)
        return REQUESTS, sum(b.count("GET", "/work") for b in backends)
    finally:
        for backend in backends:
            backend.kill()


def failover(settings: Settings) -> Section:
    result = anyio.run(_run)
    sent, arrived = anyio.run(_outage)
    policy = lbclient.RetryPolicy()
    # The budget allows budget_ratio of the requests plus budget_min_retries a second over its window.
    allowance = 1 + policy.budget_ratio + policy.budget_min_retries * policy.budget_window / sent
    result["outage_attempts_per_request"] = arrived / sent
    to_ejection = result["kill_to_ejection"]
    section = Section(
        key="failover",
        title=(
            f"5. Failover: 3 backends, one killed after {KILL_AFTER:,} of {REQUESTS:,} GETs, "
            f"{CONCURRENCY} tasks, AsyncLBClient defaults"
        ),
        headers=["failures seen", "attempts / request", "kill -> ejection", "dead host attempts after ejection"],
        rows=[
            [
                str(result["failures"]),
                f"{int(result['attempts'] or 0) / REQUESTS:.3f}",
                "never" if to_ejection is None else f"{float(to_ejection) * 1000:.1f} ms",
                "-"
                if result["dead_host_attempts_after_ejection"] is None
                else str(result["dead_host_attempts_after_ejection"]),
            ]
        ],
        data=dict(result),
    )
    section.notes.append(
        f"total outage (every host answers 503, outlier detection off): {arrived / sent:.3f} attempts per request "
        f"with the default retry budget (at most {allowance:.3f}: 1 + {policy.budget_ratio:g} + the floor)"
    )
    label = "5. total outage: attempts per request (retry budget)"
    section.ratios.append(Ratio(label, arrived / sent, 1.0, arrived / sent, allowance, "count"))
    failures = float(result["failures"] or 0)
    section.ratios.append(Ratio("5. failover: failures seen by the caller", failures, 0.0, failures, 0.0, "count"))
    after = result["dead_host_attempts_after_ejection"]
    value = None if after is None else float(after)
    label = "5. failover: attempts to the dead host after its ejection"
    section.ratios.append(Ratio(label, -1.0 if value is None else value, 0.0, value, 0.0, "count"))
    return section
