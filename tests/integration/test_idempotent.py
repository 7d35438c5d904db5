"""``extensions={"lb_idempotent": ...}``: a request's own word on whether it is safe to resend, against real
servers that really fail. The servers count what arrived, so each test proves how often a request was
sent. Each body runs sync, on asyncio and on trio (the ``flavor`` fixture)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from lbclient import AsyncLBClient, Hedge, OutlierDetection
from lbclient.testing import Backend

from conftest import Flavor

pytestmark = pytest.mark.anyio

MakeBackends = Callable[..., list[Backend]]


@contextlib.asynccontextmanager
async def a_then_b(flavor: Flavor, backends: list[Backend], **kwargs: Any) -> AsyncIterator[Any]:
    """A round-robin client whose first pick is ``backends[0]`` (the faulty one), then ``backends[1]``."""
    kwargs.setdefault("outlier_detection", OutlierDetection(consecutive_failures=100))
    async with flavor.client([backends[0].url], **kwargs) as client:
        client.pool.update([b.url for b in backends])
        yield client


def fault(backend: Backend, name: str) -> None:
    """Make ``backend`` fail after the request arrived: ``drop`` (reset before any answer), ``reset``
    (headers, part of the body, then a reset) or ``503``."""
    if name == "503":
        backend.fail_next(1, 503)
    else:
        setattr(backend, name, True)


@pytest.mark.parametrize("kind", ["drop", "reset", "503"])
async def test_post_marked_idempotent_is_resent_after_it_reached_a_server(
    flavor: Flavor, make_backends: MakeBackends, kind: str
) -> None:
    a, b = make_backends(2)
    fault(a, kind)
    async with a_then_b(flavor, [a, b]) as client:
        response = await flavor.request(
            client, "POST", "/v2/kv/range", json={"key": "Zm9v"}, extensions={"lb_idempotent": True}
        )
    assert response.status_code == 200
    assert response.json()["id"] == "b"
    assert response.extensions["lb_attempts"] == 2
    assert (a.count("POST"), b.count("POST")) == (1, 1)


@pytest.mark.parametrize("kind", ["drop", "503"])
async def test_post_without_the_mark_is_still_sent_once(flavor: Flavor, make_backends: MakeBackends, kind: str) -> None:
    a, b = make_backends(2)
    fault(a, kind)
    async with a_then_b(flavor, [a, b]) as client:
        if kind == "503":
            response = await flavor.request(client, "POST", "/x")
            assert response.status_code == 503
        else:
            with pytest.raises(httpx.TransportError):
                await flavor.request(client, "POST", "/x")
    assert (a.count("POST"), b.count("POST")) == (1, 0)


@pytest.mark.parametrize("kind", ["drop", "reset", "503"])
async def test_get_marked_not_idempotent_is_never_resent_once_it_may_have_arrived(
    flavor: Flavor, make_backends: MakeBackends, kind: str
) -> None:
    a, b = make_backends(2)
    fault(a, kind)
    async with a_then_b(flavor, [a, b]) as client:
        if kind == "503":
            response = await flavor.get(client, "/x", extensions={"lb_idempotent": False})
            assert response.status_code == 503
            assert response.extensions["lb_attempts"] == 1
        else:
            with pytest.raises(httpx.TransportError):  # a reset hits the body, as the client reads it
                await flavor.get(client, "/x", extensions={"lb_idempotent": False})
    assert (a.count("GET"), b.count("GET")) == (1, 0)


async def test_not_idempotent_still_retries_a_failed_connect(flavor: Flavor, make_backends: MakeBackends) -> None:
    a, b = make_backends(2)
    a.kill()  # refused: the request never reached a server, so resending it is safe for any request
    async with a_then_b(flavor, [a, b]) as client:
        response = await flavor.request(client, "POST", "/x", extensions={"lb_idempotent": False})
    assert response.json()["id"] == "b"
    assert response.extensions["lb_attempts"] == 2
    assert b.count("POST") == 1


@pytest.mark.parametrize("value", ["yes", 1, 0, "false"])
async def test_a_value_that_is_not_a_bool_is_refused_before_anything_is_sent(
    flavor: Flavor, make_backends: MakeBackends, value: object
) -> None:
    (a,) = make_backends(1)
    async with flavor.client([a.url]) as client:
        with pytest.raises(TypeError, match=r'extensions\["lb_idempotent"\] must be True or False, got'):
            await flavor.request(client, "POST", "/x", extensions={"lb_idempotent": value})
        assert [h.outstanding for h in client.pool.hosts] == [0]
    assert a.count() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_post_marked_idempotent_is_hedged_like_a_get(anyio_backend: str, make_backends: MakeBackends) -> None:
    a, b = make_backends(2)
    a.delay = 2.0
    async with AsyncLBClient([a.url], hedge=Hedge(delay=0.05, budget_ratio=1.0), timeout=10.0) as client:
        client.pool.update([a.url, b.url])
        marked = await client.post("/x", extensions={"lb_idempotent": True})
        assert marked.json()["id"] == "b"
        assert (a.count("POST"), b.count("POST")) == (1, 1)


def test_httpx2_requests_carry_the_mark_through_the_bridge(make_backends: MakeBackends) -> None:
    httpx2 = pytest.importorskip("httpx2")
    from lbclient.httpx2 import LoadBalancingTransport

    a, b = make_backends(2)
    a.drop = True
    pool = LoadBalancingTransport([a.url], service="etcd")
    pool.pool.update([a.url, b.url])
    with httpx2.Client(mounts={"all://etcd": pool}) as client:
        response = client.post("http://etcd/v3/kv/range", extensions={"lb_idempotent": True})
        assert response.json()["id"] == "b"
        with pytest.raises(TypeError, match="lb_idempotent"):
            client.post("http://etcd/v3/kv/range", extensions={"lb_idempotent": "yes"})
    assert (a.count("POST"), b.count("POST")) == (1, 1)
