"""Active health checks: what a check is, and the rounds that feed ``Pool.report_check``.

The check itself (URL, verdict, jittered schedule) is shared; the sync round probes the hosts one after
another from a :class:`ThreadLoop`, the async round probes them all at once in a :class:`TaskLoop`.
"""

from __future__ import annotations

import logging
import random

import anyio
import httpx

from ._background import TaskLoop, ThreadLoop
from ._core import HostState, Pool
from ._core._config import HealthCheck

__all__ = ["HealthChecks"]

logger = logging.getLogger("lbclient")


class HealthChecks:
    """Probes every host of ``pool`` with ``config``; ``thread()`` or ``task()`` makes the loop."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str) -> None:
        self.pool = pool
        self.config = config
        self.name = f"lbclient-health-{service}"
        self.service = service
        self._rng = random.Random()
        self._transport: httpx.HTTPTransport | None = None
        self._async_transport: httpx.AsyncHTTPTransport | None = None

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

    # -- the sync round, in a thread ------------------------------------------------------------------------

    def thread(self) -> ThreadLoop:
        return ThreadLoop(self.name, self._round, self._close)

    def _round(self, loop: ThreadLoop) -> float:
        transport = self._transport = self._transport or httpx.HTTPTransport()
        for host in self.pool.hosts:
            if loop.stopping.is_set():
                break
            try:
                response = transport.handle_request(self.request(host))
                response.close()
            except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
                self.report(host, exc)
            else:
                self.report(host, response)
        return self.delay()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- the async round, in a task ------------------------------------------------------------------------

    def task(self) -> TaskLoop:
        return TaskLoop(self.name, self._async_round, self._async_close)

    async def _async_round(self) -> float:
        async with anyio.create_task_group() as group:
            for host in self.pool.hosts:
                group.start_soon(self._check, host)
        return self.delay()

    async def _check(self, host: HostState) -> None:
        """Probe one host and report it (a subclass may probe another way: the TCP proxy connects)."""
        transport = self._async_transport = self._async_transport or httpx.AsyncHTTPTransport()
        try:
            response = await transport.handle_async_request(self.request(host))
            await response.aclose()
        except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
            self.report(host, exc)
        else:
            self.report(host, response)

    async def _async_close(self) -> None:
        if self._async_transport is not None:
            await self._async_transport.aclose()
