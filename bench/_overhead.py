"""Sections 1, 2 and 4: LBClient against plain httpx, both talking to the same nginx on loopback.

1. Sync, sequential: ``LBClient(hosts=[url]).get("/x")`` against ``httpx.Client().get(url + "/x")`` and
   ``httpx.Client(base_url=url).get("/x")``.
2. Async, ``tasks`` tasks sharing one client: ``AsyncLBClient`` against ``httpx.AsyncClient``, with
   httpx's default limits in every client, then with a fixed pool of persistent connections in every client.
4. (optional) ``LBClient`` with ``transport=`` omitted against the same with ``transport=httpx.HTTPTransport()``.

Every client is built with ``trust_env=False``, so a proxy set in the environment can never carry the
benchmark's requests off the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import httpx

import lbclient

from ._compare import comparison_section
from ._report import Section
from ._rounds import Rounds
from ._settings import Settings
from ._timers import AsyncTimer, BenchError, Requests, SyncTimer, async_timer, drive, drive_async, sync_timer

__all__ = ["ASYNC_LIMITS", "async_overhead", "sync_overhead", "transport_overhead"]

PATH = "/x"
OVERHEAD_BAR = 1.10

PLAIN = "httpx.Client"
BASE = "httpx.Client(base_url)"
LB = "LBClient"
APLAIN = "httpx.AsyncClient"
ABASE = "httpx.AsyncClient(base_url)"
ALB = "AsyncLBClient"
OMITTED = "LBClient (transport omitted)"
GIVEN = "LBClient (transport=HTTPTransport())"

#: Async limits compared, the same in every client. "default": httpx's own (100 connections, 20 kept
#: alive for 5 s). "fixed": a fixed pool of tasks // 4 persistent connections that the tasks queue for, so
#: every client starts every round in the same state. Not one connection per task: httpcore's pool scans
#: every connection for every queued request, so its cost grows with the square of the connections it
#: holds, and with 64 kept alive a client runs at 1 ms or at 6-8 ms per request depending on how many it
#: happens to hold (measured), which swamps any difference between the clients.
ASYNC_LIMITS = ("default", "fixed")
_FIXED_EXPIRY = 60.0  # seconds: longer than a client waits while the others run their rounds


def _limits_kwargs(limits: str, tasks: int) -> dict[str, Any]:
    if limits == "default":
        return {}
    if limits == "fixed":
        size = max(1, tasks // 4)
        return {
            "limits": httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=_FIXED_EXPIRY)
        }
    raise ValueError(f"unknown limits {limits!r}; valid: {ASYNC_LIMITS}")


def require_loopback(url: str) -> str:
    """``url`` itself, after checking that it names a loopback address (the only allowed target)."""
    host = httpx.URL(url).host
    if not ipaddress.ip_address(host).is_loopback:
        raise BenchError(f"refusing to benchmark against {url!r}: only loopback addresses are allowed")
    return url


def _check_preflight(name: str, response: httpx.Response, url: str) -> None:
    if response.status_code != 200 or response.text != "ok":
        raise BenchError(f"{name}: {url} answered {response.status_code} {response.text[:100]!r}, not 200 'ok'")
    lb_host = response.extensions.get("lb_host")
    if lb_host is not None and lb_host != url:
        raise BenchError(f"{name}: answered by {lb_host!r}, expected {url!r}")


def _sync_contenders(url: str) -> dict[str, tuple[Callable[[], httpx.Client], str]]:
    """Every sync contender: how to build its client, and the URL it requests."""
    return {
        PLAIN: (lambda: httpx.Client(trust_env=False), url + PATH),
        BASE: (lambda: httpx.Client(base_url=url, trust_env=False), PATH),
        LB: (lambda: lbclient.LBClient(hosts=[url], trust_env=False), PATH),
        OMITTED: (lambda: lbclient.LBClient(hosts=[url], trust_env=False), PATH),
        GIVEN: (lambda: lbclient.LBClient(hosts=[url], trust_env=False, transport=httpx.HTTPTransport()), PATH),
    }


def _sync_rounds(url: str, settings: Settings, names: Sequence[str]) -> Rounds:
    contenders = _sync_contenders(url)
    timers: dict[str, SyncTimer] = {}
    with ExitStack() as stack:
        for name in names:
            make, target = contenders[name]
            client = stack.enter_context(make())
            _check_preflight(name, client.get(target), url)
            timers[name] = sync_timer(client, Requests.single(target))
        return drive(Rounds(names, settings.sync_plan()), timers)


def sync_overhead(url: str, settings: Settings) -> Section:
    require_loopback(url)
    rounds = _sync_rounds(url, settings, [PLAIN, BASE, LB])
    return comparison_section(
        "sync_overhead",
        f"1. Sync sequential, LBClient vs plain httpx.Client, nginx on {url}",
        rounds,
        subject=LB,
        baselines=[PLAIN, BASE],
        label="1. sync sequential",
        bar=OVERHEAD_BAR,
    )


def transport_overhead(url: str, settings: Settings) -> Section:
    require_loopback(url)
    rounds = _sync_rounds(url, settings, [OMITTED, GIVEN])
    return comparison_section(
        "transport_omitted_vs_given",
        "4. (optional) Sync LBClient, transport= omitted vs given",
        rounds,
        subject=OMITTED,
        baselines=[GIVEN],
        label="4. (optional) transport omitted vs given",
        bar=None,
    )


def _async_contenders(
    url: str, client_kwargs: Mapping[str, Any]
) -> dict[str, tuple[Callable[[], httpx.AsyncClient], str]]:
    """Every async contender, with the same client keywords (limits) for all."""
    return {
        APLAIN: (lambda: httpx.AsyncClient(trust_env=False, **client_kwargs), url + PATH),
        ABASE: (lambda: httpx.AsyncClient(base_url=url, trust_env=False, **client_kwargs), PATH),
        ALB: (lambda: lbclient.AsyncLBClient(hosts=[url], trust_env=False, **client_kwargs), PATH),
    }


async def _async_rounds(url: str, settings: Settings, client_kwargs: Mapping[str, Any]) -> Rounds:
    timers: dict[str, AsyncTimer] = {}
    async with AsyncExitStack() as stack:
        for name, (make, target) in _async_contenders(url, client_kwargs).items():
            client = await stack.enter_async_context(make())
            _check_preflight(name, await client.get(target), url)
            timers[name] = async_timer(
                client, Requests.single(target), tasks=settings.async_tasks, timeout=settings.async_round_timeout
            )
        return await drive_async(Rounds(list(timers), settings.async_plan()), timers)


def async_overhead(url: str, settings: Settings, limits: str) -> Section:
    require_loopback(url)
    client_kwargs = _limits_kwargs(limits, settings.async_tasks)
    rounds = asyncio.run(_async_rounds(url, settings, client_kwargs))
    if client_kwargs:
        pool = client_kwargs["limits"].max_connections
        short, described = f"{pool} fixed connections", f"a fixed pool of {pool} persistent connections"
    else:
        short, described = "default limits", "httpx's default limits"
    tasks = settings.async_tasks
    section = comparison_section(
        f"async_overhead_{limits}_limits",
        f"2{'a' if limits == 'default' else 'b'}. Async (asyncio), {tasks} tasks sharing one client, {described} "
        "in every client",
        rounds,
        subject=ALB,
        baselines=[APLAIN, ABASE],
        label=f"2. async x{tasks}, {short}",
        bar=OVERHEAD_BAR,
    )
    section.notes.append("per request = wall time of a round / requests in it; req/s is the throughput")
    return section
