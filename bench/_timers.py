"""The timed request loops, and the drivers that feed them the jobs of a :class:`Rounds`.

A contender is a client plus the :class:`Requests` it sends; every contender of a comparison runs the
very same loop, so what differs between them is only the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ._rounds import Rounds

__all__ = [
    "AsyncTimer",
    "BenchError",
    "Extensions",
    "Requests",
    "SyncTimer",
    "async_timer",
    "drive",
    "drive_async",
    "sync_timer",
]

#: ``timer(count, offset)`` sends requests ``offset .. offset + count - 1`` and returns the seconds taken.
SyncTimer = Callable[[int, int], float]
AsyncTimer = Callable[[int, int], Awaitable[float]]

Extensions = dict[str, Any] | None


class BenchError(RuntimeError):
    """A request did not get the expected answer: the measurement would be meaningless."""


@dataclass(frozen=True)
class Requests:
    """Request ``i`` goes to ``urls[i % n]`` with ``extensions[i % n]`` (both of length ``n``)."""

    urls: Sequence[str]
    extensions: Sequence[Extensions]

    @classmethod
    def single(cls, url: str) -> Requests:
        return cls((url,), (None,))

    def __post_init__(self) -> None:
        if not self.urls or len(self.urls) != len(self.extensions):
            raise ValueError("urls and extensions must be non-empty and of the same length")


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise BenchError(f"{response.request.url} answered {response.status_code}: {response.text[:200]!r}")


def sync_timer(client: httpx.Client, requests: Requests) -> SyncTimer:
    urls, extensions, size = requests.urls, requests.extensions, len(requests.urls)

    def run(count: int, offset: int) -> float:
        get = client.get
        start = time.perf_counter()
        for i in range(offset, offset + count):
            _check(get(urls[i % size], extensions=extensions[i % size]))
        return time.perf_counter() - start

    return run


def async_timer(client: httpx.AsyncClient, requests: Requests, *, tasks: int, timeout: float) -> AsyncTimer:
    """``tasks`` tasks share ``client`` and the ``count`` requests of a job (an equal share each); the
    time is the wall time of the whole job, so ``count / seconds`` is the throughput."""
    urls, extensions, size = requests.urls, requests.extensions, len(requests.urls)

    async def worker(first: int, count: int) -> None:
        get = client.get
        for i in range(first, first + count):
            _check(await get(urls[i % size], extensions=extensions[i % size]))

    async def run(count: int, offset: int) -> float:
        share, extra = divmod(count, tasks)
        starts = [offset + task * share + min(task, extra) for task in range(tasks)]
        shares = [share + (task < extra) for task in range(tasks)]
        start = time.perf_counter()
        jobs = asyncio.gather(*(worker(first, n) for first, n in zip(starts, shares, strict=True) if n))
        await asyncio.wait_for(jobs, timeout)
        return time.perf_counter() - start

    return run


def drive(rounds: Rounds, timers: Mapping[str, SyncTimer]) -> Rounds:
    for job in rounds.jobs():
        rounds.record(job, timers[job.name](job.count, job.offset))
    return rounds


async def drive_async(rounds: Rounds, timers: Mapping[str, AsyncTimer]) -> Rounds:
    for job in rounds.jobs():
        rounds.record(job, await timers[job.name](job.count, job.offset))
    return rounds
