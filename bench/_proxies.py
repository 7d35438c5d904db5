"""Section 6: AsyncLBClient straight to 3 backends against plain httpx through a proxy to the same 3.

Everything runs on ``127.0.0.1``, is started here and stopped at the end, each server with one worker:

- 3 backends: 3 nginx instances (``worker_processes 1`` each) answering every path with ``200 ok`` and an
  ``X-Backend`` header naming themselves, so the spread over the backends is counted for every client;
- an nginx reverse proxy: ``upstream`` with ``least_conn`` and ``keepalive`` to the 3 backends;
- HAProxy: ``mode http``, ``balance leastconn``, ``nbthread 1``, keep-alive and ``http-reuse always`` to
  the 3 backends;
- ``lbclient proxy`` (the ASGI app on uvicorn, one process) with ``least_connections`` to the 3 backends.

The backends answer at once, with no delay. At 64 tasks a Python client spends its whole core on its
own work (a few hundred to a thousand requests a second here), so each task already waits about 64 /
throughput (tens of ms) per request in the client's own queue; a backend delay shorter than that would
be absorbed there and change little. No delay is where the proxy's hop weighs the most, and nginx
backends leave the second core to the proxies (a Python delay server would compete with the client).

Contenders, with 64 asyncio tasks sharing one client, all ``trust_env=False`` and the same limits:
``AsyncLBClient`` with ``least_connections`` (the subject), ``peak_ewma`` and ``round_robin``;
``least_connections`` with one inner ``httpx.AsyncHTTPTransport`` per host (:class:`PerHostTransport`)
instead of the default small pools (below); plain ``httpx.AsyncClient`` to the nginx proxy and to HAProxy.

At 64 tasks httpcore's connection pool (1.0) decides the numbers more than the hop does. A request goes
through the pool's ``_assign_requests_to_connections`` about 5 times (on arrival, on each lost race, when
its response closes), and each pass walks the whole connection list: it polls the socket of every idle
connection (``has_expired``), walks the list again for every idle one (the keep-alive check counts all
connections, not the idle ones), and twice more per queued request. Requests arriving in the same tick are all
given the first idle connection; all but one lose the race (``ConnectionNotAvailable``) and pass again.
A pool per host divides the list by the number of hosts; AsyncLBClient's default goes further and
splits each host's connections into pools of at most 4 (``SUBPOOL_CONNECTIONS``), made as requests in
flight need them, so each pass walks at most 4. And as the keep-alive check counts every connection, a
pool holding more than ``max_keepalive_connections`` closes each connection once idle. So there are two
regimes, each in its own interleaved rounds:

a. httpx's default limits (100 connections, 20 kept alive), keep-alive expiry raised from 5 s to 60 s so
   that no client's connections expire while the others run their rounds. A proxy client's single pool
   needs 64 connections: above 20 it closes each once idle and reconnects (cheap on loopback; a round
   trip and a TLS handshake on a network). AsyncLBClient's pools of 4 stay under the keep-alive limit.
b. one kept-alive connection per task (64 and 64), every client holding all 64 from its first round
   (:func:`_open_connections`): nobody reconnects; a proxy client's pool walks 64 connections, a pool
   per host about 21, AsyncLBClient's default pools 4.

Per round the wall time gives the throughput; every request's own time gives p50, p99 and p99.9 (pooled
over the rounds). New TCP connections are counted by the servers (nginx ``stub_status``, HAProxy's
stats): client side (to the backends or to the proxy) and proxy to backends. Errors (exceptions, non-200
answers) are counted, not raised; a run with errors says so in its notes and its summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import lbclient

from ._nginx import (
    LOOPBACK,
    NGINX_HEAD,
    _command,
    _die_with_parent,
    _free_port,
    _stop,
    _version,
    _wait_ready,
    find_nginx,
)
from ._report import Ratio, Section, fmt_ratio
from ._rounds import Plan, Rounds
from ._settings import Settings

__all__ = ["PerHostTransport", "ProxyServers", "Regime", "find_haproxy", "proxies", "run_proxy_servers"]

PATH = "/x"
BACKENDS = ("b1", "b2", "b3")
THROUGHPUT_BAR = 1.2  # AsyncLBClient / nginx proxy, req/s: at least
P99_BAR = 0.5  # AsyncLBClient / nginx proxy, p99: at most
TIMEOUT = 30.0  # seconds, every client: a slow round is measured, not turned into errors

LB = "AsyncLBClient least_connections"
LB_EWMA = "AsyncLBClient peak_ewma"
LB_RR = "AsyncLBClient round_robin"
LB_PER_HOST = "AsyncLBClient least_connections, one pool per host"
NGINX = "httpx.AsyncClient -> nginx least_conn"
HAPROXY = "httpx.AsyncClient -> HAProxy leastconn"
LBPROXY = "httpx.AsyncClient -> lbclient proxy least_connections"

_HAPROXY_PATHS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
_STATUS = "/-/status"  # nginx stub_status and HAProxy stats, on the same servers
_START_ATTEMPTS = 3
_KEEPALIVE_EXPIRY = 60.0  # seconds: longer than a client waits while the others run their rounds


@dataclass(frozen=True)
class Regime:
    """Limits shared by every client, the contenders measured with them, and per preset (rounds,
    requests per contender per round, warm-up requests per contender, budget in seconds)."""

    tag: str
    name: str
    limits: httpx.Limits
    contenders: tuple[str, ...]
    plans: dict[str, tuple[int, int, int, float]]

    def plan(self, settings: Settings) -> Plan:
        rounds, count, warmup, budget = self.plans.get(settings.name, self.plans["full"])
        return Plan(rounds, count, warmup, budget, settings.min_rounds)


def _regimes(tasks: int) -> tuple[Regime, ...]:
    return (
        Regime(
            "a",
            "httpx default limits (100 connections, 20 kept alive), keep-alive expiry 60 s",
            httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=_KEEPALIVE_EXPIRY),
            (LB, LB_EWMA, LB_RR, LB_PER_HOST, NGINX, HAPROXY, LBPROXY),
            {"full": (7, 1_024, 512, 55.0), "quick": (3, 512, 256, 8.0)},
        ),
        Regime(
            "b",
            f"one kept-alive connection per task ({tasks} and {tasks})",
            httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks, keepalive_expiry=_KEEPALIVE_EXPIRY),
            (LB, LB_PER_HOST, NGINX, HAPROXY, LBPROXY),
            {"full": (3, 384, 256, 30.0), "quick": (3, 128, 128, 8.0)},
        ),
    )


_STUB_STATUS = """
        location = {path} {{
            stub_status;
        }}"""

_BACKEND_CONFIG = (
    NGINX_HEAD
    + """
    server {{
        listen {host}:{port};
        server_name _;
        location / {{
            add_header X-Backend {name} always;
            return 200 "ok";
        }}{status}
    }}
}}
"""
)

_NGINX_PROXY_CONFIG = (
    NGINX_HEAD
    + """
    upstream backends {{
        least_conn;
{servers}
        keepalive {keepalive};
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }}

    server {{
        listen {host}:{port};
        server_name _;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}{status}
    }}
}}
"""
)

_HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 600s
    timeout server 30s
    timeout http-keep-alive 600s

frontend bench
    bind {host}:{port}
    stats enable
    stats uri {status}
    default_backend backends

backend backends
    balance leastconn
{servers}
"""


# --- the servers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyServers:
    """The running servers: backend URLs by name, the two proxies' URLs, the versions, and whether the
    nginx servers serve ``stub_status`` (HAProxy always serves its stats)."""

    backends: dict[str, str]
    nginx_proxy: str
    haproxy: str
    #: ``lbclient proxy`` (uvicorn, one process) in front of the same backends.
    lbclient_proxy: str
    nginx_version: str
    haproxy_version: str
    stub_status: bool


def find_haproxy(explicit: str | None = None) -> str:
    """The haproxy binary: ``explicit``, then ``$HAPROXY``, then ``PATH``, then the usual sbin paths."""
    for candidate in (explicit, os.environ.get("HAPROXY"), shutil.which("haproxy"), *_HAPROXY_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("haproxy not found: run `nox -s bench` (it installs it), or pass --haproxy / set $HAPROXY")


def _haproxy_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"version (\S+)", done.stdout or done.stderr)
    return match.group(1) if match else "unknown"


def _has_stub_status(binary: str) -> bool:
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10, check=False)
    return "http_stub_status_module" in done.stderr + done.stdout


@contextlib.contextmanager
def _server(label: str, root: Path, command: Callable[[int], list[str]], stop_signal: signal.Signals) -> Iterator[str]:
    """Start ``command(port)`` on a free loopback port (``command`` writes the config), wait until it
    answers, yield its URL, and always stop it. Its stderr goes to ``root/stderr.log``."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(_START_ATTEMPTS):  # another process may take the free port before the server binds it
        port = _free_port()
        url = f"http://{LOOPBACK}:{port}"
        with (root / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen(  # a fixed argument list, no shell
                command(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us only, and we stop it ourselves
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run yet; it only calls prctl
            )
        if _wait_ready(proc, url):
            break
        _stop(proc, stop_signal)
    else:
        logs = [path for path in (root / "error.log", root / "stderr.log") if path.exists()]
        detail = "\n".join(path.read_text()[-2000:] for path in logs) or "(no log)"
        raise RuntimeError(f"{label} did not start on {LOOPBACK}:\n{detail}")
    try:
        yield url
    finally:
        _stop(proc, stop_signal)


def _nginx_command(binary: str, version: str, root: Path, config: Callable[[int], str]) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        path = root / "nginx.conf"
        path.write_text(config(port))
        return _command(binary, version, root, path)

    return command


def _haproxy_command(binary: str, root: Path, servers: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        path = root / "haproxy.cfg"
        path.write_text(_HAPROXY_CONFIG.format(host=LOOPBACK, port=port, servers=servers, status=_STATUS))
        return [binary, "-db", "-f", str(path)]  # -db: in the foreground, as our child

    return command


@contextlib.contextmanager
def run_proxy_servers(
    nginx: str | None = None, haproxy: str | None = None, keepalive: int = 64
) -> Iterator[ProxyServers]:
    """The 3 nginx backends, the nginx proxy and HAProxy on loopback; all stopped and removed at exit.
    ``keepalive`` is the nginx proxy's cache of idle connections to the backends."""
    nginx_path, haproxy_path = find_nginx(nginx), find_haproxy(haproxy)
    nginx_version, haproxy_version = _version(nginx_path), _haproxy_version(haproxy_path)
    stub_status = _has_stub_status(nginx_path)
    status = _STUB_STATUS.format(path=_STATUS) if stub_status else ""
    with tempfile.TemporaryDirectory(prefix="lbclient-bench-proxies-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        backends: dict[str, str] = {}
        for name in BACKENDS:
            root = base / name

            def backend(port: int, root: Path = root, name: str = name) -> str:
                return _BACKEND_CONFIG.format(root=root, host=LOOPBACK, port=port, name=name, status=status)

            command = _nginx_command(nginx_path, nginx_version, root, backend)
            backends[name] = stack.enter_context(_server(f"nginx backend {name}", root, command, signal.SIGQUIT))
        addresses = [httpx.URL(url).netloc.decode("ascii") for url in backends.values()]
        proxy_root = base / "nginx-proxy"
        upstream = "\n".join(f"        server {address};" for address in addresses)

        def proxy(port: int) -> str:
            return _NGINX_PROXY_CONFIG.format(
                root=proxy_root, host=LOOPBACK, port=port, servers=upstream, keepalive=keepalive, status=status
            )

        command = _nginx_command(nginx_path, nginx_version, proxy_root, proxy)
        nginx_proxy = stack.enter_context(_server("nginx proxy", proxy_root, command, signal.SIGQUIT))
        haproxy_root = base / "haproxy"
        servers = "\n".join(f"    server {name} {address}" for name, address in zip(backends, addresses, strict=True))
        command = _haproxy_command(haproxy_path, haproxy_root, servers)
        haproxy_url = stack.enter_context(_server("haproxy", haproxy_root, command, signal.SIGTERM))

        def lbclient_proxy(port: int) -> list[str]:
            listen = f"{LOOPBACK}:{port}"
            # Idle connections kept as long as the nginx and HAProxy contenders keep theirs (600 s): with
            # uvicorn's 5 s, the clients' kept connections were closed between rounds under them.
            options = ["--strategy", "least_connections", "--log-level", "warning", "--keep-alive", "600"]
            return [
                sys.executable,
                "-m",
                "lbclient",
                "proxy",
                "--listen",
                listen,
                "--hosts",
                *backends.values(),
                *options,
            ]

        ours = stack.enter_context(_server("lbclient proxy", base / "lbclient-proxy", lbclient_proxy, signal.SIGTERM))
        yield ProxyServers(backends, nginx_proxy, haproxy_url, ours, nginx_version, haproxy_version, stub_status)


class _Connections:
    """Cumulative TCP connections accepted, as the servers count them: ``backends`` (all 3), ``nginx``
    (the proxy) and ``haproxy`` (its frontend). Read over one kept-alive connection per server, opened
    before the first measurement, so reading adds nothing to later counts."""

    def __init__(self, servers: ProxyServers) -> None:
        self._servers = servers
        limits = httpx.Limits(keepalive_expiry=600.0)
        self._client = httpx.Client(trust_env=False, timeout=5.0, limits=limits)

    def close(self) -> None:
        self._client.close()

    def _nginx(self, url: str) -> int | None:
        if not self._servers.stub_status:
            return None
        # "Active connections: N \nserver accepts handled requests\n A H R \n..."
        lines = self._client.get(url + _STATUS).text.splitlines()
        return int(lines[2].split()[0])

    def _haproxy(self) -> int | None:
        text = self._client.get(self._servers.haproxy + _STATUS + ";csv").text
        for row in csv.DictReader(io.StringIO(text.removeprefix("# "))):
            if row.get("svname") == "FRONTEND" and row.get("pxname") == "bench":
                return int(row.get("conn_tot") or row.get("stot") or 0)
        return None

    def snapshot(self) -> dict[str, int | None]:
        backends = [self._nginx(url) for url in self._servers.backends.values()]
        return {
            "backends": None if None in backends else sum(count or 0 for count in backends),
            "nginx": self._nginx(self._servers.nginx_proxy),
            "haproxy": self._haproxy(),
            "lbclient": None,  # uvicorn counts no connections: the client side is not counted
        }


# --- the clients ---------------------------------------------------------------------------------------


class PerHostTransport(httpx.AsyncBaseTransport):
    """One ``httpx.AsyncHTTPTransport`` (its own httpcore pool) per scheme, host and port, made on first
    use with the same keywords: AsyncLBClient with one pool per host instead of its default small pools."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._transports: dict[tuple[bytes, bytes, int | None], httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        transport = self._transports.get(key)
        if transport is None:
            transport = self._transports[key] = httpx.AsyncHTTPTransport(**self._kwargs)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()


@dataclass(frozen=True)
class _Contender:
    make: Callable[[], httpx.AsyncClient]
    url: str
    #: The proxy in between: its count is the client's connections, the backends' that of the proxy.
    via: str | None


def _contenders(servers: ProxyServers, limits: httpx.Limits) -> dict[str, _Contender]:
    hosts = list(servers.backends.values())
    common: dict[str, Any] = {"trust_env": False, "limits": limits, "timeout": TIMEOUT}

    def balanced(strategy: str) -> Callable[[], httpx.AsyncClient]:
        return lambda: lbclient.AsyncLBClient(hosts, strategy=strategy, **common)

    def per_host() -> httpx.AsyncClient:
        transport = PerHostTransport(limits=limits, trust_env=False)  # as AsyncLBClient builds its own
        return lbclient.AsyncLBClient(
            hosts, strategy="least_connections", transport=transport, trust_env=False, timeout=TIMEOUT
        )

    return {
        LB: _Contender(balanced("least_connections"), PATH, None),
        LB_EWMA: _Contender(balanced("peak_ewma"), PATH, None),
        LB_RR: _Contender(balanced("round_robin"), PATH, None),
        LB_PER_HOST: _Contender(per_host, PATH, None),
        NGINX: _Contender(lambda: httpx.AsyncClient(**common), servers.nginx_proxy + PATH, "nginx"),
        HAPROXY: _Contender(lambda: httpx.AsyncClient(**common), servers.haproxy + PATH, "haproxy"),
        LBPROXY: _Contender(lambda: httpx.AsyncClient(**common), servers.lbclient_proxy + PATH, "lbclient"),
    }


# --- the timed loop ------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """What one contender saw in its measured rounds."""

    latencies: list[float] = field(default_factory=list)
    backends: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the benchmark process's CPU time in those seconds
    #: New TCP connections during its rounds: "client" (to the backends or the proxy), "upstream".
    connections: Counter[str] = field(default_factory=Counter)
    counted: bool = True


_Timer = Callable[[int, bool], Awaitable[float]]


def _timer(client: httpx.AsyncClient, url: str, tally: _Tally, *, tasks: int, timeout: float) -> _Timer:
    """``run(count, measured)``: ``tasks`` tasks share ``count`` requests; returns the wall time. Measured
    runs add every request's time, the backend that answered (``X-Backend``) and any error to ``tally``."""

    async def worker(count: int, latencies: list[float], backends: Counter[str], errors: Counter[str]) -> None:
        get, clock = client.get, time.perf_counter
        for _ in range(count):
            start = clock()
            try:
                response = await get(url)
            except Exception as exc:  # noqa: BLE001 - every error the caller would see is counted
                latencies.append(clock() - start)
                errors[type(exc).__name__] += 1
                continue
            latencies.append(clock() - start)
            if response.status_code != 200:
                errors[f"HTTP {response.status_code}"] += 1
            backends[response.headers.get("x-backend", "?")] += 1

    async def run(count: int, measured: bool) -> float:
        share, extra = divmod(count, tasks)
        latencies: list[float] = []
        backends: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        start, cpu = time.perf_counter(), time.process_time()
        jobs = (worker(share + (task < extra), latencies, backends, errors) for task in range(tasks))
        await asyncio.wait_for(asyncio.gather(*jobs), timeout)
        seconds = time.perf_counter() - start
        if measured:
            tally.seconds += seconds
            tally.cpu_seconds += time.process_time() - cpu
            tally.latencies += latencies
            tally.backends.update(backends)
            tally.errors.update(errors)
            tally.requests += count
        return seconds

    return run


def _count(tally: _Tally, via: str | None, before: dict[str, int | None], after: dict[str, int | None]) -> None:
    def delta(key: str) -> int | None:
        first, last = before[key], after[key]
        return None if first is None or last is None else last - first

    client, upstream = (delta("backends"), None) if via is None else (delta(via), delta("backends"))
    if client is None:
        tally.counted = False
        return
    tally.connections["client"] += client
    if upstream is not None:
        tally.connections["upstream"] += upstream


def _preflight(name: str, response: httpx.Response) -> None:
    if response.status_code != 200 or response.text != "ok" or response.headers.get("x-backend") not in BACKENDS:
        text = response.text[:100]
        raise RuntimeError(f"{name}: answered {response.status_code} {text!r}, not 200 'ok' from a backend")


async def _open_connections(client: httpx.AsyncClient, url: str, count: int) -> None:
    """Have ``client`` open ``count`` connections: ``count`` responses held open together, then read,
    which gives each connection back to the pool. A pool allowed to keep them all then starts its rounds
    with all of them, as after a while under steady load, instead of with however many its warm-up
    happened to leave (with httpcore that alone changes a client's speed several-fold). POST, because
    AsyncLBClient reads a small body of an idempotent request inside the attempt (for its retries), which
    would give the connection back before the next one is opened."""
    async with AsyncExitStack() as stack:
        responses = [await stack.enter_async_context(client.stream("POST", url)) for _ in range(count)]
        for response in responses:
            await response.aread()


async def _measure(
    servers: ProxyServers, regime: Regime, settings: Settings, counter: _Connections
) -> tuple[Rounds, dict[str, _Tally]]:
    tasks, timeout = settings.async_tasks, settings.async_round_timeout
    contenders = _contenders(servers, regime.limits)
    tallies = {name: _Tally() for name in regime.contenders}
    timers: dict[str, _Timer] = {}
    async with AsyncExitStack() as stack:
        for name in regime.contenders:
            contender = contenders[name]
            client = await stack.enter_async_context(contender.make())
            _preflight(name, await client.get(contender.url))
            await _open_connections(client, contender.url, tasks)
            timers[name] = _timer(client, contender.url, tallies[name], tasks=tasks, timeout=timeout)
        rounds = Rounds(list(regime.contenders), regime.plan(settings))
        for job in rounds.jobs():
            before = None if job.warmup else counter.snapshot()
            rounds.record(job, await timers[job.name](job.count, not job.warmup))
            if before is not None:
                _count(tallies[job.name], contenders[job.name].via, before, counter.snapshot())
    return rounds, tallies


# --- the report ----------------------------------------------------------------------------------------


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _spread(backends: Counter[str]) -> str:
    total = sum(backends.values()) or 1
    return "/".join(f"{backends[name] * 100 / total:.0f}" for name in BACKENDS)


def _per_1k(tally: _Tally, key: str) -> str:
    if not tally.counted or not tally.requests or (key == "upstream" and key not in tally.connections):
        return "-"
    return f"{tally.connections[key] * 1000 / tally.requests:,.0f}"


def _regime_ratios(section: Section, regime: Regime, stats: dict[str, dict[str, Any]], tasks: int) -> None:
    """Per regime: AsyncLBClient against each proxy (bars against nginx), its small pools against one
    pool per host, and one pool per host against the nginx proxy."""
    prefix = f"6{regime.tag}. x{tasks}"
    pairs = [
        (LB, "LB", NGINX, "nginx proxy", (THROUGHPUT_BAR, P99_BAR)),
        (LB, "LB", HAPROXY, "HAProxy", (None, None)),
        (LBPROXY, "lbclient proxy", NGINX, "nginx proxy", (None, None)),
        (LB, "LB small pools", LB_PER_HOST, "one pool per host", (None, None)),
        (LB_PER_HOST, "LB one pool per host", NGINX, "nginx proxy", (None, None)),
    ]
    for subject_name, subject_label, baseline_name, baseline_label, (throughput_bar, p99_bar) in pairs:
        subject, baseline = stats[subject_name], stats[baseline_name]
        speedup = subject["throughput"] / baseline["throughput"]
        bar_text = f", bar >= {throughput_bar:g}x" if throughput_bar else ""
        # Throughput is checked as its inverse, time per request, so that every bar reads "at most".
        section.ratios.append(
            Ratio(
                f"{prefix} time/request, {subject_label} / {baseline_label} (req/s {speedup:.2f}x{bar_text})",
                1 / subject["throughput"],
                1 / baseline["throughput"],
                1 / speedup,
                None if throughput_bar is None else round(1 / throughput_bar, 3),
            )
        )
        section.ratios.append(
            Ratio(
                f"{prefix} p99, {subject_label} / {baseline_label}",
                subject["p99"],
                baseline["p99"],
                subject["p99"] / baseline["p99"],
                p99_bar,
            )
        )


def proxies(settings: Settings, nginx: str | None = None, haproxy: str | None = None) -> Section:
    tasks = settings.async_tasks
    regimes = _regimes(tasks)
    results: list[tuple[Regime, Rounds, dict[str, _Tally]]] = []
    load_before = os.getloadavg()[0]
    with run_proxy_servers(nginx, haproxy, keepalive=tasks) as servers:
        counter = _Connections(servers)
        try:
            for regime in regimes:
                rounds, tallies = asyncio.run(_measure(servers, regime, settings, counter))
                results.append((regime, rounds, tallies))
        finally:
            counter.close()
    load_after = os.getloadavg()[0]
    section = Section(
        key="proxies",
        title=(
            f"6. Client-side balancing vs a proxy hop: {tasks} asyncio tasks sharing one client, 3 nginx backends on "
            f"loopback (nginx {servers.nginx_version.removeprefix('nginx/')}, HAProxy {servers.haproxy_version})"
        ),
        headers=[
            "client",
            "req/s",
            "p50",
            "p99",
            "p99.9",
            "LB/this req/s",
            "LB/this p99",
            "% b1/b2/b3",
            "client CPU",
            "new conns/1k req",
            "proxy->backend",
            "errors",
        ],
    )
    data: dict[str, Any] = {}
    all_errors: dict[str, dict[str, int]] = {}
    for regime, rounds, tallies in results:
        stats: dict[str, dict[str, Any]] = {}
        for name in regime.contenders:
            tally = tallies[name]
            ordered = sorted(tally.latencies)
            stats[name] = {
                "throughput": 1 / rounds.median(name),
                "p50": _percentile(ordered, 0.50),
                "p99": _percentile(ordered, 0.99),
                "p999": _percentile(ordered, 0.999),
                "requests": tally.requests,
                "errors": dict(tally.errors),
                "backends": dict(tally.backends),
                "new_connections": dict(tally.connections) if tally.counted else None,
                "client_cpu_share": tally.cpu_seconds / tally.seconds if tally.seconds else None,
            }
        subject = stats[LB]
        for name in regime.contenders:
            row, tally = stats[name], tallies[name]
            section.rows.append(
                [
                    f"{regime.tag}. {name}",
                    f"{row['throughput']:,.0f}",
                    _ms(row["p50"]),
                    _ms(row["p99"]),
                    _ms(row["p999"]),
                    fmt_ratio(subject["throughput"] / row["throughput"]),
                    fmt_ratio(subject["p99"] / row["p99"]),
                    _spread(tally.backends),
                    f"{tally.cpu_seconds * 100 / tally.seconds:.0f}%" if tally.seconds else "-",
                    _per_1k(tally, "client"),
                    _per_1k(tally, "upstream"),
                    str(sum(tally.errors.values())),
                ]
            )
            if tally.errors:
                all_errors[f"{regime.tag}. {name}"] = dict(tally.errors)
        _regime_ratios(section, regime, stats, tasks)
        section.notes.append(
            f"{regime.tag}: {regime.name}; {rounds.completed} rounds x {rounds.plan.count:,} requests per client"
            + (" (stopped early: time budget)" if rounds.stopped_early else "")
        )
        data[regime.tag] = {
            "limits": repr(regime.limits),
            "description": regime.name,
            "clients": stats,
            "paired_ratio_per_request_time": {name: rounds.paired_ratio(LB, name) for name in regime.contenders},
            **rounds.to_json(),
        }
    total_errors = sum(sum(counts.values()) for counts in all_errors.values())
    section.ratios.append(Ratio(f"6. x{tasks} errors, all clients", total_errors, 0.0, total_errors, 0.0, "count"))
    section.notes += [
        "req/s: requests in a round / its wall time (median over rounds); p50/p99/p99.9: each request's own time, "
        "pooled over the rounds; LB/this: AsyncLBClient least_connections / this client, same regime; "
        "client CPU: the benchmark process's CPU time / wall time in its rounds (100%: the client is the bottleneck; "
        "less: it waited, for the servers or for a CPU)",
        "new conns/1k req: TCP connections the client opened (to the backends, or to the proxy) per 1,000 requests; "
        "proxy->backend: those the proxy opened; counted by nginx stub_status and HAProxy's stats",
        f"every client: trust_env=False, timeout {TIMEOUT:g} s; 'one pool per host': AsyncLBClient(transport="
        "PerHostTransport(limits=...)), one httpx.AsyncHTTPTransport per backend instead of the default pools of "
        "at most 4 connections",
    ]
    section.notes.append(
        f"1-minute load average before / after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs"
    )
    if not servers.stub_status:
        section.notes.append("this nginx has no stub_status module: connections are not counted")
    if all_errors:
        section.notes.append(f"ERRORS in this run (included in the times above): {all_errors}")
    section.data = {
        "tasks": tasks,
        "servers": {
            "backends": servers.backends,
            "nginx_proxy": servers.nginx_proxy,
            "haproxy": servers.haproxy,
            "nginx_version": servers.nginx_version,
            "haproxy_version": servers.haproxy_version,
        },
        "regimes": data,
        "errors": all_errors,
    }
    return section
