"""The public surface is exactly what we mean it to be."""

from __future__ import annotations

import httpx

import lbclient

EXPECTED = {
    "DEFAULT_SERVICE",
    "STRATEGIES",
    "AsyncLBClient",
    "AsyncLoadBalancingTransport",
    "ConsistentHash",
    "DNSDiscovery",
    "Discovery",
    "DiscoveryError",
    "FileDiscovery",
    "Hedge",
    "HealthCheck",
    "Host",
    "HostState",
    "HostStats",
    "IpHash",
    "LBClient",
    "LeastConnections",
    "LeastResponseTime",
    "LoadBalancingTransport",
    "ClientClosedError",
    "NoAvailableHostError",
    "NotInPoolError",
    "OutlierDetection",
    "PeakEwma",
    "Pool",
    "PoolEvent",
    "PoolStats",
    "PoolView",
    "PowerOfTwoChoices",
    "RandomChoice",
    "Resolution",
    "RetryPolicy",
    "RoundRobin",
    "Strategy",
    "UrlHash",
    "WeightedLeastConnections",
    "WeightedRandom",
    "WeightedRoundRobin",
    "__version__",
}


def test_all_is_exact_and_sorted() -> None:
    assert set(lbclient.__all__) == EXPECTED
    assert lbclient.__all__ == sorted(lbclient.__all__, key=lambda name: (not name.isupper(), name))
    for name in lbclient.__all__:
        assert getattr(lbclient, name) is not None


def test_public_names_are_documented() -> None:
    for name in lbclient.__all__:
        obj = getattr(lbclient, name)
        if isinstance(obj, type):
            assert obj.__doc__, name


def test_types_join_httpx() -> None:
    assert issubclass(lbclient.LBClient, httpx.Client)
    assert issubclass(lbclient.AsyncLBClient, httpx.AsyncClient)
    assert issubclass(lbclient.LoadBalancingTransport, httpx.BaseTransport)
    assert issubclass(lbclient.AsyncLoadBalancingTransport, httpx.AsyncBaseTransport)
    assert issubclass(lbclient.NoAvailableHostError, httpx.TransportError)
    assert issubclass(lbclient.NotInPoolError, httpx.UnsupportedProtocol)


def test_contract_names_in_the_strategy_registry() -> None:
    assert list(lbclient.STRATEGIES) == [
        "round_robin",
        "weighted_round_robin",
        "random",
        "weighted_random",
        "least_connections",
        "weighted_least_connections",
        "least_response_time",
        "power_of_two_choices",
        "peak_ewma",
        "ip_hash",
        "url_hash",
        "consistent_hash",
    ]
