"""``python -m lbclient demo``: real backends on loopback, every strategy, how the requests spread.

Four backends run on 127.0.0.1: a, b and c answer at once (c has weight 2), d is 50 ms slow. Each
strategy sends the same number of requests from concurrent tasks; the table shows where they went and
the latency the caller saw, so the difference between blind and load- or latency-aware strategies shows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import anyio

from ._client import AsyncLBClient
from ._core import STRATEGIES, Host
from .testing import Backend

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--requests", type=int, default=300, help="requests per strategy (default 300)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="concurrent tasks (default 8)")
    parser.add_argument("--slow", type=float, default=0.05, help="extra latency of backend d, seconds")
    parser.add_argument("--strategy", action="append", choices=list(STRATEGIES), help="only these strategies")


async def _run_strategy(
    strategy: str, hosts: list[Host], requests: int, concurrency: int
) -> tuple[Counter[str], list[float], int]:
    spread: Counter[str] = Counter()
    latencies: list[float] = []
    errors = 0
    async with AsyncLBClient(hosts, strategy=strategy, timeout=10.0) as client:

        async def worker(worker_id: int) -> None:
            nonlocal errors
            for i in range(worker_id, requests, concurrency):
                started = time.perf_counter()
                response = await client.get(f"/demo/{i % 40}", extensions={"lb_key": f"user-{i % 40}"})
                latencies.append(time.perf_counter() - started)
                if response.is_success:
                    spread[response.json()["id"]] += 1
                else:
                    errors += 1

        async with anyio.create_task_group() as tg:
            for worker_id in range(concurrency):
                tg.start_soon(worker, worker_id)
    return spread, latencies, errors


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _main(args: argparse.Namespace) -> None:
    backends = [Backend("a"), Backend("b"), Backend("c"), Backend("d", delay=args.slow)]
    try:
        hosts = [Host(b.url, weight=2 if b.name == "c" else 1) for b in backends]
        print("lbclient demo: 4 backends on 127.0.0.1")
        for backend, host in zip(backends, hosts, strict=True):
            note = f", {args.slow * 1000:.0f} ms slow" if backend.delay else ""
            print(f"  {backend.name}  {backend.url}  weight {host.weight:g}{note}")
        print(f"{args.requests} requests per strategy from {args.concurrency} concurrent tasks\n")
        names = [b.name for b in backends]
        header = f"{'strategy':<28}" + "".join(f"{n:>7}" for n in names) + f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        print(header)
        print("-" * len(header))
        for strategy in args.strategy or list(STRATEGIES):
            spread, latencies, errors = await _run_strategy(strategy, hosts, args.requests, args.concurrency)
            shares = "".join(f"{spread[n] / args.requests:>7.0%}" for n in names)
            p50 = statistics.median(latencies) * 1000
            p99 = _percentile(latencies, 0.99) * 1000
            print(f"{strategy:<28}{shares}{p50:>9.1f}{p99:>9.1f}{errors:>8}")
        print("\nShares are of requests per backend. Hash strategies map 40 user keys onto the hosts.")
    finally:
        for backend in backends:
            backend.kill()


def run(args: argparse.Namespace) -> int:
    anyio.run(_main, args)
    return 0
