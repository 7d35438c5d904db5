"""Active health checks: the probers that feed ``Pool.report_check``.

What a check means (the URL, the verdict, the jittered schedule) is shared; only the loops differ: an
anyio task in the async transport (asyncio or trio), a daemon thread in the sync one. Both run until
the transport closes, log and survive their own errors, and leave nothing behind when stopped.
"""

from __future__ import annotations

import logging
import random
import threading

import anyio
import httpx

from ._core import HostState, Pool
from ._core._config import HealthCheck

__all__ = ["AsyncHealthChecker", "ThreadedHealthChecker"]

logger = logging.getLogger("lbclient")


class _Checks:
    """What both probers share: the check URL, the verdict, the schedule."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str) -> None:
        self.pool = pool
        self.config = config
        self.service = service
        self._rng = random.Random()

    def request(self, host: HostState) -> httpx.Request:
        """The check: ``GET`` of the host's base URL (prefix included) plus the check path. Sent straight
        through a transport, so checks stay out of httpx's request log."""
        timeout = self.config.timeout
        return httpx.Request(
            "GET",
            host.url + self.config.path,
            headers={"User-Agent": "lbclient-health-check"},
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )

    def report(self, host: HostState, outcome: httpx.Response | Exception) -> None:
        if isinstance(outcome, httpx.Response):
            ok, detail = outcome.status_code < 400, f"HTTP {outcome.status_code}"
        else:
            ok, detail = False, f"{type(outcome).__name__}: {outcome}"
            if not isinstance(outcome, httpx.HTTPError):
                logger.warning("%s: health check of %s failed on our side: %r", self.service, host.url, outcome)
        self.pool.report_check(host, ok, detail)

    def delay(self) -> float:
        """Seconds to the next round: the interval plus up to ``jitter`` of it."""
        return self.config.interval * (1.0 + self._rng.uniform(0.0, self.config.jitter))

    def round_failed(self, exc: Exception) -> None:
        logger.exception("%s: health check round failed; checks go on: %r", self.service, exc)


class AsyncHealthChecker:
    """Probes every host concurrently each round, in an anyio task group that lives from ``start()``
    (the transport's ``__aenter__``) to ``stop()`` (``aclose``), in the same task."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str) -> None:
        self._checks = _Checks(pool, config, service)
        self._group: anyio.abc.TaskGroup | None = None

    async def start(self) -> None:
        if self._group is not None:
            return
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._run, name=f"lbclient-health-{self._checks.service}")

    async def stop(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)

    async def _run(self) -> None:
        checks = self._checks
        async with httpx.AsyncHTTPTransport() as transport:
            while True:
                try:
                    async with anyio.create_task_group() as group:
                        for host in checks.pool.hosts:
                            group.start_soon(self._check, transport, host)
                except Exception as exc:  # noqa: BLE001 - a background loop logs and survives its own errors
                    checks.round_failed(exc)
                await anyio.sleep(checks.delay())

    async def _check(self, transport: httpx.AsyncHTTPTransport, host: HostState) -> None:
        try:
            response = await transport.handle_async_request(self._checks.request(host))
            await response.aclose()
        except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
            self._checks.report(host, exc)
        else:
            self._checks.report(host, response)


class ThreadedHealthChecker:
    """Probes the hosts from a daemon thread (one round at a time); ``stop()`` wakes and joins it."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str) -> None:
        self._checks = _Checks(pool, config, service)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lbclient-health-{service}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        checks = self._checks
        with httpx.HTTPTransport() as transport:
            while not self._stopping.is_set():
                try:
                    for host in checks.pool.hosts:
                        if self._stopping.is_set():
                            return
                        self._check(transport, host)
                except Exception as exc:  # noqa: BLE001 - a background loop logs and survives its own errors
                    checks.round_failed(exc)
                self._stopping.wait(checks.delay())

    def _check(self, transport: httpx.HTTPTransport, host: HostState) -> None:
        try:
            response = transport.handle_request(self._checks.request(host))
            response.close()
        except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
            self._checks.report(host, exc)
        else:
            self._checks.report(host, response)
