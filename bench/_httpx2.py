"""Section 5 (runs when httpx2 is installed, extra ``httpx2``): the cost of the httpx2 bridge.

Sync, sequential GETs to the same nginx on loopback: ``httpx2.Client`` with
``lbclient.httpx2.LoadBalancingTransport`` (one host) against plain ``httpx2.Client``, with
``lbclient.LBClient`` against plain ``httpx.Client`` alongside, so the bridge's own share (converting
requests, responses and bodies between the two libraries) shows as the difference of the two ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

import lbclient

from ._compare import comparison_section
from ._overhead import PATH, require_loopback
from ._report import Section
from ._rounds import Rounds
from ._settings import Settings
from ._timers import BenchError, Requests, SyncTimer, drive, sync_timer

__all__ = ["httpx2_overhead"]

PLAIN2 = "httpx2.Client"
BRIDGE = "httpx2.Client + lbclient.httpx2"
PLAIN = "httpx.Client"
LB = "LBClient"


def _contenders(url: str) -> dict[str, tuple[Callable[[], Any], str]]:
    import httpx2

    from lbclient.httpx2 import LoadBalancingTransport

    service = lbclient.DEFAULT_SERVICE
    return {
        PLAIN2: (lambda: httpx2.Client(trust_env=False), url + PATH),
        # Absolute URLs, as a mounted bridge is used (``client.get("http://users/x")``): httpx2's
        # base_url merge parses the URL once more (about 25 us), which is httpx2's cost, not the bridge's.
        BRIDGE: (
            lambda: httpx2.Client(
                transport=LoadBalancingTransport([url], transport_options={"trust_env": False}), trust_env=False
            ),
            f"http://{service}{PATH}",
        ),
        PLAIN: (lambda: httpx.Client(trust_env=False), url + PATH),
        LB: (lambda: lbclient.LBClient(hosts=[url], trust_env=False), PATH),
    }


def httpx2_overhead(url: str, settings: Settings) -> Section:
    require_loopback(url)
    timers: dict[str, SyncTimer] = {}
    with ExitStack() as stack:
        for name, (make, target) in _contenders(url).items():
            client = stack.enter_context(make())
            response = client.get(target)
            if response.status_code != 200 or response.text != "ok":
                raise BenchError(f"{name}: {url} answered {response.status_code} {response.text[:100]!r}")
            timers[name] = sync_timer(client, Requests.single(target))
        rounds = drive(Rounds(list(timers), settings.sync_plan()), timers)
    section = comparison_section(
        "httpx2_bridge_overhead",
        f"5. Sync sequential, httpx2.Client with lbclient.httpx2 vs plain httpx2.Client, nginx on {url}",
        rounds,
        subject=BRIDGE,
        baselines=[PLAIN2],
        label="5. httpx2 bridge",
        bar=None,
    )
    native = rounds.median(LB) / rounds.median(PLAIN)
    bridged = rounds.median(BRIDGE) / rounds.median(PLAIN2)
    section.notes.append(
        f"LBClient / httpx.Client = {native:.2f}; the bridge adds "
        f"{(rounds.median(BRIDGE) - rounds.median(PLAIN2)) * 1e6:,.1f} us per request over httpx2.Client "
        f"(ratio {bridged:.2f})"
    )
    return section
