"""SDKs on the balancer, against OpenAI-compatible stand-ins on 127.0.0.1 (``Backend`` answers
``POST /v1/chat/completions`` as JSON or server-sent events): the OpenAI SDK on ``LBClient`` and
``AsyncLBClient`` (asyncio and trio), and on httpx2 clients through ``lbclient.httpx2``'s transports.
Each pool has three hosts; one is killed mid-run, while calls are in flight, and no call fails. The
recipe is the one of docs/sdks.md: ``base_url="http://<service>/v1"``, ``max_retries=0`` and
``RetryPolicy(retry_non_idempotent=True)``, so that the balancer alone resends, to another host."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx2
import pytest

from lbclient import AsyncLBClient, LBClient, RetryPolicy
from lbclient.testing import Backend

openai = pytest.importorskip("openai")

MakeBackends = Callable[..., list[Backend]]

#: On trio, async generators that are left before their end are reported when collected: the SDK stops
#: reading a stream at ``data: [DONE]`` (its generators, httpx's and httpcore's are left), and httpcore
#: leaves a request body's when a host dies as it is written. Plain ``httpx.AsyncClient`` does the same;
#: nothing stays open (the responses are closed).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

#: Attempts in all, and POSTs resent after they may have reached a host, as the SDK's own retries do.
RESEND = RetryPolicy(max_attempts=3, retry_non_idempotent=True)
MESSAGES = [{"role": "user", "content": "say hello"}]
CALLS = 60
KILL_AFTER = 20


def answered_by(content: str) -> str:
    """The stand-in that answered: it starts its answer with its name."""
    return content.split(":", 1)[0]


def kill_when(backends: list[Backend], victim: Backend, after: int) -> threading.Thread:
    """Kill ``victim`` once ``after`` completions have arrived in all, from another thread (so calls
    are in flight when it dies)."""

    def watch() -> None:
        while sum(b.count("POST") for b in backends) < after:
            threading.Event().wait(0.002)
        victim.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def sync_openai(http_client: Any) -> Any:
    return openai.OpenAI(base_url="http://openai/v1", api_key="test", http_client=http_client, max_retries=0)


def async_openai(http_client: Any) -> Any:
    return openai.AsyncOpenAI(base_url="http://openai/v1", api_key="test", http_client=http_client, max_retries=0)


def run_sync_calls(client: Any, backends: list[Backend]) -> list[str]:
    """CALLS completions from 4 threads while a host is killed; every call must succeed."""
    killer = kill_when(backends, backends[1], KILL_AFTER)

    def call(_: int) -> str:
        completion = client.chat.completions.create(model="stand-in", messages=MESSAGES)
        return answered_by(completion.choices[0].message.content)

    with ThreadPoolExecutor(4) as threads:
        answers = list(threads.map(call, range(CALLS)))
    killer.join(timeout=10)
    return answers


async def run_async_calls(client: Any, backends: list[Backend]) -> list[str]:
    answers: list[str] = []
    killer = kill_when(backends, backends[1], KILL_AFTER)
    limiter = anyio.Semaphore(4)

    async def call() -> None:
        async with limiter:
            completion = await client.chat.completions.create(model="stand-in", messages=MESSAGES)
            answers.append(answered_by(completion.choices[0].message.content))

    async with anyio.create_task_group() as group:
        for _ in range(CALLS):
            group.start_soon(call)
    await anyio.to_thread.run_sync(killer.join, 10)
    return answers


def check_spread(answers: list[str], backends: list[Backend]) -> None:
    a, b, c = backends
    assert len(answers) == CALLS  # not one failed call
    assert not b.running
    assert set(answers) <= {"a", "b", "c"}
    assert answers.count("a") >= 15
    assert answers.count("c") >= 15
    # b answered only what it finished before it died; what it lost was resent to a or c.
    assert answers.count("b") <= b.count("POST") < CALLS // 2
    assert a.count("POST") + b.count("POST") + c.count("POST") >= CALLS


def test_openai_on_lbclient_survives_a_killed_host(make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    with LBClient([b.url for b in backends], service="openai", retries=RESEND) as http:
        client = sync_openai(http)
        check_spread(run_sync_calls(client, backends), backends)
        stream = client.chat.completions.create(model="stand-in", messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert answered_by(text) in {"a", "c"}
        assert text.endswith(": say hello")
        assert [h.outstanding for h in http.pool.hosts] == [0, 0, 0]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_async_openai_on_async_lbclient_survives_a_killed_host(
    anyio_backend: str, make_backends: MakeBackends
) -> None:
    backends = make_backends(3)
    async with AsyncLBClient([b.url for b in backends], service="openai", retries=RESEND) as http:
        client = async_openai(http)
        check_spread(await run_async_calls(client, backends), backends)
        assert [h.outstanding for h in http.pool.hosts] == [0, 0, 0]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_async_openai_streams_through_the_pool(anyio_backend: str, make_backends: MakeBackends) -> None:
    backends = make_backends(3)
    for backend in backends:
        backend.delay_per_chunk = 0.01  # events really arrive one by one
    async with AsyncLBClient([b.url for b in backends], service="openai", retries=RESEND) as http:
        client = async_openai(http)
        texts = []
        for _ in range(3):
            async with await client.chat.completions.create(model="stand-in", messages=MESSAGES, stream=True) as stream:
                pieces = [chunk.choices[0].delta.content async for chunk in stream]
            assert len(pieces) >= 4  # the role, three words, the stop
            texts.append("".join(piece or "" for piece in pieces))
        assert sorted(answered_by(text) for text in texts) == ["a", "b", "c"]
        backends[0].kill()
        async with await client.chat.completions.create(model="stand-in", messages=MESSAGES, stream=True) as stream:
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert answered_by(text) in {"b", "c"}
        assert [h.outstanding for h in http.pool.hosts] == [0, 0, 0]


def test_retries_are_the_balancers_alone_with_max_retries_0(make_backends: MakeBackends) -> None:
    """A full outage: 3 attempts in all (one per host), not the SDK's 3 times the balancer's 3."""
    backends = make_backends(3)
    for backend in backends:
        backend.status = 503
    with (
        LBClient([b.url for b in backends], service="openai", retries=RESEND) as http,
        pytest.raises(openai.InternalServerError),
    ):
        sync_openai(http).chat.completions.create(model="stand-in", messages=MESSAGES)
    assert [b.count("POST") for b in backends] == [1, 1, 1]


def test_openai_on_httpx2_through_lbclient_httpx2_transports(make_backends: MakeBackends) -> None:
    from lbclient.httpx2 import LoadBalancingTransport

    backends = make_backends(3)
    pool = LoadBalancingTransport([b.url for b in backends], service="openai", retries=RESEND)
    with httpx2.Client(mounts={"all://openai": pool}) as http:
        client = sync_openai(http)
        check_spread(run_sync_calls(client, backends), backends)
        raw = client.chat.completions.with_raw_response.create(model="stand-in", messages=MESSAGES)
        assert raw.http_response.extensions["lb_host"] in {backends[0].url, backends[2].url}
        stream = client.chat.completions.create(model="stand-in", messages=MESSAGES, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream).endswith(": say hello")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_async_openai_on_httpx2_through_lbclient_httpx2_transports(
    anyio_backend: str, make_backends: MakeBackends
) -> None:
    from lbclient.httpx2 import AsyncLoadBalancingTransport

    backends = make_backends(3)
    pool = AsyncLoadBalancingTransport([b.url for b in backends], service="openai", retries=RESEND)
    async with httpx2.AsyncClient(mounts={"all://openai": pool}) as http:
        client = async_openai(http)
        check_spread(await run_async_calls(client, backends), backends)


def test_an_event_hook_marks_the_sdks_posts_safe_to_resend(make_backends: MakeBackends) -> None:
    """docs/sdks.md's hook: with the default policy, only the marked completions are resent after a reset."""
    a, b = make_backends(2)
    a.drop = True  # every request that reaches a is reset before any answer

    def resend_completions(request: Any) -> None:
        if request.url.path.endswith("/chat/completions"):
            request.extensions["lb_idempotent"] = True

    with LBClient([a.url], service="openai", event_hooks={"request": [resend_completions]}) as http:
        http.pool.update([a.url, b.url])  # round robin: a first, then b
        completion = sync_openai(http).chat.completions.create(model="stand-in", messages=MESSAGES)
    assert answered_by(completion.choices[0].message.content) == "b"
    assert (a.count("POST"), b.count("POST")) == (1, 1)
