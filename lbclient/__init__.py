"""lbclient: a client-side load balancer for httpx.

```pycon
>>> from lbclient import LBClient
>>> with LBClient(hosts=["127.0.0.1:8001", "127.0.0.1:8002"]) as client:   # doctest: +SKIP
...     client.get("/api/data")
```
"""

from ._client import AsyncLBClient, LBClient
from ._core import (
    STRATEGIES,
    ConsistentHash,
    HealthCheck,
    Hedge,
    Host,
    HostState,
    HostStats,
    IpHash,
    LeastConnections,
    LeastResponseTime,
    OutlierDetection,
    PeakEwma,
    Pool,
    PoolEvent,
    PoolStats,
    PoolView,
    PowerOfTwoChoices,
    RandomChoice,
    RetryPolicy,
    RoundRobin,
    Strategy,
    UrlHash,
    WeightedLeastConnections,
    WeightedRandom,
    WeightedRoundRobin,
)
from ._discovery import Discovery, DiscoveryError, DNSDiscovery, FileDiscovery, Resolution
from ._exceptions import ClientClosedError, NoAvailableHostError, NotInPoolError
from ._transports import DEFAULT_SERVICE, AsyncLoadBalancingTransport, LoadBalancingTransport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SERVICE",
    "STRATEGIES",
    "AsyncLBClient",
    "AsyncLoadBalancingTransport",
    "ClientClosedError",
    "ConsistentHash",
    "DNSDiscovery",
    "Discovery",
    "DiscoveryError",
    "FileDiscovery",
    "HealthCheck",
    "Hedge",
    "Host",
    "HostState",
    "HostStats",
    "IpHash",
    "LBClient",
    "LeastConnections",
    "LeastResponseTime",
    "LoadBalancingTransport",
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
]
