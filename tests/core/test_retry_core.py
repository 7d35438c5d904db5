"""Retry decisions (CONTRACT section 4) as pure data: RetryPlan and RetryBudget on a fake clock with seeded
generators. No sockets, no sleeps."""

from __future__ import annotations

import copy
import random
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbclient._core import RetryPolicy
from lbclient._core._retry import RetryBudget, RetryPlan
from lbclient.testing import FakeClock

IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
NON_IDEMPOTENT = ("POST", "PATCH", "CONNECT", "PROPFIND")


def unlimited_budget(clock: Any = None) -> RetryBudget:
    return RetryBudget(0.0, 1e9, 10.0, clock=clock or FakeClock())


def make_plan(
    method: str = "GET",
    policy: RetryPolicy | None = None,
    *,
    key: bool = False,
    replayable: bool = True,
    deadline: float | None = None,
    clock: Any = None,
    seed: int = 0,
    budget: RetryBudget | None = None,
    idempotent: bool | None = None,
) -> RetryPlan:
    clock = clock or FakeClock(100.0)
    return RetryPlan(
        policy or RetryPolicy(),
        method=method,
        idempotency_key=key,
        replayable=replayable,
        deadline=deadline,
        clock=clock,
        rng=random.Random(seed),
        budget=budget or unlimited_budget(clock),
        idempotent=idempotent,
    )


def available(budget: RetryBudget, limit: int = 100_000) -> int:
    """How many retries the budget would grant right now, without spending them."""
    probe = copy.deepcopy(budget)
    granted = 0
    while granted < limit and probe.try_withdraw():
        granted += 1
    return granted


# -- what may be retried ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*IDEMPOTENT, *NON_IDEMPOTENT, "get", "post"])
@pytest.mark.parametrize("replayable", [True, False])
def test_connect_failures_are_retried_for_every_method(method: str, replayable: bool) -> None:
    assert make_plan(method, replayable=replayable).retry_failure("connect")


@pytest.mark.parametrize("method", [*IDEMPOTENT, "get", "put", "Delete"])
def test_sent_failures_are_retried_for_idempotent_methods(method: str) -> None:
    assert make_plan(method).retry_failure("sent")


@pytest.mark.parametrize("method", NON_IDEMPOTENT)
def test_sent_failures_are_not_retried_for_other_methods(method: str) -> None:
    assert not make_plan(method).retry_failure("sent")
    assert not make_plan(method.lower()).retry_failure("sent")


@pytest.mark.parametrize("method", NON_IDEMPOTENT)
def test_idempotency_key_or_policy_allows_resending(method: str) -> None:
    assert make_plan(method, key=True).retry_failure("sent")
    assert make_plan(method, RetryPolicy(retry_non_idempotent=True)).retry_failure("sent")
    assert make_plan(method, key=True).retry_status(503, None)
    assert make_plan(method, RetryPolicy(retry_non_idempotent=True)).retry_status(502, None)


@pytest.mark.parametrize("method", [*IDEMPOTENT, *NON_IDEMPOTENT])
@pytest.mark.parametrize("anyway", [False, True])
def test_the_requests_own_word_wins_over_method_key_and_policy(method: str, anyway: bool) -> None:
    """``lb_idempotent``: True resends any method as a GET would be; False resends none once it may have
    reached a server, not even with an Idempotency-Key or ``retry_non_idempotent``; a connect failure is
    retried either way."""
    policy = RetryPolicy(retry_non_idempotent=anyway)
    safe = make_plan(method, policy, idempotent=True)
    assert safe.retry_failure("sent")
    assert safe.retry_status(503, None)
    unsafe = make_plan(method, policy, key=True, idempotent=False)
    assert not unsafe.retry_failure("sent")
    assert not unsafe.retry_status(503, None)
    assert unsafe.retry_failure("connect")
    assert not make_plan(method, policy, replayable=False, idempotent=True).retry_failure("sent")


@pytest.mark.parametrize("method", [*IDEMPOTENT, *NON_IDEMPOTENT])
@pytest.mark.parametrize(("key", "anyway"), [(False, False), (True, False), (False, True), (True, True)])
def test_non_replayable_bodies_are_never_resent(method: str, key: bool, anyway: bool) -> None:
    policy = RetryPolicy(retry_non_idempotent=anyway)
    plan = make_plan(method, policy, key=key, replayable=False)
    assert not plan.retry_failure("sent")
    for status in (502, 503, 504):
        assert not plan.retry_status(status, None)
        assert not plan.retry_status(status, 0.0)


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("method", IDEMPOTENT)
def test_default_statuses_are_retried_for_idempotent_methods(status: int, method: str) -> None:
    assert make_plan(method).retry_status(status, None)


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("method", NON_IDEMPOTENT)
def test_default_statuses_are_not_retried_for_post(status: int, method: str) -> None:
    assert not make_plan(method).retry_status(status, None)


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 404, 408, 429, 500, 501, 505, 599])
def test_other_statuses_are_not_retried_by_default(status: int) -> None:
    plan = make_plan("GET", key=True)
    assert not plan.retry_status(status, None)
    assert not plan.retry_status(status, 0.5)


def test_retry_on_status_is_the_policys_set() -> None:
    plan = make_plan("GET", RetryPolicy(retry_on_status={500, 429}))
    assert plan.retry_status(500, None)
    assert plan.retry_status(429, 1.0)
    assert not plan.retry_status(503, None)
    assert not plan.retry_status(502, None)
    assert not make_plan("GET", RetryPolicy(retry_on_status=())).retry_status(503, None)


# -- Retry-After and backoff ------------------------------------------------------------------------------------------


def test_retry_after_within_the_maximum_is_the_wait() -> None:
    plan = make_plan("GET", RetryPolicy(retry_after_max=5.0, retry_on_status={429, 503}))
    for status in (429, 503):
        assert plan.retry_status(status, 0.0)
        assert plan.retry_status(status, 2.5)
        assert plan.retry_status(status, 5.0)  # "up to" the maximum includes it
    for retry_number in (1, 2, 5):
        assert plan.wait(retry_number, 2.5) == 2.5
        assert plan.wait(retry_number, 0.0) == 0.0
        assert plan.wait(retry_number, 5.0) == 5.0


def test_retry_after_longer_than_the_maximum_ends_the_retries() -> None:
    plan = make_plan("GET", RetryPolicy(retry_after_max=5.0, retry_on_status={429, 503}))
    for status in (429, 503):
        assert not plan.retry_status(status, 5.001)
        assert not plan.retry_status(status, 120.0)
    assert not make_plan("GET", RetryPolicy(retry_after_max=0.0)).retry_status(503, 0.5)
    assert make_plan("GET", RetryPolicy(retry_after_max=0.0)).retry_status(503, None)


def ceiling(policy: RetryPolicy, retry_number: int) -> float:
    return min(policy.backoff_max, policy.backoff_base * 2 ** (retry_number - 1))


@pytest.mark.parametrize(
    "policy", [RetryPolicy(), RetryPolicy(backoff_base=0.1, backoff_max=3.0), RetryPolicy(backoff_base=1.0)]
)
def test_backoff_is_full_jitter_under_the_exponential_ceiling(policy: RetryPolicy) -> None:
    plan = make_plan("GET", policy, seed=7)
    means = []
    for retry_number in range(1, 9):
        top = ceiling(policy, retry_number)
        draws = [plan.wait(retry_number, None) for _ in range(2000)]
        assert all(0.0 <= d <= top for d in draws), (retry_number, top, min(draws), max(draws))
        # full jitter: the draws cover the whole range [0, ceiling], uniformly
        assert min(draws) < 0.02 * top
        assert max(draws) > 0.98 * top
        assert statistics.fmean(draws) == pytest.approx(top / 2, rel=0.05)
        assert len(set(draws)) > 1900
        means.append(statistics.fmean(draws))
    # the mean grows while the ceiling doubles, then stays at backoff_max / 2
    for n in range(1, 8):
        growth = ceiling(policy, n + 1) / ceiling(policy, n)
        if growth > 1:
            assert means[n] > means[n - 1]
            assert means[n] / means[n - 1] == pytest.approx(growth, rel=0.1)
        else:
            assert means[n] == pytest.approx(policy.backoff_max / 2, rel=0.05)
    assert means[-1] == pytest.approx(policy.backoff_max / 2, rel=0.05)


def test_default_backoff_ceilings_are_envoys() -> None:
    policy = RetryPolicy()
    assert [ceiling(policy, n) for n in range(1, 7)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])
    plan = make_plan("GET", seed=1)
    assert max(plan.wait(20, None) for _ in range(500)) <= 0.25


def test_backoff_comes_from_the_injected_generator() -> None:
    first = [make_plan("GET", seed=5).wait(3, None) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    a, b = make_plan("GET", seed=5), make_plan("GET", seed=5)
    assert [a.wait(n, None) for n in range(1, 6)] == [b.wait(n, None) for n in range(1, 6)]
    assert make_plan("GET", seed=6).wait(3, None) != first[0]


def test_zero_backoff_waits_nothing() -> None:
    plan = make_plan("GET", RetryPolicy(backoff_base=0.0, backoff_max=0.0))
    assert {plan.wait(n, None) for n in range(1, 10)} == {0.0}


# -- deadline and budget ----------------------------------------------------------------------------------------------


def test_remaining_follows_the_fake_clock() -> None:
    clock = FakeClock(100.0)
    plan = make_plan("GET", deadline=105.0, clock=clock)
    assert plan.remaining() == pytest.approx(5.0)
    clock.advance(3.0)
    assert plan.remaining() == pytest.approx(2.0)
    clock.advance(4.0)
    remaining = plan.remaining()
    assert remaining is not None
    assert remaining == pytest.approx(-2.0)
    assert make_plan("GET", deadline=None, clock=clock).remaining() is None


def test_may_continue_honours_the_deadline() -> None:
    clock = FakeClock(100.0)
    plan = make_plan("GET", deadline=105.0, clock=clock)
    assert plan.may_continue(0.0)
    assert plan.may_continue(4.9)
    assert not plan.may_continue(5.0)  # no time would be left for the attempt itself
    assert not plan.may_continue(60.0)
    clock.advance(4.0)
    assert plan.may_continue(0.5)
    assert not plan.may_continue(1.0)
    clock.advance(1.0)
    assert not plan.may_continue(0.0)
    clock.advance(10.0)
    assert not plan.may_continue(0.0)


def test_without_a_deadline_only_the_budget_limits() -> None:
    clock = FakeClock(100.0)
    plan = make_plan("GET", deadline=None, clock=clock)
    assert plan.may_continue(1e9)
    clock.advance(1e6)
    assert plan.may_continue(0.0)


def test_may_continue_withdraws_from_the_budget() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(0.0, 0.3, 10.0, clock=clock)  # a floor of 3 retries per window
    plans = [make_plan("GET", deadline=200.0, clock=clock, budget=budget) for _ in range(2)]
    assert plans[0].may_continue(0.0)
    assert plans[1].may_continue(0.0)
    assert available(budget) == 1
    assert plans[0].may_continue(0.0)
    assert not plans[0].may_continue(0.0)
    assert not plans[1].may_continue(0.0)  # the budget is shared


def test_a_refusal_for_time_takes_nothing_from_the_budget() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(0.0, 0.1, 10.0, clock=clock)  # exactly one retry
    plan = make_plan("GET", deadline=101.0, clock=clock, budget=budget)
    for _ in range(5):
        assert not plan.may_continue(2.0)
    assert available(budget) == 1
    assert plan.may_continue(0.5)
    assert not plan.may_continue(0.5)


# -- RetryBudget ------------------------------------------------------------------------------------------------------


def test_budget_ratio_allows_twenty_retries_per_hundred_requests() -> None:
    clock = FakeClock(50.0)
    budget = RetryBudget(0.2, 0.0, 10.0, clock=clock)
    assert not budget.try_withdraw()
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_withdraw() for _ in range(50))
    assert granted == 20
    assert not budget.try_withdraw()
    for _ in range(5):  # five more requests earn exactly one more retry
        budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_budget_grants_no_fraction_of_a_retry() -> None:
    """ "At most budget_ratio of the requests": 4 requests at 20% earn 0.8 of a retry, which is none."""
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 0.0, 10.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert available(budget) == 0
    budget.record_request()
    assert available(budget) == 1
    assert available(RetryBudget(0.0, 0.05, 10.0, clock=clock)) == 0  # a floor of half a retry
    assert available(RetryBudget(0.0, 0.25, 10.0, clock=clock)) == 2  # and of two and a half


def test_budget_ratio_spread_over_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 0.0, 10.0, clock=clock)
    for _ in range(10):  # 100 requests over 9.9 s, all inside one window
        for _ in range(10):
            budget.record_request()
        clock.advance(0.99)
    assert sum(budget.try_withdraw() for _ in range(50)) == 20


def test_budget_floor_allows_min_per_second_times_window_without_requests() -> None:
    clock = FakeClock(7.0)
    budget = RetryBudget(0.2, 10.0, 10.0, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(200)) == 100
    assert not budget.try_withdraw()
    small = RetryBudget(0.5, 2.0, 3.0, clock=FakeClock(0.0))
    assert available(small) == 6
    for _ in range(10):
        small.record_request()
    assert available(small) == 11  # 0.5 * 10 + 6


def test_budget_defaults_from_the_policy() -> None:
    policy = RetryPolicy()
    clock = FakeClock(0.0)
    budget = RetryBudget(policy.budget_ratio, policy.budget_min_retries, policy.budget_window, clock=clock)
    assert available(budget) == 100
    for _ in range(1000):
        budget.record_request()
    assert available(budget) == 300


def test_budget_old_buckets_expire_past_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(1.0, 0.0, 10.0, clock=clock)
    for _ in range(10):
        budget.record_request()  # bucket [0, 1)
    clock.advance(5.0)
    for _ in range(6):
        budget.record_request()  # bucket [5, 6)
    clock.advance(4.5)  # 9.5: both still inside the window
    assert available(budget) == 16
    clock.advance(1.0)  # 10.5: the first bucket has left the window
    assert available(budget) == 6
    clock.advance(5.0)  # 15.5: so has the second
    assert available(budget) == 0
    clock.advance(1000.0)
    assert available(budget) == 0


def test_budget_spent_retries_expire_too() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.0, 0.4, 10.0, clock=clock)  # floor of 4 per window
    assert sum(budget.try_withdraw() for _ in range(3)) == 3  # at 0.0
    clock.advance(6.0)
    assert budget.try_withdraw()  # at 6.0: the fourth
    assert not budget.try_withdraw()
    clock.advance(3.5)  # 9.5: all four still count
    assert not budget.try_withdraw()
    clock.advance(1.0)  # 10.5: the three at 0.0 are gone, the one at 6.0 stays
    assert available(budget) == 3
    clock.advance(6.0)  # 16.5: all gone
    assert available(budget) == 4


def test_budget_partial_expiry_within_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(1.0, 0.0, 10.0, clock=clock)
    for second in range(10):  # one request in each one-second bucket
        clock.now = second + 0.5
        budget.record_request()
    assert available(budget) == 10
    for step in range(1, 11):  # each second one more bucket falls out
        clock.now = 9.5 + step
        assert available(budget) == 10 - step


def test_budget_survives_a_long_idle_gap_and_clock_jumps() -> None:
    clock = FakeClock(3.0)
    budget = RetryBudget(0.5, 0.0, 1.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert available(budget) == 2
    clock.advance(123456.7)
    assert available(budget) == 0
    budget.record_request()
    budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


OPS = st.lists(
    st.one_of(
        st.just(("request", 0.0)),
        st.just(("retry", 0.0)),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=4.0, allow_nan=False)),
        st.tuples(st.just("burst"), st.integers(min_value=1, max_value=30).map(float)),
    ),
    max_size=120,
)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0, 1.5]),
    per_second=st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.0]),
    window=st.sampled_from([1.0, 2.5, 10.0]),
    start=st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
    ops=OPS,
)
def test_budget_never_grants_more_than_its_share_of_the_window(
    ratio: float, per_second: float, window: float, start: float, ops: list[tuple[str, float]]
) -> None:
    """Model: every request and granted retry is stamped with its bucket (width window / 10); at each
    withdrawal the window is the current bucket and the nine before it. A retry is granted exactly when,
    with it, the retries of that window stay within ratio * requests + min_per_second * window."""
    clock = FakeClock(start)
    budget = RetryBudget(ratio, per_second, window, clock=clock)
    width = window / 10
    requests: list[int] = []  # bucket numbers
    retries: list[int] = []
    allowance_floor = per_second * window
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
            continue
        bucket = int(clock() / width)
        if op == "request":
            budget.record_request()
            requests.append(bucket)
        elif op == "burst":
            for _ in range(int(arg)):
                budget.record_request()
                requests.append(bucket)
        else:
            in_window_requests = sum(1 for b in requests if b > bucket - 10)
            in_window_retries = sum(1 for b in retries if b > bucket - 10)
            allowance = ratio * in_window_requests + allowance_floor
            granted = budget.try_withdraw()
            if granted:
                retries.append(bucket)
                assert in_window_retries + 1 <= allowance + 1e-9, (
                    f"granted retry #{in_window_retries + 1} with {in_window_requests} requests in the window: "
                    f"more than ratio {ratio} * requests + floor {allowance_floor} = {allowance}"
                )
            else:
                assert in_window_retries + 1 > allowance - 1e-9, (
                    f"refused a retry with {in_window_retries} retries and {in_window_requests} requests "
                    f"in the window, allowance {allowance}"
                )
