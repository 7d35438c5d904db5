"""``lbclient tcp-proxy`` next to HAProxy in TCP mode, in front of the same two nginx backends.

HTTP is only the load here: the proxies forward bytes and know nothing of it. Two regimes:

- kept-alive connections (16 tasks, one connection each): the per-byte cost of forwarding small
  messages both ways, the pattern of a database or cache client;
- a new connection per request (8 tasks, ``Connection: close``): the cost of accepting, picking a host
  and connecting upstream.

Each contender runs the same number of requests in each of a few rounds, taken in turn; the median
round counts. The baseline is httpx straight to one backend (no proxy, no balancing).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx

from ._nginx import LOOPBACK, _version, find_nginx
from ._proxies import _BACKEND_CONFIG, _nginx_command, _server, find_haproxy
from ._report import Ratio, Section, fmt_ratio
from ._settings import Settings

__all__ = ["tcp"]

_HAPROXY_TCP = """\
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s

frontend bench
    bind {host}:{port}
    default_backend backends

backend backends
    balance leastconn
{servers}
"""

DIRECT = "httpx -> nginx backend (no proxy)"
HAPROXY = "httpx -> HAProxy mode tcp, leastconn"
OURS = "httpx -> lbclient tcp-proxy least_connections"
#: (label, tasks, close each connection)
REGIMES = (("kept-alive connections", 16, False), ("a new connection per request", 8, True))


async def _round(url: str, tasks: int, requests: int, close: bool) -> tuple[float, list[float]]:
    """Seconds for ``requests`` GETs from ``tasks`` tasks, and each request's latency."""
    latencies: list[float] = []
    headers = {"Connection": "close"} if close else {}
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=30.0, headers=headers) as client:
        await asyncio.gather(*(client.get(f"{url}/x") for _ in range(tasks)))  # connections up

        async def worker(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                response = await client.get(f"{url}/x")
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(requests // tasks) for _ in range(tasks)))
        return time.perf_counter() - started, latencies


def _measure(
    urls: dict[str, str], tasks: int, close: bool, rounds: int, requests: int
) -> dict[str, tuple[float, float]]:
    """Per contender: (req/s of the median round, p99 latency over all rounds)."""
    seconds: dict[str, list[float]] = {name: [] for name in urls}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            elapsed, times = asyncio.run(_round(url, tasks, requests, close))
            seconds[name].append(elapsed)
            latencies[name].extend(times)
    done = requests // tasks * tasks
    return {
        name: (done / statistics.median(seconds[name]), statistics.quantiles(latencies[name], n=100)[98])
        for name in urls
    }


def tcp(settings: Settings, nginx: str | None, haproxy: str | None) -> Section:
    quick = settings.name == "quick"
    rounds, requests = (3, 1_600) if quick else (5, 4_800)
    nginx_path, haproxy_path = find_nginx(nginx), find_haproxy(haproxy)
    nginx_version = _version(nginx_path)
    with tempfile.TemporaryDirectory(prefix="lbclient-bench-tcp-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        backends: list[str] = []
        for name in ("t1", "t2"):
            root = base / name

            def config(port: int, root: Path = root, name: str = name) -> str:
                return _BACKEND_CONFIG.format(root=root, host=LOOPBACK, port=port, name=name, status="")

            command = _nginx_command(nginx_path, nginx_version, root, config)
            backends.append(stack.enter_context(_server(f"nginx backend {name}", root, command, signal.SIGQUIT)))
        addresses = [httpx.URL(url).netloc.decode("ascii") for url in backends]

        def haproxy_command(port: int) -> list[str]:
            servers = "\n".join(f"    server s{i} {address}" for i, address in enumerate(addresses))
            path = base / "haproxy" / "haproxy.cfg"
            path.write_text(_HAPROXY_TCP.format(host=LOOPBACK, port=port, servers=servers))
            return [haproxy_path, "-db", "-f", str(path)]

        def ours_command(port: int) -> list[str]:
            listen = f"{LOOPBACK}:{port}"
            return [sys.executable, "-m", "lbclient", "tcp-proxy", "--listen", listen, "--hosts", *addresses]

        commands: dict[str, Callable[[int], list[str]]] = {HAPROXY: haproxy_command, OURS: ours_command}
        urls = {DIRECT: backends[0]}
        for label, command in commands.items():
            root = base / ("haproxy" if label == HAPROXY else "tcp-proxy")
            urls[label] = stack.enter_context(_server(label, root, command, signal.SIGTERM))
        results = {regime: _measure(urls, tasks, close, rounds, requests) for regime, tasks, close in REGIMES}
    rows: list[Sequence[str]] = []
    ratios = []
    for (regime, tasks, _), measured in zip(REGIMES, results.values(), strict=True):
        for name, (rate, p99) in measured.items():
            rows.append([regime, str(tasks), name, f"{rate:,.0f}", f"{p99 * 1000:.2f}"])
        ours, theirs = measured[OURS], measured[HAPROXY]
        ratios.append(
            Ratio(
                f"tcp-proxy / HAProxy tcp, time per request, {regime}", 1 / ours[0], 1 / theirs[0], theirs[0] / ours[0]
            )
        )
        ratios.append(Ratio(f"tcp-proxy / HAProxy tcp, p99, {regime}", ours[1], theirs[1], ours[1] / theirs[1]))
    section = Section(
        key="tcp",
        title=f"TCP proxies: lbclient tcp-proxy and HAProxy (mode tcp) in front of 2 nginx backends, {rounds} rounds",
        headers=["regime", "tasks", "contender", "req/s (median round)", "p99 ms"],
        rows=rows,
        ratios=ratios,
        notes=[
            "One process each: HAProxy with nbthread 1, lbclient tcp-proxy on asyncio. The load generator "
            "(httpx.AsyncClient) shares the 2 cores with them.",
            *(f"{r.label}: {fmt_ratio(r.ratio)}" for r in ratios),
        ],
        data={regime: {name: {"rps": v[0], "p99": v[1]} for name, v in m.items()} for regime, m in results.items()},
    )
    return section
