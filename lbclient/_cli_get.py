"""``python -m lbclient get PATH_OR_URL --hosts URL [URL ...]``: load a real pool and report per host.

``-c`` tasks share one :class:`AsyncLBClient` and send ``-n`` requests in all; the report gives, per host,
the requests it answered and their share, error answers, failed attempts, p50/p99 latency, ejections and
its state at the end, then every pool event (ejection, return, health change) seen during the run.

Also the building blocks of ``python -m lbclient demo``: :class:`Tally` (what came back),
:class:`EventLog` (the pool's events, read from the ``lbclient`` logger, where every ejection, return,
health change and panic is logged with its host and reason), :func:`drive` (the sending tasks) and the
output helpers. rich is optional (``pip install 'lbclient[cli]'``): with it and a terminal the report is
a rich table; otherwise plain text.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx

from ._client import AsyncLBClient
from ._core import STRATEGIES, HostState

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "EventLog",
    "Seen",
    "Tally",
    "add_arguments",
    "byte_count",
    "drive",
    "host_state",
    "ms",
    "percentile",
    "positive_float",
    "positive_int",
    "rich_console",
    "run",
]

#: Shown once when rich is missing.
NO_RICH = "(rich is not installed, so this is plain text: pip install 'lbclient[cli]' for the live view)"
_METHOD = re.compile(r"[A-Za-z]+")
#: How the transports log a pool event: service, kind, host (or "pool"), reason.
_EVENT_MESSAGE = "%s: %s %s: %s"


# -- argument types -------------------------------------------------------------------------------------


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what} >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1; the error names the value."""
    return _integer(text, 1, "an integer")


def byte_count(text: str) -> int:
    """An argparse type: a number of bytes >= 0; the error names the value."""
    return _integer(text, 0, "a number of bytes")


def strategy_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--strategy NAME``: one of the built-in strategies (``lbclient get``, ``proxy``, ``tcp-proxy``)."""
    parser.add_argument(
        "--strategy",
        default=default,
        choices=list(STRATEGIES),
        metavar="NAME",
        help=f"one of {', '.join(STRATEGIES)} (default: %(default)s)",
    )


#: ``--log-level`` of the long-running commands.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0; the error names the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _method(text: str) -> str:
    if not _METHOD.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be an HTTP method such as GET, got {text!r}")
    return text.upper()


# -- what came back -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One request: when it ended (seconds since the start), who answered (None: no answer), its latency
    as the caller saw it (retries included), the status (0: no answer) and the attempts it took."""

    at: float
    host: str | None
    latency: float
    status: int
    attempts: int


@dataclass
class Tally:
    """Every request's outcome, with running counts per host for live views."""

    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retried: int = 0
    #: Requests that ended without an answer, by exception type.
    failures: Counter[str] = field(default_factory=Counter)

    def response(self, response: httpx.Response, latency: float) -> None:
        host = str(response.extensions.get("lb_host", ""))
        attempts = int(response.extensions.get("lb_attempts", 1))
        self.outcomes.append(Outcome(self.elapsed(), host, latency, response.status_code, attempts))
        self.answered[host] += 1
        self.errors += response.status_code >= 400
        self.retried += attempts > 1

    def failure(self, exc: httpx.HTTPError, latency: float) -> None:
        self.outcomes.append(Outcome(self.elapsed(), None, latency, 0, 0))
        self.failures[type(exc).__name__] += 1
        self.errors += 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def latencies(self, host: str | None = None) -> list[float]:
        """Latencies of every request, or of those ``host`` answered."""
        return [o.latency for o in self.outcomes if host is None or o.host == host]

    def host_errors(self, host: str) -> int:
        return sum(1 for o in self.outcomes if o.host == host and o.status >= 400)


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank ``share`` quantile (0.5: median); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for a table cell; "-" for None."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def host_state(host: HostState) -> str:
    """ok, ejected, unhealthy (both: "ejected, unhealthy"), or drained."""
    if host.weight == 0:
        return "drained"
    flags = [flag for flag, on in (("ejected", host.ejected), ("unhealthy", not host.healthy)) if on]
    return ", ".join(flags) or "ok"


# -- pool events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A pool event as it was logged: seconds since the log started, kind, host URL (None: the whole
    pool) and the reason."""

    at: float
    kind: str
    host: str | None
    reason: str

    def line(self, name: str | None = None) -> str:
        return f"+{self.at:.2f} s  {name or self.host or 'pool'} {self.kind}: {self.reason}"


class EventLog(logging.Handler):
    """The pool events of one client, read from the ``lbclient`` logger while :meth:`attached`.

    ``on_event`` is called with each one as it happens (in the thread that caused it)."""

    def __init__(self, service: str, on_event: Callable[[Seen], None] | None = None) -> None:
        super().__init__(logging.INFO)
        self.service = service
        self.events: list[Seen] = []
        self.started = time.monotonic()
        self._on_event = on_event

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg != _EVENT_MESSAGE or not isinstance(args, tuple) or len(args) != 4:
            return
        service, kind, host, reason = (str(arg) for arg in args)
        if service != self.service:
            return
        seen = Seen(time.monotonic() - self.started, kind, None if host == "pool" else host, reason)
        self.events.append(seen)
        if self._on_event is not None:
            self._on_event(seen)

    def count(self, kind: str, host: str | None = None) -> int:
        return sum(1 for e in self.events if e.kind == kind and (host is None or e.host == host))

    @contextmanager
    def attached(self) -> Iterator[EventLog]:
        """Listen on the ``lbclient`` logger (at INFO, where returns are logged). Being a handler of it,
        this also keeps its warnings off stderr, where they would tear a live view."""
        logger = logging.getLogger("lbclient")
        level = logger.level
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


# -- sending --------------------------------------------------------------------------------------------


async def drive(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    tally: Tally,
    *,
    concurrency: int,
    requests: int | None = None,
    until: float | None = None,
    keys: int = 0,
) -> None:
    """``concurrency`` tasks send ``method path`` until ``requests`` were sent in all or the monotonic
    clock reaches ``until``. With ``keys``, request i carries ``lb_key`` ``user-{i % keys}``, so hash
    strategies spread too. Failed requests (httpx errors) are counted, not raised."""
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while (requests is None or sent < requests) and (until is None or time.monotonic() < until):
            index = sent
            sent += 1
            extensions = {"lb_key": f"user-{index % keys}"} if keys else None
            started = time.monotonic()
            try:
                response = await client.request(method, path, extensions=extensions)
            except httpx.HTTPError as exc:
                tally.failure(exc, time.monotonic() - started)
            else:
                tally.response(response, time.monotonic() - started)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)


# -- output ---------------------------------------------------------------------------------------------


def rich_console(plain: bool = False) -> Console | None:
    """A rich console on stdout when rich is installed, stdout is a terminal and ``plain`` is not asked
    for; None means plain text."""
    if plain or importlib.util.find_spec("rich") is None:
        return None
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else None


def _host_rows(hosts: list[HostState], tally: Tally, events: EventLog) -> list[list[str]]:
    total = max(tally.total, 1)
    rows = []
    for host in hosts:
        latencies = tally.latencies(host.url)
        answered = tally.answered[host.url]
        rows.append(
            [
                host.url,
                str(answered),
                f"{answered / total:.0%}",
                str(tally.host_errors(host.url)),
                str(host.failures),
                ms(percentile(latencies, 0.5)),
                ms(percentile(latencies, 0.99)),
                str(events.count("ejected", host.url)),
                host_state(host),
            ]
        )
    missing = sum(tally.failures.values())
    if missing:
        detail = ", ".join(f"{n} {name}" for name, n in tally.failures.most_common())
        rows.append(["(no answer)", str(missing), f"{missing / total:.0%}", str(missing), "", "", "", "", detail])
    return rows


_COLUMNS = ["host", "answered", "share", "errors", "failed attempts", "p50 ms", "p99 ms", "ejections", "state"]


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i in (0, len(row) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """The rows as a rich table; the last column is the state, coloured."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index in (0, len(header) - 1) else "right")
    for row in rows:
        state = row[-1]
        style = {"ok": "green", "drained": "dim", "": ""}.get(state, "bold red")
        table.add_row(*(Text(cell) for cell in row[:-1]), Text(state, style=style))
    return table


def _closing(tally: Tally, events: EventLog, took: float) -> str:
    """The lines under the table: totals, then every pool event."""
    p50, p99 = percentile(tally.latencies(), 0.5), percentile(tally.latencies(), 0.99)
    rate = tally.total / took if took > 0 else 0.0
    lines = [
        f"{tally.total} requests in {took:.2f} s ({rate:.0f}/s), {tally.errors} errors, {tally.retried} retried;"
        f" p50 {ms(p50)} ms, p99 {ms(p99)} ms",
    ]
    if events.events:
        lines.append("pool events:")
        lines.extend("  " + event.line() for event in events.events)
    else:
        lines.append("pool events: none (no ejection, return or health change)")
    return "\n".join(lines)


def _target(raw: str) -> str:
    """The request target sent to the pool: a path as given, or a URL's path and query."""
    url = httpx.URL(raw)
    if url.is_relative_url:
        return raw if raw.startswith("/") else "/" + raw
    return url.raw_path.decode("ascii")


# -- the command ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="PATH_OR_URL", help="a path (/api?q=1), or a URL (its path and query)")
    parser.add_argument("--hosts", nargs="+", required=True, metavar="URL", help="the pool's hosts")
    parser.add_argument("-n", "--requests", type=positive_int, default=200, help="requests in all (default 200)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=8, help="concurrent tasks (default 8)")
    strategy_option(parser, "round_robin")
    parser.add_argument("--method", "-X", type=_method, default="GET", metavar="M", help="HTTP method (default GET)")
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds per request, retries included (default 10)"
    )
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")


async def _load(args: argparse.Namespace, client: AsyncLBClient, events: EventLog, console: Console | None) -> int:
    path = args.path = _target(args.target)
    tally = Tally()
    async with client:
        hosts = client.pool.hosts
        title = (
            f"{args.method} {path} on {len(hosts)} hosts: {args.requests} requests from {args.concurrency}"
            f" tasks, strategy {args.strategy}"
        )
        started = tally.started = events.started = time.monotonic()
        if console is None:
            await drive(client, args.method, path, tally, concurrency=args.concurrency, requests=args.requests)
        else:
            await _drive_live(client, args, tally, events, console=console, title=title)
        took = time.monotonic() - started
        hosts = client.pool.hosts
    rows = _host_rows(hosts, tally, events)
    if console is None:
        print(title)
        print(_plain_table(_COLUMNS, rows))
        print(_closing(tally, events, took))
    else:
        console.print(_rich_table(title, _COLUMNS, rows))
        console.print(_closing(tally, events, took), highlight=False, markup=False)
    return 1 if tally.errors else 0


async def _drive_live(
    client: AsyncLBClient, args: argparse.Namespace, tally: Tally, events: EventLog, *, console: Console, title: str
) -> None:
    """Send while a transient live table and progress bar show how far it got."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress_bar import ProgressBar

    def frame() -> Group:
        bar = ProgressBar(total=args.requests, completed=tally.total, width=40)
        done = f"{tally.total}/{args.requests} requests, {tally.errors} errors"
        return Group(_rich_table(title, _COLUMNS, _host_rows(client.pool.hosts, tally, events)), bar, done)

    finished = anyio.Event()

    async def send() -> None:
        await drive(client, args.method, args.path, tally, concurrency=args.concurrency, requests=args.requests)
        finished.set()

    with Live(frame(), console=console, auto_refresh=False, transient=True) as live:
        async with anyio.create_task_group() as group:
            group.start_soon(send)
            while not finished.is_set():
                live.update(frame(), refresh=True)
                with anyio.move_on_after(0.1):
                    await finished.wait()


def run(args: argparse.Namespace) -> int:
    console = rich_console(args.plain)
    if console is None and importlib.util.find_spec("rich") is None:
        print(NO_RICH)
    service = "lbclient-get"
    try:
        client = AsyncLBClient(args.hosts, strategy=args.strategy, timeout=args.timeout, service=service)
    except ValueError as exc:  # a bad host: the message names it
        print(f"lbclient get: error: {exc}", file=sys.stderr)
        return 2
    with EventLog(service).attached() as events:
        code: int = anyio.run(_load, args, client, events, console)
    return code
