"""The balancing clients against real HTTP servers on 127.0.0.1: one table, sync, asyncio and trio."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

import lbclient
from lbclient import STRATEGIES, Host, NoAvailableHostError
from lbclient.testing import Backend

from conftest import Flavor

pytestmark = pytest.mark.anyio


async def test_round_robin_spreads_evenly(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends]) as client:
        ids = [(await flavor.get(client, "/api/data")).json()["id"] for _ in range(9)]
    start = "abc".index(ids[0])  # each client starts its rotation at a random host, then takes turns
    assert "".join(ids) == ("abc" * 4)[start : start + 9]
    assert [b.count("GET", "/api/data") for b in backends] == [3, 3, 3]


async def test_pool_request_is_rewritten_for_the_picked_host(flavor: Flavor, backends: list[Backend]) -> None:
    a = backends[0]
    async with flavor.client([Host(f"{a.url}/v1/")], headers={"X-Team": "core"}) as client:
        response = await flavor.request(client, "PUT", "/api/data?x=1&y=%20", content=b"payload")
    body = response.json()
    assert body["path"] == "/v1/api/data"
    assert body["query"] == "x=1&y=%20"
    assert body["method"] == "PUT"
    assert body["body"] == "payload"
    assert body["host"] == f"127.0.0.1:{a.port}"
    assert body["headers"]["X-Team"] == "core"
    assert response.extensions["lb_host"] == f"{a.url}/v1"
    assert response.extensions["lb_attempts"] == 1
    # The caller's request is given back unchanged, so httpx's cookies and redirects see the pool.
    assert response.request.url.host == client.base_url.host
    assert response.request.headers["Host"] == client.base_url.host


async def test_string_without_scheme_and_mapping_hosts(flavor: Flavor, backends: list[Backend]) -> None:
    a, b, _ = backends
    hosts = [f"127.0.0.1:{a.port}", {"url": b.url, "weight": 2}]
    async with flavor.client(hosts, strategy="weighted_round_robin") as client:
        ids = [(await flavor.get(client, "/")).json()["id"] for _ in range(6)]
        assert [h.url for h in client.pool.hosts] == [a.url, b.url]
    assert Counter(ids) == {"a": 2, "b": 4}


async def test_absolute_url_to_another_host_bypasses_the_pool(flavor: Flavor, backends: list[Backend]) -> None:
    a, b, outsider = backends
    async with flavor.client([a.url, b.url]) as client:
        response = await flavor.get(client, f"{outsider.url}/direct")
        assert response.json()["id"] == "c"
        assert "lb_host" not in response.extensions
        assert sum(h.requests for h in client.pool.hosts) == 0
    assert outsider.count("GET", "/direct") == 1


async def test_every_strategy_serves_requests_from_the_pool(flavor: Flavor, backends: list[Backend]) -> None:
    hosts = [b.url for b in backends]
    for name in STRATEGIES:
        async with flavor.client(hosts, strategy=name) as client:
            for i in range(12):
                response = await flavor.get(client, f"/item/{i}", headers={"X-Forwarded-For": f"10.0.0.{i}"})
                assert response.status_code == 200
                assert response.extensions["lb_host"] in hosts
            states = client.pool.hosts
            assert sum(h.requests for h in states) == 12, name
            assert all(h.outstanding == 0 for h in states), name
            assert all(h.ewma_latency is not None and h.ewma_latency > 0 for h in states if h.requests), name


async def test_lb_key_is_sticky_across_clients(flavor: Flavor, backends: list[Backend]) -> None:
    hosts = [b.url for b in backends]
    seen: dict[str, set[str]] = {}
    for _ in range(2):
        async with flavor.client(hosts, strategy="consistent_hash") as client:
            for user in ("alice", "bob", "carol", "dave"):
                for _ in range(3):
                    r = await flavor.get(client, "/cart", extensions={"lb_key": user})
                    seen.setdefault(user, set()).add(r.json()["id"])
    assert all(len(ids) == 1 for ids in seen.values()), seen


async def test_ip_hash_follows_x_forwarded_for(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends], strategy="ip_hash") as client:
        for ip in ("203.0.113.7", "198.51.100.23"):
            ids = {
                (await flavor.get(client, f"/p{i}", headers={"X-Forwarded-For": f"{ip}, 10.0.0.1"})).json()["id"]
                for i in range(5)
            }
            assert len(ids) == 1


async def test_streamed_response_counts_in_flight_until_closed(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([backends[0].url]) as client:
        host = client.pool.hosts[0]
        request = client.build_request("GET", "/stream?chunks=3")
        if flavor.is_async:
            response = await client.send(request, stream=True)
            assert host.outstanding == 1
            lines = [line async for line in response.aiter_lines()]
            await response.aclose()
        else:
            response = client.send(request, stream=True)
            assert host.outstanding == 1
            lines = list(response.iter_lines())
            response.close()
        assert lines == ["a 0", "a 1", "a 2"]
        assert host.outstanding == 0
        assert host.requests == 1


async def test_dead_host_raises_httpx_error_and_counts_a_failure(flavor: Flavor, backends: list[Backend]) -> None:
    a = backends[0]
    a.kill()
    async with flavor.client([a.url], retries=1) as client:
        with pytest.raises(httpx.ConnectError):
            await flavor.get(client, "/x")
        host = client.pool.hosts[0]
        assert (host.failures, host.requests, host.outstanding) == (1, 1, 0)


async def test_server_errors_count_as_failures(flavor: Flavor, backends: list[Backend]) -> None:
    a = backends[0]
    a.status = 503
    async with flavor.client([a.url], retries=1) as client:
        response = await flavor.get(client, "/x")
        assert response.status_code == 503
        assert client.pool.hosts[0].failures == 1


async def test_no_available_host_is_a_transport_error(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends], panic_threshold=0.0) as client:
        for host in client.pool.hosts:
            host.ejected = True
        client.pool.refresh()
        with pytest.raises(NoAvailableHostError) as caught:
            await flavor.get(client, "/x")
        assert isinstance(caught.value, httpx.TransportError)
    assert sum(b.count() for b in backends) == 0


async def test_ejected_and_drained_hosts_are_skipped(flavor: Flavor, backends: list[Backend]) -> None:
    a, b, c = backends
    async with flavor.client([a.url, b.url, Host(c.url, weight=0)]) as client:
        client.pool.hosts[0].ejected = True
        client.pool.refresh()
        ids = {(await flavor.get(client, "/x")).json()["id"] for _ in range(6)}
    assert ids == {"b"}
    assert c.count() == 0


async def test_pool_update_keeps_state_of_hosts_that_stay(flavor: Flavor, make_backends: object) -> None:
    a, b, c = make_backends(3)  # type: ignore[operator]
    async with flavor.client([a.url, b.url]) as client:
        for _ in range(4):
            await flavor.get(client, "/x")
        before = client.pool.hosts[1]
        client.pool.update([b.url, c.url])
        after = client.pool.hosts
        assert [h.url for h in after] == [b.url, c.url]
        assert after[0] is before
        assert after[0].requests == 2
        ids = [(await flavor.get(client, "/x")).json()["id"] for _ in range(4)]
    assert set(ids) == {"b", "c"}
    assert a.count() == 2


async def test_httpx_keywords_work_unchanged(flavor: Flavor, backends: list[Backend]) -> None:
    seen: list[str] = []

    def on_request(request: httpx.Request) -> None:
        seen.append(request.method)

    async def on_request_async(request: httpx.Request) -> None:
        on_request(request)

    hook = on_request_async if flavor.is_async else on_request
    async with flavor.client(
        [backends[0].url],
        auth=("user", "secret"),
        timeout=5.0,
        follow_redirects=True,
        event_hooks={"request": [hook]},
    ) as client:
        response = await flavor.get(client, "/redirect?to=/landed")
    body = response.json()
    assert body["path"] == "/landed"
    assert body["headers"]["Authorization"].startswith("Basic ")
    assert seen == ["GET", "GET"]
    assert len(response.history) == 1


async def test_base_url_names_the_service_and_a_path(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([backends[0].url], base_url="http://users/api/") as client:
        body = (await flavor.get(client, "items")).json()
        assert body["path"] == "/api/items"
        assert client.base_url.host == "users"


async def test_mounted_transport_on_a_plain_client(mode: str, backends: list[Backend]) -> None:
    a, b, outsider = backends
    if mode == "sync":
        with httpx.Client(
            mounts={"all://users": lbclient.LoadBalancingTransport([a.url, b.url], service="users")}
        ) as c:
            ids = [c.get("http://users/x").json()["id"] for _ in range(4)]
            direct = c.get(f"{outsider.url}/y").json()["id"]
    else:
        transport = lbclient.AsyncLoadBalancingTransport([a.url, b.url], service="users")
        async with httpx.AsyncClient(mounts={"all://users": transport}) as ac:
            ids = [(await ac.get("http://users/x")).json()["id"] for _ in range(4)]
            direct = (await ac.get(f"{outsider.url}/y")).json()["id"]
    assert ids in (["a", "b", "a", "b"], ["b", "a", "b", "a"])  # turns, from a random start
    assert direct == "c"


async def test_transport_passes_other_hosts_through(mode: str, backends: list[Backend]) -> None:
    a, outsider = backends[0], backends[2]
    if mode == "sync":
        with httpx.Client(transport=lbclient.LoadBalancingTransport([a.url], service="svc")) as c:
            body = c.get(f"{outsider.url}/through").json()
    else:
        async with httpx.AsyncClient(transport=lbclient.AsyncLoadBalancingTransport([a.url], service="svc")) as ac:
            body = (await ac.get(f"{outsider.url}/through")).json()
    assert body["id"] == "c"
    assert a.count() == 0


async def test_response_body_is_intact(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([backends[0].url]) as client:
        response = await flavor.request(client, "POST", "/echo", json={"k": "v" * 10_000})
    assert json.loads(response.json()["body"]) == {"k": "v" * 10_000}


async def test_a_request_sent_again_is_balanced_again(flavor: Flavor, backends: list[Backend]) -> None:
    a, b, _ = backends
    async with flavor.client([a.url, b.url]) as client:
        request = client.build_request("GET", "/again")
        ids = []
        for _ in range(4):
            response = await (client.send(request) if flavor.is_async else _ready(client.send(request)))
            ids.append(response.json()["id"])
            assert response.extensions["lb_host"] in (a.url, b.url)
    assert ids in (["a", "b", "a", "b"], ["b", "a", "b", "a"])  # turns, from a random start


async def _ready(value: httpx.Response) -> httpx.Response:
    return value


async def test_cookies_set_by_a_host_go_back_to_the_pool(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends]) as client:
        await flavor.get(client, "/set-cookie?name=session&value=abc")
        body = (await flavor.get(client, "/x")).json()
    assert "session=abc" in body["headers"].get("Cookie", "")


async def test_a_relative_redirect_is_balanced_and_keeps_auth(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([b.url for b in backends], follow_redirects=True, auth=("u", "p")) as client:
        response = await flavor.get(client, "/redirect?to=/landed")
    assert response.extensions["lb_host"] in [b.url for b in backends]
    assert response.json()["path"] == "/landed"
    assert response.json()["headers"]["Authorization"].startswith("Basic ")
    assert sum(b.count() for b in backends) == 2


async def test_head_and_dot_segments(flavor: Flavor, backends: list[Backend]) -> None:
    async with flavor.client([backends[0].url]) as client:
        head = await flavor.request(client, "HEAD", "/h")
        assert head.status_code == 200
        assert head.content == b""
        assert (await flavor.get(client, "./a/../b")).json()["path"] == "/b"


def _slots(client: Any, url: str) -> list[Any]:
    """The small connection pools that host ``url`` has now (in its current time in the pool)."""
    hosts = client._balancer._connections._hosts
    return [slot for connections in hosts.values() if connections.host.url == url for slot in connections.slots]


async def test_each_host_has_its_own_connection_pool_until_it_leaves(flavor: Flavor, backends: list[Backend]) -> None:
    a, b, c = backends
    async with flavor.client([a.url, b.url]) as client:
        for _ in range(4):
            await flavor.get(client, "/x")
        first, second = (_slots(client, h.url) for h in client.pool.hosts)
        assert len(first) == len(second) == 1  # one request at a time: one connection pool each
        assert first[0].transport is not second[0].transport
        client.pool.update([b.url, c.url])
        await flavor.get(client, "/x")  # the first request after the update retires a's (idle) pools
        assert _slots(client, a.url) == []
        assert {h.url for h in client._balancer._connections._hosts} <= {b.url, c.url}
        assert _slots(client, b.url) == second


def test_concurrent_requests_to_a_host_spread_over_small_connection_pools(backends: list[Backend]) -> None:
    """httpcore scans all of a pool's connections per request, so a host's connections are split into
    pools of SUBPOOL_CONNECTIONS; each in-flight response holds its place until its body is closed."""
    from contextlib import ExitStack

    from lbclient._connections import SUBPOOL_CONNECTIONS

    held = 2 * SUBPOOL_CONNECTIONS + 1
    limits = httpx.Limits(max_connections=2 * SUBPOOL_CONNECTIONS + 2)
    with lbclient.LBClient([backends[0].url], limits=limits) as client, ExitStack() as open_bodies:
        for _ in range(held):  # chunked bodies of unknown length are not buffered: each keeps its connection
            response = open_bodies.enter_context(client.stream("GET", "/stream?chunks=2"))
            assert response.status_code == 200
        pools = _slots(client, backends[0].url)
        assert [slot.busy for slot in pools] == [SUBPOOL_CONNECTIONS, SUBPOOL_CONNECTIONS, 1]
        # the client's max_connections (10) caps the third pool at 2 connections, and there is no fourth
        response = open_bodies.enter_context(client.stream("GET", "/stream?chunks=2"))
        assert response.status_code == 200
        assert len(_slots(client, backends[0].url)) == 3
        assert [slot.busy for slot in pools] == [SUBPOOL_CONNECTIONS, SUBPOOL_CONNECTIONS, 2]
        open_bodies.close()
        assert [slot.busy for slot in pools] == [0, 0, 0]
        assert client.pool.hosts[0].outstanding == 0
        assert client.get("/x").status_code == 200
        assert [slot.busy for slot in pools] == [0, 0, 0]


def test_idle_connections_stay_within_max_keepalive_and_expire(backends: list[Backend]) -> None:
    """max_keepalive_connections bounds a host's idle connections in all, however many small pools it
    has; pools idle past keepalive_expiry are closed by the next request, not kept until used again."""
    from contextlib import ExitStack

    limits = httpx.Limits(max_connections=40, max_keepalive_connections=6, keepalive_expiry=0.2)
    with lbclient.LBClient([backends[0].url], limits=limits) as client, ExitStack() as bodies:
        registry = client._balancer._connections.registry
        assert registry is not None
        for _ in range(20):
            bodies.enter_context(client.stream("GET", "/stream?chunks=2"))
        assert registry.open == 20
        bodies.close()
        assert registry.open <= 6
        deadline = time.monotonic() + 10
        while registry.open > 1:  # each request after the expiry drops what has been idle since
            assert time.monotonic() < deadline, f"{registry.open} idle connections left"
            assert client.get("/x").status_code == 200
            time.sleep(0.05)


@pytest.mark.parametrize("key", [b"\xff\xfe", b"user-1", "user-1"])
def test_any_lb_key_works_with_any_strategy(backends: list[Backend], key: object) -> None:
    for strategy in ("round_robin", "consistent_hash"):
        with lbclient.LBClient([b.url for b in backends], strategy=strategy) as client:
            hosts = {client.get("/x", extensions={"lb_key": key}).extensions["lb_host"] for _ in range(3)}
            assert len(hosts) == (3 if strategy == "round_robin" else 1)


def test_a_request_that_picked_a_host_as_it_left_gets_pools_that_close_after_it(backends: list[Backend]) -> None:
    """The race behind churn leaks: a request picks host x, x leaves and its idle pools are retired, then
    the request asks for a transport. It must get a live one, and that one must close when it ends."""
    with lbclient.LBClient([b.url for b in backends[:2]]) as client:
        x = client.get("/x").extensions["lb_host"]  # x has pools now
        (y,) = {b.url for b in backends[:2]} - {x}
        connections = client._balancer._connections
        state_y = next(h for h in client.pool.hosts if h.url == y)
        lease = client.pool.acquire(exclude=[state_y])
        assert lease is not None
        assert lease.host.url == x
        client.pool.update([y])  # x leaves, idle, with this lease not yet sent
        connections.sweep(client.pool)
        retired = connections.closable()
        assert len(retired) == 1
        transport = connections.for_lease(lease)
        assert transport not in retired
        response = transport.handle_request(httpx.Request("GET", f"{x}/x"))
        response.read()
        response.close()
        lease.release(failed=False)
        assert connections.closable() == [transport]  # its pools retire with its last request
        for closed in [*retired, transport]:
            closed.close()
        assert connections.registry is not None
        assert connections.registry.open == 0
