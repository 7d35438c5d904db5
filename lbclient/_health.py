"""Active health checks: what a check is, and the rounds that feed ``Pool.report_check``.

:class:`HealthChecks` is the schedule and the verdict, whatever the probe; :class:`HTTPHealthChecks`
probes with ``GET`` of the check path. Every host is checked on its own (the sync checks on a small pool
of worker threads fed from a :class:`ThreadLoop`, the async ones as tasks of a :class:`TaskLoop`): a host
whose check hangs until its timeout is left out of the rounds meanwhile and never delays another's.
HTTP checks go through the client's own connections (:class:`~lbclient._connections.Connections`): the
same TLS settings (``verify``, ``cert``, ``sni_hostname``), proxies, and the caller's ``transport=``
when one was given.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ._background import TaskLoop, ThreadLoop
from ._connections import Connections, aclose_transports, close_transports
from ._core import HostState, Pool
from ._core._config import HealthCheck

__all__ = ["HTTPHealthChecks", "HealthChecks"]

logger = logging.getLogger("lbclient")

#: Worker threads of the sync checks to start with (there are as many as hosts when there are more; a
#: worker thread is only made when a check needs it).
MIN_WORKERS = 4


class HealthChecks:
    """Probes every host of ``pool`` with ``config``; ``task()`` makes the async loop. Subclasses say how
    one host is probed (:meth:`_check`)."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str) -> None:
        self.pool = pool
        self.config = config
        self.name = f"lbclient-health-{service}"
        self.service = service
        self._rng = random.Random()
        self._checking: set[HostState] = set()  # hosts with an async check in flight

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

    def task(self) -> TaskLoop:
        loop = TaskLoop(self.name, lambda: self._async_round(loop))
        return loop

    async def _async_round(self, loop: TaskLoop) -> float:
        """Start a check of every host whose last check is over, each in a task of the loop's own; a host
        whose check hangs (until its timeout) is left out of the rounds meanwhile, holding up no other."""
        for host in self.pool.hosts:
            if host not in self._checking:
                self._checking.add(host)
                loop.spawn(functools.partial(self._check_and_forget, host))
        return self.delay()

    async def _check_and_forget(self, host: HostState) -> None:
        try:
            await self._check(host)
        finally:
            self._checking.discard(host)

    async def _check(self, host: HostState) -> None:
        """Probe one host and report it."""
        raise NotImplementedError


class HTTPHealthChecks(HealthChecks):
    """``GET`` of each host's check path through ``connections``; ``thread()`` makes the sync loop."""

    def __init__(self, pool: Pool, config: HealthCheck, service: str, connections: Connections[Any]) -> None:
        super().__init__(pool, config, service)
        self._connections = connections
        self._workers: ThreadPoolExecutor | None = None
        self._worker_count = 0
        self._old_workers: list[ThreadPoolExecutor] = []
        self._running: set[HostState] = set()  # hosts with a sync check in flight
        self._running_lock = threading.Lock()

    def request(self, host: HostState) -> httpx.Request:
        """The check: ``GET`` of the host's base URL (prefix included) plus the check path, with the host's
        ``Host`` header and TLS server name. Sent straight through a transport, so checks stay out of
        httpx's request log."""
        timeout = self.config.timeout
        target = self._connections.target(host)
        extensions: dict[str, Any] = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)}
        if target.sni_hostname is not None:
            extensions["sni_hostname"] = target.sni_hostname
        return httpx.Request(
            "GET",
            host.url + self.config.path,
            headers={"User-Agent": "lbclient-health-check", "Host": target.host_header},
            extensions=extensions,
        )

    # -- the sync round, in a thread ------------------------------------------------------------------------

    def thread(self) -> ThreadLoop:
        return ThreadLoop(self.name, self._round, self._close)

    def _round(self, loop: ThreadLoop) -> float:
        """Start a check of every host whose last check is over, on the worker threads; a check that
        hangs (until its timeout) holds up no other host's."""
        close_transports(self._connections.tidy(self.pool))
        hosts = self.pool.hosts
        if self._workers is None or self._worker_count < len(hosts):
            # A worker per host: one check per host is in flight at most, and a host whose check waits for
            # a worker held by a hanging check would be held up after all.
            if self._workers is not None:
                self._workers.shutdown(wait=False)  # its threads end with their checks, joined at close
                self._old_workers.append(self._workers)
            self._worker_count = max(MIN_WORKERS, len(hosts))
            self._workers = ThreadPoolExecutor(self._worker_count, thread_name_prefix=self.name)
        for host in hosts:
            with self._running_lock:
                if host in self._running:
                    continue
                self._running.add(host)
            self._workers.submit(self._check_sync, host, loop)
        return self.delay()

    def _check_sync(self, host: HostState, loop: ThreadLoop) -> None:
        try:
            if not loop.stopping.is_set():
                self._probe_sync(host, loop)
        finally:
            with self._running_lock:
                self._running.discard(host)

    def _probe_sync(self, host: HostState, loop: ThreadLoop) -> None:
        try:
            response = self._connections.for_health_checks().handle_request(self.request(host))
            response.close()
        except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
            if not loop.stopping.is_set():  # a check cut by the client closing says nothing of the host
                self.report(host, exc)
        else:
            self.report(host, response)

    def _close(self) -> None:
        # Checks in flight were cut by the client closing its connections: these joins are short.
        for workers in [*self._old_workers, *([self._workers] if self._workers is not None else [])]:
            workers.shutdown(wait=True, cancel_futures=True)

    # -- the async round, in a task ------------------------------------------------------------------------

    async def _async_round(self, loop: TaskLoop) -> float:
        await aclose_transports(self._connections.tidy(self.pool))
        return await super()._async_round(loop)

    async def _check(self, host: HostState) -> None:
        try:
            response = await self._connections.for_health_checks().handle_async_request(self.request(host))
            await response.aclose()
        except Exception as exc:  # noqa: BLE001 - any error fails this host's check, not the round
            self.report(host, exc)
        else:
            self.report(host, response)
