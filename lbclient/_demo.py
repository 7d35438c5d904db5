"""``python -m lbclient demo``: the balancer live, on real backends it starts on loopback itself.

Five backends run on 127.0.0.1: a, b and c answer at once, d is slow (50 ms), and e crashes a quarter
of the way into each strategy's run and restarts at half time. Each strategy in turn gets a fresh
:class:`AsyncLBClient` (3 attempts per request, outlier detection on, health checks every 0.2 s) and
concurrent tasks send requests through it for ``--duration`` seconds (default 8; ``--quick``: 2.5).

On a terminal with rich installed a live table shows, per host, the requests it answered and their
share, the requests in flight, its EWMA latency, the state the balancer sees (ok, ejected, unhealthy)
and its ejections, under a progress bar, and a line is printed for each ejection, return and health
change. Elsewhere (pipes, CI logs) plain progress lines take its place. A summary table per strategy
closes the run: requests per host, errors, p50/p99, and how soon e was ejected after its crash and
back after its restart.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from ._cli_get import (
    NO_RICH,
    EventLog,
    Seen,
    Tally,
    drive,
    host_state,
    ms,
    percentile,
    positive_float,
    positive_int,
    rich_console,
)
from ._client import AsyncLBClient
from ._core import STRATEGIES, HealthCheck, HostState
from .testing import Backend

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live

__all__ = ["add_arguments", "run"]

DEFAULT_STRATEGIES = ("round_robin", "least_connections", "power_of_two_choices", "peak_ewma")
#: Seconds per strategy, by default and with ``--quick``.
DURATION = 8.0
QUICK_DURATION = 2.5
#: When e crashes and restarts, as shares of each strategy's run.
CRASH_AT = 0.25
RESTART_AT = 0.5
#: Checks often enough that e's crash and return are both seen within a short run; the default
#: ejection time (30 s) outlasts the outage, so it is a passing check that brings e back.
DEMO_HEALTH = HealthCheck(interval=0.2, timeout=0.5, unhealthy_threshold=2, healthy_threshold=2)
#: Seconds between plain progress lines, and between frames of the live view.
PLAIN_EVERY = 1.0
FRAME_EVERY = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=positive_float, default=DURATION, help=f"seconds per strategy (default {DURATION:g})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_DURATION:g} s per strategy (for tests and a first look)"
    )
    parser.add_argument("-c", "--concurrency", type=positive_int, default=8, help="concurrent tasks (default 8)")
    parser.add_argument("--slow", type=positive_float, default=0.05, help="extra latency of backend d, seconds")
    parser.add_argument(
        "--strategy",
        action="append",
        choices=list(STRATEGIES),
        metavar="S",
        help=f"run this strategy (repeatable; default {', '.join(DEFAULT_STRATEGIES)})",
    )
    parser.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")


@dataclass
class _Phase:
    """One strategy's run: what came back, the pool's events, and when e crashed and restarted (seconds
    since the run started, like the events)."""

    strategy: str
    index: int
    tally: Tally
    events: EventLog
    hosts: list[HostState] = field(default_factory=list)
    crashed_at: float | None = None
    restarted_at: float | None = None
    took: float = 0.0

    def elapsed(self) -> float:
        return self.tally.elapsed()

    def outage(self, url: str) -> tuple[float | None, float | None]:
        """When the host was first taken out (ejected or unhealthy), and when it was last back (neither),
        if it still is at the end."""
        out_at = back_at = None
        ejected = unhealthy = False
        for event in self.events.events:
            if event.host != url:
                continue
            was_out = ejected or unhealthy
            ejected = {"ejected": True, "returned": False}.get(event.kind, ejected)
            unhealthy = {"unhealthy": True, "healthy": False}.get(event.kind, unhealthy)
            if (ejected or unhealthy) and not was_out:
                out_at = event.at if out_at is None else out_at
                back_at = None
            elif was_out and not (ejected or unhealthy):
                back_at = event.at
        return out_at, back_at

    def answers_after(self, url: str, at: float) -> int:
        return sum(1 for o in self.tally.outcomes if o.host == url and o.at >= at)


class _Demo:
    """The backends, the run, and its output: a rich live view or plain lines."""

    def __init__(self, args: argparse.Namespace, console: Console | None) -> None:
        self.duration: float = QUICK_DURATION if args.quick else args.duration
        self.concurrency: int = args.concurrency
        self.strategies: list[str] = args.strategy or list(DEFAULT_STRATEGIES)
        self.console = console
        self.live: Live | None = None
        self.slow: float = args.slow
        self.backends = [Backend("a"), Backend("b"), Backend("c"), Backend("d", delay=args.slow), Backend("e")]
        self.flaky = self.backends[-1]
        self.names = {b.url: b.name for b in self.backends}
        crash, restart = CRASH_AT * self.duration, RESTART_AT * self.duration
        self.roles = {
            "a": "fast",
            "b": "fast",
            "c": "fast",
            "d": f"{args.slow * 1000:.0f} ms slow",
            "e": f"crashes +{crash:.1f} s, restarts +{restart:.1f} s",
        }
        self._last_plain = 0.0

    # -- the run --------------------------------------------------------------------------------------

    async def main(self) -> list[_Phase]:
        total = self.duration * len(self.strategies)
        runs = f"{len(self.strategies)} strateg{'y' if len(self.strategies) == 1 else 'ies'}"
        self.say(
            f"lbclient demo: 5 backends on 127.0.0.1, {runs} x {self.duration:g} s (about {total:.3g} s),"
            f" {self.concurrency} concurrent tasks"
        )
        for backend in self.backends:
            self.say(f"  {backend.name}  {backend.url}  {self.roles[backend.name]}")
        self.say(
            "Each strategy gets a fresh AsyncLBClient: 3 attempts per request, 5 failures in a row eject a host,"
            f" health checks every {DEMO_HEALTH.interval:g} s."
        )
        phases = []
        for index, strategy in enumerate(self.strategies):
            phases.append(await self.run_strategy(index, strategy))
        return phases

    async def run_strategy(self, index: int, strategy: str) -> _Phase:
        service = "demo-" + strategy.replace("_", "-")
        tally = Tally()
        phase = _Phase(strategy, index, tally, EventLog(service, lambda seen: self.event(phase, seen)))
        self.say(f"\n[{index + 1}/{len(self.strategies)}] {strategy}")
        urls = [backend.url for backend in self.backends]
        with phase.events.attached():
            async with AsyncLBClient(
                urls, strategy=strategy, health_check=DEMO_HEALTH, timeout=5.0, service=service
            ) as client:
                start = tally.started = phase.events.started = time.monotonic()
                deadline = start + self.duration
                async with anyio.create_task_group() as group:
                    group.start_soon(self._crash_and_restart, phase, start)
                    group.start_soon(self._show, phase, client, deadline)
                    await drive(client, "GET", "/demo", tally, concurrency=self.concurrency, until=deadline, keys=40)
                    phase.took = time.monotonic() - start
                phase.hosts = client.pool.hosts
        self.phase_done(phase)
        return phase

    async def _crash_and_restart(self, phase: _Phase, start: float) -> None:
        await anyio.sleep(max(0.0, start + CRASH_AT * self.duration - time.monotonic()))
        phase.crashed_at = phase.elapsed()
        await anyio.to_thread.run_sync(self.flaky.kill)
        await anyio.sleep(max(0.0, start + RESTART_AT * self.duration - time.monotonic()))
        await anyio.to_thread.run_sync(self.flaky.start)
        phase.restarted_at = phase.elapsed()

    async def _show(self, phase: _Phase, client: AsyncLBClient, deadline: float) -> None:
        self._last_plain = 0.0
        while time.monotonic() < deadline:
            self.frame(phase, client.pool.hosts)
            await anyio.sleep(FRAME_EVERY)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        for backend in self.backends:
            backend.kill()

    # -- output while it runs -------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.console is None:
            print(text, flush=True)
        else:
            self.console.print(text, highlight=False, markup=False)

    def event(self, phase: _Phase, seen: Seen) -> None:
        name = self.names.get(seen.host or "", seen.host)
        if self.console is None:
            self.say(f"  {seen.line(name)}")
        else:
            style = "bold red" if seen.kind in ("ejected", "unhealthy", "panic") else "bold green"
            self.console.print(
                f"  +{seen.at:.2f} s  [bold]{name or 'pool'}[/] [{style}]{seen.kind}[/]: {seen.reason}",
                highlight=False,
            )

    def frame(self, phase: _Phase, hosts: list[HostState]) -> None:
        elapsed = phase.elapsed()
        if self.console is None:
            if elapsed - self._last_plain >= PLAIN_EVERY:
                self._last_plain = elapsed
                self.say(self._plain_progress(phase, hosts, elapsed))
            return
        if self.live is None:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=True)
            self.live.start()
        self.live.update(self._rich_frame(phase, hosts, elapsed), refresh=True)

    def _plain_progress(self, phase: _Phase, hosts: list[HostState], elapsed: float) -> str:
        tally = phase.tally
        counts = " ".join(f"{self.names[h.url]} {tally.answered[h.url]}" for h in hosts)
        inflight = sum(h.outstanding for h in hosts)
        out = [f"{self.names[h.url]} {host_state(h)}" for h in hosts if host_state(h) != "ok"]
        down = [b.name for b in self.backends if not b.running]
        line = (
            f"  {phase.strategy} +{elapsed:.1f}/{self.duration:g} s: {tally.total} requests ({counts}),"
            f" {tally.errors} errors, {inflight} in flight"
        )
        if out:
            line += "; " + ", ".join(out)
        if down:
            line += f"; backend {', '.join(down)} down"
        return line

    def _rich_frame(self, phase: _Phase, hosts: list[HostState], elapsed: float) -> Group:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        tally = phase.tally
        table = Table(title=f"{phase.strategy}  +{elapsed:.1f} s", title_justify="left")
        for name in ("host", "role", "backend", "answered", "share", "in flight", "EWMA ms", "state", "ejections"):
            table.add_column(name, justify="left" if name in ("host", "role", "backend", "state") else "right")
        total = max(tally.total, 1)
        running = {b.url: b.running for b in self.backends}
        for host in hosts:
            state = host_state(host)
            answered = tally.answered[host.url]
            table.add_row(
                Text(self.names[host.url], style="bold"),
                self.roles[self.names[host.url]],
                Text("up", style="green") if running[host.url] else Text("down", style="bold red"),
                str(answered),
                f"{answered / total:.0%}",
                str(host.outstanding),
                ms(host.ewma_latency),
                Text(state, style="green" if state == "ok" else "bold red"),
                str(phase.events.count("ejected", host.url)),
            )
        runs = len(self.strategies)
        done = (phase.index * self.duration + min(elapsed, self.duration)) / (runs * self.duration)
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=1.0, completed=done, width=50),
            f"{done:.0%}  strategy {phase.index + 1}/{runs}: {tally.total} requests, {tally.errors} errors,"
            f" {tally.retried} retried",
        )
        return Group(table, progress)

    def phase_done(self, phase: _Phase) -> None:
        tally = phase.tally
        latencies = tally.latencies()
        out_at, back_at = phase.outage(self.flaky.url)
        line = (
            f"  {phase.strategy}: {tally.total} requests in {phase.took:.1f} s, {tally.errors} errors,"
            f" p50 {ms(percentile(latencies, 0.5))} ms, p99 {ms(percentile(latencies, 0.99))} ms; "
        )
        line += self._outage_text(phase, out_at, back_at)
        self.say(line)

    def _outage_text(self, phase: _Phase, out_at: float | None, back_at: float | None) -> str:
        if out_at is None or phase.crashed_at is None:
            return "e was never taken out"
        text = f"e taken out {(out_at - phase.crashed_at) * 1000:.0f} ms after its crash"
        if back_at is None or phase.restarted_at is None:
            return text + ", not back by the end"
        after = phase.answers_after(self.flaky.url, back_at)
        return text + f", back {back_at - phase.restarted_at:.2f} s after its restart ({after} answers since)"

    # -- the summary ----------------------------------------------------------------------------------

    def summary(self, phases: list[_Phase]) -> None:
        names = [b.name for b in self.backends]
        header = ["strategy", *names, "req/s", "errors", "retried", "p50 ms", "p99 ms", "e out after crash"]
        header += ["e back after restart"]
        rows = []
        for phase in phases:
            tally = phase.tally
            latencies = tally.latencies()
            out_at, back_at = phase.outage(self.flaky.url)
            out = (
                "never"
                if out_at is None or phase.crashed_at is None
                else f"{(out_at - phase.crashed_at) * 1000:.0f} ms"
            )
            back = "never" if back_at is None or phase.restarted_at is None else f"{back_at - phase.restarted_at:.2f} s"
            rows.append(
                [
                    phase.strategy,
                    *(str(tally.answered[b.url]) for b in self.backends),
                    f"{tally.total / phase.took:.0f}" if phase.took else "-",
                    str(tally.errors),
                    str(tally.retried),
                    ms(percentile(latencies, 0.5)),
                    ms(percentile(latencies, 0.99)),
                    out,
                    back,
                ]
            )
        title = "Summary: requests answered per host, per strategy"
        if self.console is None:
            print(f"\n{title}")
            widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
            for row in [header, *rows]:
                cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
                print("  ".join(cells))
        else:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for index, name in enumerate(header):
                table.add_column(name, justify="left" if index == 0 else "right")
            for row in rows:
                table.add_row(*row)
            self.say("")
            self.console.print(table)
        for line in self._conclusions(phases):
            self.say(line)

    def _conclusions(self, phases: list[_Phase]) -> list[str]:
        """What the run showed, in sentences, from the numbers above."""
        lines = []
        url = self.flaky.url
        seen = [p for p in phases if p.outage(url)[0] is not None]
        back = [p for p in seen if p.outage(url)[1] is not None]
        if seen:
            delays = [(p.outage(url)[0] or 0.0) - (p.crashed_at or 0.0) for p in seen]
            lines.append(
                f"Ejection: e was taken out {_span([d * 1000 for d in delays], '.0f')} ms after it crashed"
                f" ({len(seen)} of {len(phases)} runs)."
            )
        missing = [p.strategy for p in phases if p not in seen]
        if missing:
            lines.append(f"No ejection of e was seen under {', '.join(missing)}.")
        if back:
            returns = [(p.outage(url)[1] or 0.0) - (p.restarted_at or 0.0) for p in back]
            answers = sum(p.answers_after(url, p.outage(url)[1] or 0.0) for p in back)
            lines.append(
                f"Recovery: e was back {_span(returns, '.2f')} s after it restarted"
                f" ({len(back)} of {len(phases)} runs) and answered {answers} requests again."
            )
        not_back = [p.strategy for p in seen if p not in back]
        if not_back:
            lines.append(f"e was not back by the end under {', '.join(not_back)}.")
        errors = sum(p.tally.errors for p in phases)
        retried = sum(p.tally.retried for p in phases)
        lines.append(
            f"Callers saw {errors} errors; {retried} requests needed a retry on another host"
            " (attempts that failed on e were retried)."
        )
        slow = self.backends[3].url
        shares = ", ".join(f"{p.strategy} {p.tally.answered[slow] / max(p.tally.total, 1):.1%}" for p in phases)
        lines.append(f"Share of the slow host d ({self.slow * 1000:.0f} ms): {shares}.")
        return lines


def _span(values: list[float], spec: str) -> str:
    """The range as "3-7", or "5" when the smallest and the largest value read the same."""
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def run(args: argparse.Namespace) -> int:
    console = rich_console(args.plain)
    if console is None and importlib.util.find_spec("rich") is None:
        print(NO_RICH)
    demo = _Demo(args, console)
    try:
        phases = anyio.run(demo.main)
    finally:
        demo.close()
    demo.summary(phases)
    return 0
