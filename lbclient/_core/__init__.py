"""The pure core of lbclient: hosts, their live state, strategies and the pool.

Nothing here does I/O, starts threads or tasks, reads the clock or uses the global random generator:
time, randomness and locking come in as arguments, so the same code runs in the clients, the tests and
a simulator on a fake clock.
"""

from ._config import HealthCheck, Hedge, OutlierDetection, RetryPolicy
from ._hashing import hash64
from ._host import PEAK_RELAX, Host, HostLike, HostState, check_sni_hostname
from ._pool import DEFAULT_EWMA_DECAY, DEFAULT_PANIC_THRESHOLD, EventKind, HostStats, Lease, Pool, PoolEvent, PoolStats
from ._strategies import (
    STRATEGIES,
    ConsistentHash,
    IpHash,
    KeySource,
    LeastConnections,
    LeastResponseTime,
    PeakEwma,
    PoolView,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    Strategy,
    UrlHash,
    WeightedLeastConnections,
    WeightedRandom,
    WeightedRoundRobin,
    make_strategy,
)

__all__ = [
    "DEFAULT_EWMA_DECAY",
    "DEFAULT_PANIC_THRESHOLD",
    "PEAK_RELAX",
    "STRATEGIES",
    "ConsistentHash",
    "EventKind",
    "HealthCheck",
    "Hedge",
    "Host",
    "HostLike",
    "HostState",
    "HostStats",
    "IpHash",
    "KeySource",
    "Lease",
    "LeastConnections",
    "LeastResponseTime",
    "OutlierDetection",
    "PeakEwma",
    "Pool",
    "PoolEvent",
    "PoolStats",
    "PoolView",
    "PowerOfTwoChoices",
    "RandomChoice",
    "RetryPolicy",
    "RoundRobin",
    "Strategy",
    "UrlHash",
    "WeightedLeastConnections",
    "WeightedRandom",
    "WeightedRoundRobin",
    "check_sni_hostname",
    "hash64",
    "make_strategy",
]
