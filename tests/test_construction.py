"""Bad input fails when the client is built, with a ValueError that names the value."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from lbclient import AsyncLBClient, AsyncLoadBalancingTransport, LBClient, LoadBalancingTransport

BUILDERS = [LBClient, AsyncLBClient, LoadBalancingTransport, AsyncLoadBalancingTransport]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    ("hosts", "kwargs", "named"),
    [
        ([], {}, "[]"),
        (["ftp://a:21"], {}, "ftp://a:21"),
        ([{"url": "a:1", "weight": -1}], {}, "-1"),
        ([{"url": "a:1", "weight": "heavy"}], {}, "heavy"),
        ([{"url": "a:1", "weight": 0}, {"url": "b:1", "weight": 0}], {}, "http://a:1"),
        (["a:1", "http://a:1/"], {}, "http://a:1"),
        (["a:1"], {"strategy": "fastest"}, "fastest"),
        (["a:1"], {"panic_threshold": -0.5}, "-0.5"),
        (["a:1"], {"panic_threshold": 2}, "2"),
        (["a:1"], {"max_in_flight": 0}, "max_in_flight must be an int >= 1 or None, got 0"),
        (["a:1"], {"max_in_flight": True}, "max_in_flight must be an int >= 1 or None, got True"),
        (["a:1"], {"max_in_flight": 2.5}, "got 2.5"),
        ([{"url": "a:1", "weight": 10**400}], {}, "weight of host 'http://a:1'"),
        (["127.1:80", "127.0.0.1"], {}, "http://127.0.0.1"),
        (["bücher.example", "xn--bcher-kva.example"], {}, "http://xn--bcher-kva.example"),
        ("a:1", {}, "a:1"),
    ],
)
def test_bad_input_is_refused_with_the_value_named(build: Any, hosts: Any, kwargs: Any, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        build(hosts, **kwargs)


@pytest.mark.parametrize("build", BUILDERS)
def test_normalised_host_urls_are_accepted_by_httpx(build: Any) -> None:
    client = build(["127.1:8001", "[0:0::1]:8002", "https://bücher.example"], max_in_flight=4)
    assert [h.url for h in client.pool.hosts] == [
        "http://127.0.0.1:8001",
        "http://[::1]:8002",
        "https://xn--bcher-kva.example",
    ]
    assert [h.max_in_flight for h in client.pool.hosts] == [4, 4, 4]
    raw_hosts = [httpx.URL(host.url).raw_host for host in client.pool.hosts]
    assert raw_hosts == [b"127.0.0.1", b"::1", b"xn--bcher-kva.example"]
    if isinstance(client, (LBClient, LoadBalancingTransport)):
        client.close()


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="round_robin") as caught:
        LBClient(["a:1"], strategy="nope")
    assert "consistent_hash" in str(caught.value)


def test_base_url_and_service_must_agree() -> None:
    with pytest.raises(ValueError, match="users"):
        LBClient(["a:1"], base_url="http://users", service="orders")


def _inner_pools(transport: LoadBalancingTransport, count: int) -> list[Any]:
    """The httpcore pools that ``count`` requests held at once to the first host would go through."""
    leases = [transport.pool.acquire() for _ in range(count)]
    inners = [transport._connections.for_lease(lease) for lease in leases if lease is not None]
    assert all(isinstance(inner, httpx.HTTPTransport) for inner in inners)
    for lease in leases:
        assert lease is not None
        lease.release(failed=False)
    return [inner._pool for inner in dict.fromkeys(inners)]


def test_client_keywords_reach_the_default_inner_transports() -> None:
    """A host's connections are split into small pools within the client's max_connections."""
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=2, keepalive_expiry=9.0)
    with LBClient(["a:1"], limits=limits, verify=False) as client:
        pools = _inner_pools(client._balancer, 8)
    assert [pool._max_connections for pool in pools] == [4, 3]
    # max_keepalive_connections bounds the idle connections of the host in all, not of each small pool
    assert [pool._max_keepalive_connections for pool in pools] == [2, 0]
    assert {pool._keepalive_expiry for pool in pools} == {9.0}
    assert all(pool._ssl_context.check_hostname is False for pool in pools)  # verify=False
    assert len({id(pool._ssl_context) for pool in pools}) == 1  # one TLS context for all


def test_http2_keeps_one_connection_pool_per_host() -> None:
    """HTTP/2 multiplexes requests over one connection: splitting the pool would only add connections."""
    limits = httpx.Limits(max_connections=7)
    with LoadBalancingTransport(["a:1"], transport_options={"http2": True, "limits": limits}) as transport:
        pools = _inner_pools(transport, 8)
    assert [pool._max_connections for pool in pools] == [7]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [("http://a b:80", "a b"), ("http://ü_ü:80", "ü_ü"), ("http://a/\x7f", "http://a/"), ("http://[::zz]:80", "::zz")],
)
def test_host_urls_httpx_cannot_send_to_are_refused(bad: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        LBClient([bad])


@pytest.mark.parametrize("service", ["", "bad name", "a/b", " users"])
def test_service_must_be_a_host_name(service: str) -> None:
    with pytest.raises(ValueError, match="service must be a host name"):
        LBClient(["a:1"], service=service)


def test_weights_may_be_any_real_number() -> None:
    from fractions import Fraction

    with LBClient([{"url": "a:1", "weight": Fraction(1, 3)}]) as client:
        assert client.pool.hosts[0].weight == pytest.approx(1 / 3)


def test_proxy_keyword_reaches_the_inner_transport() -> None:
    with LBClient(["a:1"], proxy="http://127.0.0.1:9") as client:
        (pool,) = _inner_pools(client._balancer, 1)
        assert type(pool).__name__ == "HTTPProxy"


def test_a_host_httpx_cannot_encode_is_refused_at_construction_and_update() -> None:
    with pytest.raises(ValueError, match=re.escape("http://xn--abc.example")):
        LBClient(["http://xn--abc.example"])
    with LBClient(["a:1"]) as client:
        with pytest.raises(ValueError, match=re.escape("http://xn--abc.example")):
            client.pool.update(["a:1", "http://xn--abc.example"])
        assert [h.url for h in client.pool.hosts] == ["http://a:1"]
