"""Background loops: a daemon thread for the sync transport, an anyio task for the async one.

A loop repeats a step that returns the seconds until the next one. Both loops log and survive their
step's errors, stop promptly when asked, and leave nothing behind: the thread is joined, the task group
is exited in the task that entered it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

__all__ = ["TaskLoop", "ThreadLoop"]

logger = logging.getLogger("lbclient")

#: Seconds before a step that raised runs again.
ERROR_DELAY = 1.0
#: The longest :meth:`ThreadLoop.stop` waits for a step to end (a discovery source's ``resolve()`` may
#: block for as long as it likes): closing a client must return in bounded time.
STOP_TIMEOUT = 0.5


class ThreadLoop:
    """Runs ``step(loop)`` in a daemon thread until :meth:`stop`, the first time after ``first_delay``
    seconds; ``loop.stopping`` tells a long step to cut short. ``cleanup`` runs in the thread at the end."""

    def __init__(
        self,
        name: str,
        step: Callable[[ThreadLoop], float],
        cleanup: Callable[[], None] | None = None,
        *,
        first_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._first_delay = first_delay
        self._step = step
        self._cleanup = cleanup
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.stopping.wait(self._first_delay)
            while not self.stopping.is_set():
                try:
                    delay = self._step(self)
                except Exception as exc:
                    logger.exception("%s: background step failed; it runs again: %r", self.name, exc)
                    delay = ERROR_DELAY
                self.stopping.wait(delay)
        finally:
            if self._cleanup is not None:
                self._cleanup()

    def stop(self) -> None:
        """Ask the loop to end and wait for it, at most :data:`STOP_TIMEOUT` seconds. A step that does
        not return by then is left to end in its (daemon) thread; ``stopping`` tells it that nothing it
        finds must be used."""
        self.stopping.set()
        if self._thread is threading.current_thread():
            return
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            logger.warning(
                "%s: still busy in its step %.1fs after close; it is left to end on its own, and what it "
                "returns is dropped",
                self.name,
                STOP_TIMEOUT,
            )


class TaskLoop:
    """Runs ``await step()`` in an anyio task group that lives from :meth:`start` (a transport's
    ``__aenter__``) to :meth:`stop` (its ``aclose``), in the same task, the first time after
    ``first_delay`` seconds. ``cleanup`` runs when it ends."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[float]],
        cleanup: Callable[[], Awaitable[None]] | None = None,
        *,
        first_delay: float = 0.0,
    ) -> None:
        self.name = name
        self._first_delay = first_delay
        self._step = step
        self._cleanup = cleanup
        self._group: anyio.abc.TaskGroup | None = None

    async def start(self) -> None:
        if self._group is not None:
            return
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._run, name=self.name)

    def spawn(self, task: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run ``task`` alongside the loop, in its task group: it is cancelled when the loop stops."""
        assert self._group is not None, "spawn() is for the loop's own steps, while it runs"
        self._group.start_soon(task)

    async def stop(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)

    async def _run(self) -> None:
        try:
            await anyio.sleep(self._first_delay)
            while True:
                try:
                    delay = await self._step()
                except Exception as exc:
                    logger.exception("%s: background step failed; it runs again: %r", self.name, exc)
                    delay = ERROR_DELAY
                await anyio.sleep(delay)
        finally:
            if self._cleanup is not None:
                with anyio.CancelScope(shield=True):
                    await self._cleanup()
