"""Active health checks against real servers on 127.0.0.1: unhealthy and back, the return of an ejected
host, flapping, panic, errors of the checker itself, and no thread or task left after close (sync,
asyncio and trio). Every wait is a condition with a deadline."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import anyio
import httpx
import pytest

import lbclient._health
from lbclient import AsyncLBClient, AsyncLoadBalancingTransport, HealthCheck, HostState, LBClient, OutlierDetection
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

#: Checks every 50 ms; two failures in a row make a host unhealthy, two passes healthy again.
FAST_CHECKS = HealthCheck(interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2)

#: A host that lbclient and ``httpx.URL`` accept, but for which httpx raises idna's ``InvalidCodepoint``
#: (a ValueError, not an httpx error) as soon as a request to it is built: its check always raises.


def urls(backends: list[Backend]) -> list[str]:
    return [b.url for b in backends]


def events(caplog: pytest.LogCaptureFixture, kind: str, host: str) -> list[str]:
    """Messages of pool events of ``kind`` (``ejected``, ``healthy``, ...) about ``host``."""
    return [
        r.getMessage() for r in list(caplog.records) if r.name == "lbclient" and f": {kind} {host}" in r.getMessage()
    ]


def health_checks(backends: list[Backend]) -> int:
    return sum(b.count("GET", "/health") for b in backends)


async def _until_it_gets_traffic(flavor: Flavor, client: Any, backend: Backend) -> None:
    before = backend.count("GET", "/work")

    async def reached() -> bool:
        await flavor.get(client, "/work")
        return backend.count("GET", "/work") > before

    await eventually(reached, what=f"traffic to {backend!r}")


async def test_failing_checks_make_a_host_unhealthy_then_healthy_again(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    a = backends[0]
    a.health_status = 503
    async with flavor.client(urls(backends), health_check=FAST_CHECKS) as client:
        host_a = client.pool.hosts[0]
        await eventually(lambda: not host_a.healthy, what="a unhealthy")
        assert not client.pool.panic
        responses = [await flavor.get(client, "/work") for _ in range(12)]
        assert [r.status_code for r in responses] == [200] * 12
        assert a.url not in {r.extensions["lb_host"] for r in responses}
        assert a.count("GET", "/work") == 0

        a.health_status = 200
        await eventually(lambda: host_a.healthy, what="a healthy again")
        await _until_it_gets_traffic(flavor, client, a)
    unhealthy = events(caplog, "unhealthy", a.url)
    assert len(unhealthy) == 1
    assert "HTTP 503" in unhealthy[0]
    assert len(events(caplog, "healthy", a.url)) == 1


async def test_a_passing_check_returns_an_ejected_host(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    a = backends[0]
    a.status = 503  # its answers fail, its /health passes
    detection = OutlierDetection(consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=60.0)
    async with flavor.client(
        urls(backends), retries=1, outlier_detection=detection, health_check=FAST_CHECKS
    ) as client:

        async def ejected() -> bool:
            await flavor.get(client, "/work")
            return bool(events(caplog, "ejected", a.url))

        await eventually(ejected, what="a ejected")
        a.status = 200
        # Back long before its 30 s ejection ends: the next passing check returns it.
        await eventually(lambda: events(caplog, "returned", a.url), what="a returned", timeout=10.0)
        assert "health check passed" in events(caplog, "returned", a.url)[0]
        assert not client.pool.hosts[0].ejected
        await _until_it_gets_traffic(flavor, client, a)


async def test_flapping_health_needs_the_thresholds_in_a_row(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    a = backends[0]
    a.health_pattern = [200, 503]  # never two failures in a row
    async with flavor.client(urls(backends), health_check=FAST_CHECKS) as client:
        host_a = client.pool.hosts[0]
        await eventually(lambda: a.count("GET", "/health") >= 8, what="8 checks of a")
        assert host_a.healthy
        assert not events(caplog, "unhealthy", a.url)

        a.health_pattern = [503, 503, 200, 200]  # down and up again every four checks
        await eventually(
            lambda: len(events(caplog, "unhealthy", a.url)) >= 2 and len(events(caplog, "healthy", a.url)) >= 2,
            what="a flapped twice",
        )
        assert all(b.count("GET", "/health") >= 8 for b in backends[1:])
        assert all(h.healthy for h in client.pool.hosts[1:])


async def test_panic_when_every_host_fails_its_checks(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    for backend in backends:
        backend.health_status = 503
    async with flavor.client(urls(backends), health_check=FAST_CHECKS) as client:
        await eventually(lambda: not any(h.healthy for h in client.pool.hosts), what="every host unhealthy")
        assert client.pool.panic
        responses = [await flavor.get(client, "/work") for _ in range(12)]
    assert [r.status_code for r in responses] == [200] * 12
    # The default panic threshold (0.5) spreads the requests over every host instead of failing them.
    assert all(b.count("GET", "/work") > 0 for b in backends), [b.count("GET", "/work") for b in backends]
    panic = [r for r in caplog.records if r.name == "lbclient" and ": panic " in r.getMessage()]
    assert len(panic) == 1, caplog.text
    assert panic[0].levelno == logging.WARNING
    assert "hosts available" in panic[0].getMessage()


async def test_the_checker_logs_and_survives_its_own_errors(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    broken, a, b = backends
    a.health_status = 503
    build = lbclient._health.HTTPHealthChecks.request

    def request(self: Any, host: HostState) -> httpx.Request:
        if host.url == broken.url:
            raise RuntimeError("a bug of ours while building the check")
        return build(self, host)

    monkeypatch.setattr(lbclient._health.HTTPHealthChecks, "request", request)
    async with flavor.client([broken.url, a.url, b.url], health_check=FAST_CHECKS) as client:
        host_broken, host_a = client.pool.hosts[:2]

        def warnings() -> list[logging.LogRecord]:
            return [r for r in list(caplog.records) if r.name == "lbclient" and r.levelno == logging.WARNING]

        # Logged, and still running: the error comes back round after round.
        await eventually(lambda: sum("our side" in r.getMessage() for r in warnings()) >= 3, what="three errors")
        assert "a bug of ours" in next(r for r in warnings() if "our side" in r.getMessage()).getMessage()
        # One host whose check raises must not stop the checks of the others, and fails its own checks.
        await eventually(lambda: b.count("GET", "/health") >= 2, timeout=3.0, what="checks of b")
        await eventually(lambda: not host_a.healthy, timeout=3.0, what="a unhealthy")
        await eventually(lambda: not host_broken.healthy, timeout=3.0, what="the broken check fails its host")


def _health_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("lbclient-health-")}


@pytest.mark.parametrize("mode", ["sync"])
@pytest.mark.parametrize("how", ["close", "with"])
async def test_sync_checker_thread_ends_on_close(mode: str, backends: list[Backend], how: str) -> None:
    def checked() -> bool:
        return all(b.count("GET", "/health") >= 2 for b in backends)

    before = _health_threads()
    if how == "with":
        with LBClient(urls(backends), health_check=FAST_CHECKS):
            await eventually(checked, what="checks")
            assert _health_threads() - before
    else:
        client = LBClient(urls(backends), health_check=FAST_CHECKS)
        await eventually(checked, what="checks")
        assert _health_threads() - before
        client.close()
    assert not _health_threads() - before
    seen = health_checks(backends)
    await anyio.sleep(0.3)  # a short window of six intervals: no check may arrive in it
    assert health_checks(backends) == seen


def _health_tasks() -> set[int]:
    return {t.id for t in anyio.get_running_tasks() if t.name and t.name.startswith("lbclient-health-")}


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
@pytest.mark.parametrize("how", ["async with", "aclose", "mounted transport"])
async def test_async_checker_task_ends_on_aclose(mode: str, backends: list[Backend], how: str) -> None:
    def checked() -> bool:
        return all(b.count("GET", "/health") >= 2 for b in backends)

    before = _health_tasks()
    if how == "mounted transport":
        transport = AsyncLoadBalancingTransport(urls(backends), health_check=FAST_CHECKS, service="users")
        async with httpx.AsyncClient(mounts={"all://users": transport}) as plain:
            await eventually(checked, what="checks")
            assert _health_tasks() - before
            assert (await plain.get("http://users/work")).status_code == 200
    else:
        async with AsyncLBClient(urls(backends), health_check=FAST_CHECKS) as client:
            await eventually(checked, what="checks")
            assert _health_tasks() - before
            if how == "aclose":
                await client.aclose()
                assert not _health_tasks() - before
    assert not _health_tasks() - before
    seen = health_checks(backends)
    await anyio.sleep(0.3)  # a short window of six intervals: no check may arrive in it
    assert health_checks(backends) == seen


async def test_hanging_checks_never_delay_another_hosts_check(flavor: Flavor, backends: list[Backend]) -> None:
    """Four hosts whose /health never answers (a listening socket that nobody reads) and one good host: the
    good host is checked every interval, not once per round of timeouts."""
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(4)]
    try:
        hosts = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in silent] + [backends[0].url]
        checks = HealthCheck(interval=0.02, timeout=5.0, unhealthy_threshold=1)
        async with flavor.client(hosts, health_check=checks):
            # Checked one host after another, or round by round, the good host would wait 5 s per round.
            await eventually(
                lambda: backends[0].count("GET", "/health") >= 10, timeout=4, what="10 checks of the good host"
            )
    finally:
        for sock in silent:
            sock.close()


async def test_checks_have_connections_of_their_own_beyond_the_clients_limits(
    flavor: Flavor, backends: list[Backend]
) -> None:
    """max_connections=1 bounds each host's request connections, not the checks: a host whose /health
    hangs must not take the one connection the other hosts' checks need."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        hosts = [f"127.0.0.1:{silent.getsockname()[1]}", backends[0].url]
        checks = HealthCheck(interval=0.02, timeout=5.0, unhealthy_threshold=1)
        async with flavor.client(hosts, health_check=checks, limits=httpx.Limits(max_connections=1)) as client:
            await eventually(lambda: backends[0].count("GET", "/health") >= 10, timeout=4, what="10 checks")
            assert client.pool.hosts[1].healthy
    finally:
        silent.close()
