"""Fault injection against real servers on 127.0.0.1 that really fail: retries on another host, what is
never sent twice, timeouts, outlier ejection, the retry budget and panic. The servers' own counters prove
what arrived. Each test body runs sync, on asyncio and on trio (the ``flavor`` fixture).

Every wait is a condition with a deadline (``eventually``); timings are generous so that a loaded
machine does not make them flake.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

from lbclient import STRATEGIES, OutlierDetection, RetryPolicy
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

MakeBackends = Callable[..., list[Backend]]

#: Ejection after 3 failures in a row, for 0.3 s, then 0.6 s, capped at 1 s.
FAST_EJECTION = OutlierDetection(consecutive_failures=3, base_ejection_time=0.3, max_ejection_time=1.0)
#: Ejection that lasts for the whole test.
LONG_EJECTION = OutlierDetection(consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=60.0)


def urls(backends: list[Backend]) -> list[str]:
    return [b.url for b in backends]


def arrivals(backends: list[Backend], method: str | None = None, path: str | None = None) -> list[int]:
    return [b.count(method, path) for b in backends]


def sync_body() -> Iterator[bytes]:
    yield b"a"
    yield b"b"


async def async_body() -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


def generator_body(flavor: Flavor) -> Any:
    """A body that cannot be replayed: a generator (an async one for the async client)."""
    return async_body() if flavor.is_async else sync_body()


@contextlib.asynccontextmanager
async def starting_at(flavor: Flavor, hosts: list[str], **kwargs: Any) -> AsyncIterator[Any]:
    """A round-robin client whose first pick is ``hosts[0]``, for a test whose first attempt must meet a
    given fault (round robin starts each client at a random host): its rotation starts at its only host
    and keeps its place when the others join."""
    async with flavor.client(hosts[:1], **kwargs) as client:
        client.pool.update(hosts)
        yield client


def assert_idle(client: Any) -> None:
    """Every lease ended: responses that were not returned have been closed."""
    assert [h.outstanding for h in client.pool.hosts] == [0] * len(client.pool.hosts)


def log_lines(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """Messages of the ``lbclient`` logger that contain every one of ``words``."""
    return [
        r.getMessage() for r in caplog.records if r.name == "lbclient" and all(word in r.getMessage() for word in words)
    ]


# -- a killed backend ------------------------------------------------------------------------------------


async def test_killed_backend_gets_are_retried_elsewhere_and_the_host_ejected(
    flavor: Flavor, backends: list[Backend]
) -> None:
    a, b, c = backends
    async with flavor.client(urls(backends)) as client:
        for _ in range(6):
            assert (await flavor.get(client, "/before")).status_code == 200
        b.kill()
        responses = [await flavor.get(client, "/after") for _ in range(30)]
        assert [r.status_code for r in responses] == [200] * 30
        assert b.url not in {r.extensions["lb_host"] for r in responses}
        assert any(r.extensions["lb_attempts"] == 2 for r in responses)
        host_b = client.pool.hosts[1]
        assert host_b.ejected
        # Default ejection after 5 failures in a row; not one attempt on the dead host after that.
        assert host_b.failures == 5
        assert host_b.requests == 2 + 5
        assert_idle(client)
    assert a.count("GET", "/after") + c.count("GET", "/after") == 30
    assert b.count("GET", "/before") == 2


async def test_backend_killed_mid_run_under_concurrency(flavor: Flavor, make_backends: MakeBackends) -> None:
    backends = make_backends(3, delay=0.005)
    a, b, c = backends
    workers, per_worker, kill_after = 8, 25, 40
    statuses: list[int] = []
    lock = threading.Lock()

    def done(status: int) -> None:
        with lock:
            statuses.append(status)
            if len(statuses) == kill_after:
                b.kill()  # requests to b are in flight now: they are reset mid-request

    async with flavor.client(urls(backends)) as client:
        if flavor.is_async:

            async def work() -> None:
                for _ in range(per_worker):
                    done((await client.get("/load")).status_code)

            async with anyio.create_task_group() as group:
                for _ in range(workers):
                    group.start_soon(work)
        else:

            def sync_work(_: int) -> None:
                for _ in range(per_worker):
                    done(client.get("/load").status_code)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(sync_work, range(workers)))
        assert client.pool.hosts[1].ejected
        assert_idle(client)
    assert statuses == [200] * (workers * per_worker)
    assert a.count("GET", "/load") + c.count("GET", "/load") >= workers * per_worker - kill_after


# -- every retry on a host not tried yet -------------------------------------------------------------------


async def test_each_retry_goes_to_a_host_not_tried_yet(flavor: Flavor, backends: list[Backend]) -> None:
    for backend in backends:
        backend.status = 503
    for name in STRATEGIES:
        path = f"/once/{name}"
        policy = RetryPolicy(backoff_base=0.0)
        async with flavor.client(urls(backends), strategy=name, retries=policy, outlier_detection=None) as client:
            response = await flavor.get(client, path, extensions={"lb_key": "same-key"})
            assert response.status_code == 503
            assert response.extensions["lb_attempts"] == 3
            assert_idle(client)
        assert arrivals(backends, "GET", path) == [1, 1, 1], name


async def test_more_attempts_than_hosts_try_every_host_first(flavor: Flavor, backends: list[Backend]) -> None:
    for backend in backends:
        backend.status = 503
    async with flavor.client(urls(backends), strategy="consistent_hash", retries=5, outlier_detection=None) as client:
        response = await flavor.get(client, "/five")
    assert response.extensions["lb_attempts"] == 5
    counts = arrivals(backends, "GET", "/five")
    assert sum(counts) == 5
    assert min(counts) >= 1, counts


async def test_mixed_faults_one_request_lands_once_per_host(flavor: Flavor, backends: list[Backend]) -> None:
    dead, dropping, good = backends
    dead.kill()
    dropping.drop = True
    async with starting_at(flavor, urls(backends), outlier_detection=None) as client:
        response = await flavor.get(client, "/mixed")  # the dead host first, then the dropping one
        assert response.status_code == 200
        assert response.extensions["lb_host"] == good.url
        assert response.extensions["lb_attempts"] == 3
        assert_idle(client)
    assert [dropping.count("GET", "/mixed"), good.count("GET", "/mixed")] == [1, 1]


async def test_get_reset_mid_response_is_retried_on_another_host(flavor: Flavor, make_backends: MakeBackends) -> None:
    """CONTRACT 4: a reset during the response is retried for idempotent methods. Here the status line
    and headers arrive, then the connection is reset in the middle of the body."""
    resetting, good = make_backends(2)
    resetting.reset = True
    async with starting_at(flavor, [resetting.url, good.url], outlier_detection=None) as client:
        response = await flavor.get(client, "/mid")  # the resetting host first
        assert response.status_code == 200
        assert response.extensions["lb_host"] == good.url
        assert response.extensions["lb_attempts"] == 2
        assert_idle(client)
    assert [resetting.count("GET", "/mid"), good.count("GET", "/mid")] == [1, 1]


# -- what is never sent twice --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "drop", "503", "read_timeout"])
async def test_post_is_never_sent_twice_after_it_may_have_arrived(
    flavor: Flavor, backends: list[Backend], fault: str
) -> None:
    for backend in backends:
        backend.reset = fault == "reset"
        backend.drop = fault == "drop"
        backend.status = 503 if fault == "503" else 200
        backend.hang = fault == "read_timeout"
    async with flavor.client(urls(backends), timeout=httpx.Timeout(10.0, read=0.3)) as client:
        if fault == "503":
            response = await flavor.request(client, "POST", "/orders", json={"n": 1})
            assert response.status_code == 503
            assert response.extensions["lb_attempts"] == 1
        else:
            with pytest.raises(httpx.TransportError) as caught:
                await flavor.request(client, "POST", "/orders", json={"n": 1})
            expected = httpx.ReadTimeout if fault == "read_timeout" else (httpx.ReadError, httpx.RemoteProtocolError)
            assert isinstance(caught.value, expected)
        assert_idle(client)
    assert sum(arrivals(backends, "POST", "/orders")) == 1


async def test_post_is_retried_after_connection_refused(flavor: Flavor, backends: list[Backend]) -> None:
    dead1, dead2, live = backends
    dead1.kill()
    dead2.kill()
    async with flavor.client(urls(backends), outlier_detection=None) as client:
        responses = [await flavor.request(client, "POST", "/orders", json={"n": n}) for n in range(3)]
        assert_idle(client)
    assert [r.status_code for r in responses] == [200] * 3
    assert [r.json()["body"] for r in responses] == ['{"n":0}', '{"n":1}', '{"n":2}']
    # Round robin starts anywhere and moves one turn per attempt: the first POST needed 3, 2 or 1 attempts
    # (from the first dead host, the second, or the live one); each later one starts at the first dead host.
    assert [r.extensions["lb_attempts"] for r in responses][1:] == [3, 3]
    assert live.count("POST", "/orders") == 3


async def test_post_with_idempotency_key_is_retried_after_503(flavor: Flavor, backends: list[Backend]) -> None:
    for backend in backends:
        backend.status = 503
    async with flavor.client(urls(backends)) as client:
        response = await flavor.request(client, "POST", "/pay", content=b"x", headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 503
    assert response.extensions["lb_attempts"] == 3
    assert arrivals(backends, "POST", "/pay") == [1, 1, 1]
    assert response.json()["headers"]["Idempotency-Key"] == "k-1"
    assert response.json()["body"] == "x"


@pytest.mark.parametrize("fault", ["drop", "503"])
async def test_retry_non_idempotent_retries_a_post(flavor: Flavor, backends: list[Backend], fault: str) -> None:
    for backend in backends:
        backend.drop = fault == "drop"
        backend.status = 503 if fault == "503" else 200
    async with flavor.client(urls(backends), retries=RetryPolicy(retry_non_idempotent=True)) as client:
        if fault == "503":
            response = await flavor.request(client, "POST", "/orders", content=b"x")
            assert response.extensions["lb_attempts"] == 3
        else:
            with pytest.raises(httpx.TransportError):
                await flavor.request(client, "POST", "/orders", content=b"x")
        assert_idle(client)
    assert arrivals(backends, "POST", "/orders") == [1, 1, 1]


@pytest.mark.parametrize("fault", ["reset", "drop", "503"])
async def test_generator_body_is_never_sent_again(flavor: Flavor, backends: list[Backend], fault: str) -> None:
    for backend in backends:
        backend.reset = fault == "reset"
        backend.drop = fault == "drop"
        backend.status = 503 if fault == "503" else 200
    # PUT is idempotent and the policy would even resend a POST: only the body forbids the retry.
    policy = RetryPolicy(retry_non_idempotent=True)
    async with flavor.client(urls(backends), retries=policy) as client:
        if fault == "503":
            response = await flavor.request(client, "PUT", "/upload", content=generator_body(flavor))
            assert response.status_code == 503
            assert response.extensions["lb_attempts"] == 1
            assert response.json()["body"] == "ab"
        else:
            with pytest.raises(httpx.TransportError):
                await flavor.request(client, "PUT", "/upload", content=generator_body(flavor))
        assert_idle(client)
    assert sum(arrivals(backends, "PUT", "/upload")) == 1


async def test_generator_body_is_sent_after_a_connect_failure(flavor: Flavor, make_backends: MakeBackends) -> None:
    dead, live = make_backends(2)
    dead.kill()
    async with starting_at(flavor, [dead.url, live.url]) as client:
        response = await flavor.request(client, "PUT", "/upload", content=generator_body(flavor))
    # It never reached the dead host, so the untouched generator goes to the next one, whole.
    assert response.status_code == 200
    assert response.extensions["lb_attempts"] == 2
    assert response.json()["body"] == "ab"
    assert live.count("PUT", "/upload") == 1


# -- statuses and Retry-After ----------------------------------------------------------------------------------


async def test_default_retryable_statuses(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client(urls(backends), outlier_detection=None) as client:
        for status, attempts in [(502, 3), (503, 3), (504, 3), (500, 1), (429, 1), (404, 1)]:
            path = f"/s{status}"
            for backend in backends:
                backend.status = status
            response = await flavor.get(client, path)
            assert_idle(client)
            assert response.status_code == status
            assert response.extensions["lb_attempts"] == attempts, status
            assert sum(arrivals(backends, "GET", path)) == attempts, status


async def test_retry_on_status_override(flavor: Flavor, backends: list[Backend]) -> None:
    policy = RetryPolicy(retry_on_status={500})
    async with flavor.client(urls(backends), retries=policy, outlier_detection=None) as client:
        for status, attempts in [(500, 3), (503, 1)]:
            path = f"/s{status}"
            for backend in backends:
                backend.status = status
            response = await flavor.get(client, path)
            assert response.status_code == status
            assert response.extensions["lb_attempts"] == attempts, status
            assert sum(arrivals(backends, "GET", path)) == attempts, status


async def test_retry_after_is_waited_out(flavor: Flavor, make_backends: MakeBackends) -> None:
    (a,) = make_backends(1)
    a.fail_next(1, 503, retry_after=1)
    async with flavor.client([a.url]) as client:
        started = time.monotonic()
        response = await flavor.get(client, "/later")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.extensions["lb_attempts"] == 2
    assert a.count("GET", "/later") == 2
    assert 0.9 <= elapsed < 5.0, elapsed


async def test_retry_after_zero_on_429_when_429_is_retryable(flavor: Flavor, make_backends: MakeBackends) -> None:
    (a,) = make_backends(1)
    a.fail_next(1, 429, retry_after=0)
    async with flavor.client([a.url], retries=RetryPolicy(retry_on_status={429})) as client:
        response = await flavor.get(client, "/limited")
    assert response.status_code == 200
    assert response.extensions["lb_attempts"] == 2
    assert a.count("GET", "/limited") == 2


@pytest.mark.parametrize(("retry_after", "retry_after_max"), [(2, 0.5), (30, None)])
async def test_too_long_retry_after_returns_the_503(
    flavor: Flavor, backends: list[Backend], retry_after: int, retry_after_max: float | None
) -> None:
    for backend in backends:
        backend.status = 503
        backend.retry_after = str(retry_after)
    policy = RetryPolicy() if retry_after_max is None else RetryPolicy(retry_after_max=retry_after_max)
    async with flavor.client(urls(backends), retries=policy) as client:
        started = time.monotonic()
        response = await flavor.get(client, "/later")
        elapsed = time.monotonic() - started
        assert_idle(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(retry_after)
    assert response.extensions["lb_attempts"] == 1
    assert sum(arrivals(backends, "GET", "/later")) == 1
    assert elapsed < 1.5, elapsed


# -- retries run out ----------------------------------------------------------------------------------------------


async def test_exhausted_retries_return_the_last_response_and_close_the_others(
    flavor: Flavor, backends: list[Backend]
) -> None:
    for backend in backends:
        backend.status = 503
    async with flavor.client(urls(backends)) as client:
        request = client.build_request("GET", "/exhaust")
        if flavor.is_async:
            response = await client.send(request, stream=True)
        else:
            response = client.send(request, stream=True)
        assert response.status_code == 503
        assert response.extensions["lb_attempts"] == 3
        # Only the returned response, still unread, holds its host; the two before it were closed.
        by_url = {h.url: h.outstanding for h in client.pool.hosts}
        assert by_url == {b.url: int(b.url == response.extensions["lb_host"]) for b in backends}
        if flavor.is_async:
            await response.aread()
            await response.aclose()
        else:
            response.read()
            response.close()
        assert response.json()["id"] == next(b.name for b in backends if b.url == response.extensions["lb_host"])
        assert_idle(client)
        # Read in full by httpx (no stream): nothing stays in flight either.
        plain = await flavor.get(client, "/exhaust")
        assert plain.extensions["lb_attempts"] == 3
        assert_idle(client)
    assert arrivals(backends, "GET", "/exhaust") == [2, 2, 2]


async def test_only_connect_failures_raise_the_last_error_naming_every_host(
    flavor: Flavor, backends: list[Backend]
) -> None:
    for backend in backends:
        backend.kill()
    async with flavor.client(urls(backends)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await flavor.get(client, "/nowhere")
        assert_idle(client)
        assert [h.failures for h in client.pool.hosts] == [1, 1, 1]
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "3 attempts" in notes, notes
    for backend in backends:
        assert backend.url in notes, notes


# -- hanging hosts and timeouts ---------------------------------------------------------------------------------


async def test_read_timeout_on_get_is_retried_on_another_host(flavor: Flavor, make_backends: MakeBackends) -> None:
    hung, live = make_backends(2)
    hung.hang = True
    async with starting_at(flavor, [hung.url, live.url], timeout=httpx.Timeout(10.0, read=0.5)) as client:
        started = time.monotonic()
        response = await flavor.get(client, "/slow")
        elapsed = time.monotonic() - started
        assert_idle(client)
    assert response.status_code == 200
    assert response.extensions["lb_host"] == live.url
    assert response.extensions["lb_attempts"] == 2
    assert (hung.count("GET", "/slow"), live.count("GET", "/slow")) == (1, 1)
    assert 0.45 <= elapsed < 0.5 + 3.0, elapsed


async def test_client_timeout_bounds_the_whole_request_with_retries(flavor: Flavor, backends: list[Backend]) -> None:
    for backend in backends:
        backend.hang = True
    # Without an overall deadline 20 attempts of 0.35 s would take 7 s.
    timeout = httpx.Timeout(0.9, read=0.35)
    async with flavor.client(urls(backends), timeout=timeout, retries=RetryPolicy(max_attempts=20)) as client:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            await flavor.get(client, "/slow")
        elapsed = time.monotonic() - started
        assert_idle(client)
    assert 0.3 <= elapsed < 0.9 + 2.0, elapsed
    assert 2 <= sum(arrivals(backends, "GET", "/slow")) <= 5


async def test_per_try_timeout_fails_over_well_within_the_overall_timeout(
    flavor: Flavor, make_backends: MakeBackends
) -> None:
    hung, live = make_backends(2)
    hung.hang = True
    policy = RetryPolicy(per_try_timeout=0.3)
    async with starting_at(flavor, [hung.url, live.url], timeout=10.0, retries=policy) as client:
        started = time.monotonic()
        response = await flavor.get(client, "/slow")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.extensions["lb_host"] == live.url
    assert (hung.count("GET", "/slow"), live.count("GET", "/slow")) == (1, 1)
    assert 0.25 <= elapsed < 3.0, elapsed


# -- outlier detection ------------------------------------------------------------------------------------------


async def _until_ejected(flavor: Flavor, client: Any, index: int, path: str, most: int = 30) -> float:
    """Send requests until host ``index`` is ejected; returns the time it was seen ejected."""
    host = client.pool.hosts[index]
    for _ in range(most):
        await flavor.get(client, path)
        if host.ejected:
            return time.monotonic()
    raise AssertionError(f"{host!r} was not ejected after {most} requests")


async def _requests_while_ejected(flavor: Flavor, client: Any, index: int, path: str) -> list[tuple[str, bool]]:
    """Send requests while host ``index`` stays ejected: (the host that answered, still ejected after the
    answer) for each. Still ejected after the answer means it was ejected when the request picked."""
    host = client.pool.hosts[index]
    answers = []
    for _ in range(8):
        response = await flavor.get(client, path)
        answers.append((response.extensions["lb_host"], host.ejected))
        if not host.ejected:
            break
    return answers


async def _until_it_gets_traffic(flavor: Flavor, client: Any, backend: Backend, path: str) -> float:
    """Send requests (about every 10 ms) until one reaches ``backend``; returns when it did."""
    before = backend.count("GET", path)

    async def reached() -> bool:
        await flavor.get(client, path)
        return backend.count("GET", path) > before

    await eventually(reached, timeout=10.0, what=f"traffic to {backend!r}")
    return time.monotonic()


async def test_consecutive_failures_eject_and_the_host_returns_by_itself(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    a = backends[0]
    a.status = 503
    async with flavor.client(urls(backends), retries=1, outlier_detection=FAST_EJECTION) as client:
        host_a = client.pool.hosts[0]
        ejected_at = await _until_ejected(flavor, client, 0, "/w")
        assert a.count("GET", "/w") == 3  # exactly the three failures in a row
        assert host_a.ejections == 1
        before = a.count()
        answers = await _requests_while_ejected(flavor, client, 0, "/w")
        during = [url for url, still_ejected in answers if still_ejected]
        assert during, "no request fitted in the 0.3 s ejection"
        assert a.url not in during
        # The server agrees: nothing arrived while it was ejected.
        assert a.count() == before + sum(url == a.url for url, _ in answers)
        a.status = 200
        returned_at = await _until_it_gets_traffic(flavor, client, a, "/w")
        assert returned_at - ejected_at >= 0.25
        assert not host_a.ejected

        # A second ejection right after the return lasts longer (base time x 2).
        a.status = 503
        ejected_again_at = await _until_ejected(flavor, client, 0, "/w")
        assert host_a.ejections == 2
        a.status = 200
        returned_again_at = await _until_it_gets_traffic(flavor, client, a, "/w")
        assert returned_again_at - ejected_again_at >= 0.5
        assert_idle(client)

    ejected = log_lines(caplog, "ejected", a.url)
    assert len(ejected) == 2, ejected
    assert "3 consecutive gateway failures" in ejected[0]
    durations = [float(m.group(1)) for line in ejected if (m := re.search(r"ejected for ([\d.]+)s", line))]
    assert len(durations) == 2
    assert durations[1] > durations[0]
    returned = log_lines(caplog, "returned", a.url)
    assert len(returned) == 2, returned
    assert all("ejection time over" in line for line in returned)
    assert all(r.levelno == logging.WARNING for r in caplog.records if "ejected" in r.getMessage())


@pytest.mark.parametrize(("percent", "most"), [(50.0, 2), (25.0, 1)])
async def test_max_ejection_percent_caps_ejections(
    flavor: Flavor, make_backends: MakeBackends, percent: float, most: int
) -> None:
    backends = make_backends(4, status=503)
    detection = OutlierDetection(
        consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=60.0, max_ejection_percent=percent
    )
    async with flavor.client(urls(backends), retries=1, outlier_detection=detection) as client:
        states = client.pool.hosts
        for _ in range(24):
            await flavor.get(client, "/down")
            assert sum(h.ejected for h in states) <= most
        assert sum(h.ejected for h in states) == most
        assert not client.pool.panic
        # The ejected hosts get nothing more; the others take every request although they fail.
        before = arrivals(backends)
        for _ in range(8):
            await flavor.get(client, "/down")
        after = arrivals(backends)
        for state, old, new in zip(states, before, after, strict=True):
            assert (new == old) if state.ejected else (new > old), (state, old, new)


async def test_a_pool_of_two_can_eject_one(flavor: Flavor, make_backends: MakeBackends) -> None:
    a, b = make_backends(2)
    a.status = 503
    detection = OutlierDetection(
        consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=60.0, max_ejection_percent=10.0
    )
    async with flavor.client([a.url, b.url], retries=1, outlier_detection=detection) as client:
        host_a, host_b = client.pool.hosts
        await _until_ejected(flavor, client, 0, "/p")
        assert a.count("GET", "/p") == 3
        ids = [(await flavor.get(client, "/p")).json()["id"] for _ in range(6)]
        assert ids == ["b"] * 6
        assert a.count("GET", "/p") == 3
        # The other host fails too, but the one ejection that a pool of two allows is taken.
        b.status = 503
        for _ in range(6):
            assert (await flavor.get(client, "/p")).status_code == 503
        assert (host_a.ejected, host_b.ejected) == (True, False)
        assert a.count("GET", "/p") == 3


@pytest.mark.parametrize("off", [None, False])
async def test_outlier_detection_off(flavor: Flavor, backends: list[Backend], off: bool | None) -> None:
    a = backends[0]
    a.status = 503
    async with flavor.client(urls(backends), retries=1, outlier_detection=off) as client:
        for _ in range(30):
            await flavor.get(client, "/x")
        assert not any(h.ejected for h in client.pool.hosts)
        assert client.pool.hosts[0].failures == 10
    assert arrivals(backends, "GET", "/x") == [10, 10, 10]


# -- retry budget ---------------------------------------------------------------------------------------------


async def test_retry_budget_caps_attempts_during_a_total_outage(flavor: Flavor, backends: list[Backend]) -> None:
    for backend in backends:
        backend.status = 503
    requests, ratio, floor_per_second, window = 300, 0.2, 1.0, 10.0
    policy = RetryPolicy(
        max_attempts=5,
        budget_ratio=ratio,
        budget_min_retries=floor_per_second,
        budget_window=window,
        backoff_base=0.0,
    )
    attempts = 0
    async with flavor.client(urls(backends), retries=policy) as client:
        for _ in range(requests):
            response = await flavor.get(client, "/outage")
            assert response.status_code == 503
            attempts += response.extensions["lb_attempts"]
        assert_idle(client)
    arrived = sum(arrivals(backends, "GET", "/outage"))
    assert arrived == attempts
    # Without the budget: 5 attempts each, 1,500 in all.
    assert requests < arrived <= requests * (1 + ratio) + floor_per_second * window, arrived


# -- panic ----------------------------------------------------------------------------------------------------


async def test_panic_when_every_host_is_ejected_spreads_over_all(
    flavor: Flavor, backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbclient")
    for backend in backends:
        backend.status = 503
    detection = OutlierDetection(
        consecutive_failures=2, base_ejection_time=30.0, max_ejection_time=60.0, max_ejection_percent=100.0
    )
    async with flavor.client(urls(backends), retries=1, outlier_detection=detection) as client:
        states = client.pool.hosts

        async def all_ejected() -> bool:
            await flavor.get(client, "/down")
            return all(h.ejected for h in states)

        await eventually(all_ejected, timeout=10.0, what="every host ejected")
        assert client.pool.panic
        for backend in backends:
            backend.status = 200
            backend.reset_counts()
        responses = [await flavor.get(client, "/panic") for _ in range(12)]
        assert [r.status_code for r in responses] == [200] * 12
    assert all(n > 0 for n in arrivals(backends, "GET", "/panic")), arrivals(backends)
    panic = [r for r in caplog.records if r.name == "lbclient" and ": panic " in r.getMessage()]
    assert panic, caplog.text
    assert panic[0].levelno == logging.WARNING
    assert "hosts available" in panic[0].getMessage()
