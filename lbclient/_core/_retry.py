"""Retry decisions as data: what may be retried, how long to wait, and the budget that caps retries.

The transports run the loop with tenacity; every decision it asks for is made here, from the policy,
the request's facts and the injected clock and random generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from ._config import IDEMPOTENT_METHODS, RetryPolicy

__all__ = ["FailureKind", "RetryBudget", "RetryPlan", "may_resend"]

#: ``connect``: the request never reached a server (safe to resend). ``sent``: it may have.
FailureKind = Literal["connect", "sent"]

_BUCKETS = 10


class RetryBudget:
    """Retries allowed: ``ratio`` of the requests of the last ``window`` seconds plus ``min_per_second``
    per second of it, as Finagle's RetryBudget and Linkerd's retry budgets. Counted in ten buckets that
    slide with the clock, so the cost per request is O(1)."""

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        window: float,
        *,
        clock: Callable[[], float],
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self._ratio = ratio
        self._floor = min_per_second * window
        self._width = window / _BUCKETS
        self._clock = clock
        self._lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._epoch = int(clock() / self._width)

    def _advance(self) -> int:
        epoch = int(self._clock() / self._width)
        stale = min(epoch - self._epoch, _BUCKETS)
        for offset in range(stale):
            slot = (epoch - offset) % _BUCKETS
            self._requests[slot] = self._retries[slot] = 0
        self._epoch = max(epoch, self._epoch)
        return self._epoch % _BUCKETS

    def record_request(self) -> None:
        """An original request (not a retry) was sent."""
        with self._lock:
            self._requests[self._advance()] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        with self._lock:
            slot = self._advance()
            if sum(self._retries) + 1 > self._ratio * sum(self._requests) + self._floor:
                return False
            self._retries[slot] += 1
            return True


def may_resend(method: str, *, idempotency_key: bool, idempotent: bool | None, non_idempotent_too: bool) -> bool:
    """May a request that possibly reached the server be sent again? ``idempotent`` is the request's own
    word (``lb_idempotent``): True resends it as a GET would be, False never, whatever the method or the
    policy; None leaves it to the method (RFC 9110 9.2.2), the ``Idempotency-Key`` header and
    ``non_idempotent_too`` (the policy's ``retry_non_idempotent``). Retries, hedging and buffering ask
    here, so they cannot disagree."""
    if idempotent is not None:
        return idempotent
    return method.upper() in IDEMPOTENT_METHODS or idempotency_key or non_idempotent_too


class RetryPlan:
    """The retry decisions for one request."""

    __slots__ = ("policy", "_may_resend", "_deadline", "_clock", "_rng", "_budget")

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        method: str,
        idempotency_key: bool,
        replayable: bool,
        deadline: float | None,
        clock: Callable[[], float],
        rng: random.Random,
        budget: RetryBudget,
        idempotent: bool | None = None,
    ) -> None:
        self.policy = policy
        self._may_resend = replayable and may_resend(
            method,
            idempotency_key=idempotency_key,
            idempotent=idempotent,
            non_idempotent_too=policy.retry_non_idempotent,
        )
        self._deadline = deadline
        self._clock = clock
        self._rng = rng
        self._budget = budget

    def retry_failure(self, kind: FailureKind) -> bool:
        """Retry after a transport failure? A request that never reached a server always may be."""
        return kind == "connect" or self._may_resend

    def retry_status(self, status: int, retry_after: float | None) -> bool:
        """Retry after a response with ``status``? Only for statuses of the policy, requests that may be
        resent, and a ``Retry-After`` no longer than the policy allows."""
        if status not in self.policy.retry_on_status or not self._may_resend:
            return False
        return retry_after is None or retry_after <= self.policy.retry_after_max

    def wait(self, retry_number: int, retry_after: float | None) -> float:
        """Seconds before retry ``retry_number`` (1 for the first retry): the server's ``Retry-After``
        when it gave one, else full jitter over the exponential backoff (AWS's "full jitter")."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.policy.backoff_max, self.policy.backoff_base * 2 ** (retry_number - 1))
        return self._rng.uniform(0.0, ceiling)

    def remaining(self) -> float | None:
        """Seconds left of the request's overall deadline, or None without one."""
        return None if self._deadline is None else self._deadline - self._clock()

    def may_continue(self, upcoming_wait: float) -> bool:
        """Is there time for another attempt after ``upcoming_wait``, and budget for it? Takes the
        retry from the budget when the answer is yes."""
        remaining = self.remaining()
        if remaining is not None and remaining <= upcoming_wait:
            return False
        return self._budget.try_withdraw()
