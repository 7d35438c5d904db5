"""Callers cannot eject healthy hosts: a 500 that every host gives says nothing about any host, while a
host that fails where the others do not (gateway failures in a row, or a success rate far below the
others') is still ejected. Real servers on 127.0.0.1; sync, on asyncio and on trio."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from lbclient import OutlierDetection
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

MakeBackends = Callable[..., list[Backend]]

#: Quick to judge: 3 gateway failures in a row; success rates every 0.2 s over 3 hosts of 5 requests
#: each, with a factor of 1 (one host of 3 lies at most sqrt(2) = 1.41 deviations below the mean).
QUICK = OutlierDetection(
    consecutive_failures=3,
    base_ejection_time=30.0,
    max_ejection_time=60.0,
    success_rate_interval=0.2,
    success_rate_minimum_hosts=3,
    success_rate_request_volume=5,
    success_rate_stdev_factor=1.0,
)


async def _traffic_for(flavor: Flavor, client: Any, seconds: float, path: str = "/x") -> list[int]:
    """Requests one after another for ``seconds`` (several success-rate intervals); their statuses."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(statuses) < 30:
        statuses.append((await flavor.get(client, path)).status_code)
    return statuses


async def test_a_500_that_every_host_gives_ejects_nobody(flavor: Flavor, make_backends: MakeBackends) -> None:
    backends = make_backends(3, status=500)
    async with flavor.client([b.url for b in backends], retries=1, outlier_detection=QUICK) as client:
        statuses = await _traffic_for(flavor, client, 1.0)
        states = client.pool.hosts
        assert set(statuses) == {500}
        assert [(h.ejected, h.times_ejected) for h in states] == [(False, 0)] * 3
        assert all(h.failures >= 10 for h in states)
        # The same client still ejects a host that really fails: 503s in a row, where the others do not.
        backends[0].status = 503
        await eventually(
            lambda: _one_request_then(flavor, client, lambda: states[0].ejected), what="the 503 host ejected"
        )
        assert [h.ejected for h in states] == [True, False, False]


async def _one_request_then(flavor: Flavor, client: Any, done: Callable[[], bool]) -> bool:
    await flavor.get(client, "/x")
    return done()


async def test_a_killed_host_is_still_ejected(flavor: Flavor, make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    async with flavor.client([b.url for b in backends], retries=2, outlier_detection=QUICK) as client:
        states = client.pool.hosts
        backends[1].kill()
        await eventually(lambda: _one_request_then(flavor, client, lambda: states[1].ejected), what="ejected")
        assert [h.times_ejected for h in states] == [0, 1, 0]
        statuses = await _traffic_for(flavor, client, 0.1)
        assert set(statuses) == {200}


async def test_a_host_whose_success_rate_is_an_outlier_is_ejected(flavor: Flavor, make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    backends[2].status = 500
    events: list[Any] = []
    async with flavor.client(
        [b.url for b in backends], retries=1, outlier_detection=QUICK, on_event=events.append
    ) as client:
        states = client.pool.hosts
        await eventually(lambda: _one_request_then(flavor, client, lambda: states[2].ejected), what="ejected")
        assert [h.ejected for h in states] == [False, False, True]
        assert states[2].consecutive_failures == 0  # 500s never made a run of gateway failures
    [ejection] = [e for e in events if e.kind == "ejected"]
    assert ejection.host == backends[2].url
    assert "success rate 0.0% is below the pool's threshold" in ejection.reason


async def test_the_former_rule_ejects_on_500s_when_asked_to(flavor: Flavor, make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    backends[0].status = 500
    detection = OutlierDetection(consecutive_5xx=3, success_rate_interval=None, base_ejection_time=30.0)
    async with flavor.client([b.url for b in backends], retries=1, outlier_detection=detection) as client:
        states = client.pool.hosts
        await eventually(lambda: _one_request_then(flavor, client, lambda: states[0].ejected), what="ejected")
        assert backends[0].count() == 3
