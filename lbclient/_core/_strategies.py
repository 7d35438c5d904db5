"""Pick algorithms. Each one is a small state machine driven by the pool under its lock.

The pool hands a strategy a :class:`PoolView` whenever the host set or the health of a host changes
(``update``), tells it when a host's load changes (``on_load_change``, for strategies that set
``tracks_load``) and asks it for a host per request (``pick``). A pick never scans every host: each
strategy keeps a structure (counter, per-weight classes, heap, cumulative table, ring) that makes a pick
O(1) or O(log n), so the balancer's cost stays flat from 10 to 10,000 hosts.

A host at its ``max_in_flight`` stays a candidate but is not ``selectable``: a pick passes it over (the
hash strategies rehash, the least-loaded ones see an infinite load, the two-choices ones take the other
host); a pick that still proposes it is asked again by the pool, which then takes any candidate with room.

Randomness comes from ``self.rng`` (a ``random.Random``; the pool gives its own to a strategy that has
none) and time from the ``now`` argument, so a seeded generator and a fake clock replay a run exactly.

No strategy starts every pool at the same host: round robin starts its rotation at a random host (as
Envoy does), smooth weighted round robin at a random host of each weight class, and the least-loaded
strategies break their first ties in a random order. A fleet of clients started together would otherwise
send every client's first request to the first host, its second to the second, and so on. Each draw comes
from ``self.rng``, so a strategy given a seeded generator (``RoundRobin(rng=random.Random(0))``) repeats
the same order on every run.
"""

from __future__ import annotations

import heapq
import math
import random
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import ClassVar, Literal

from ._hashing import HASH_SPACE, hash64, hash64_many
from ._host import HostState

__all__ = [
    "STRATEGIES",
    "ConsistentHash",
    "IpHash",
    "KeySource",
    "LeastConnections",
    "LeastResponseTime",
    "PeakEwma",
    "PoolView",
    "PowerOfTwoChoices",
    "RandomChoice",
    "RoundRobin",
    "Strategy",
    "UrlHash",
    "WeightedLeastConnections",
    "WeightedRandom",
    "WeightedRoundRobin",
    "make_strategy",
]

#: Where a hash strategy takes its key from when a request has no ``lb_key`` extension.
KeySource = Literal["client_ip", "path"]

#: Load given to a host that has no latency sample yet but already has a request in flight, so that a
#: new host is explored one request at a time instead of drawing every request until its first answer
#: (Finagle's PeakEwma does the same).
_UNPROBED_PENALTY = 1e6


@dataclass(frozen=True)
class PoolView:
    """What a strategy may pick from, rebuilt by the pool whenever hosts or their health change.

    ``candidates``: the hosts a pick may return now (the available ones, or every member in panic).
    ``members``: every host with weight > 0 in configuration order (hash strategies map keys onto
    these so that a key keeps its host while that host is up). ``decay``: the EWMA time constant.
    """

    candidates: tuple[HostState, ...]
    members: tuple[HostState, ...]
    panic: bool
    decay: float


class Strategy(ABC):
    """Base class of pick algorithms; subclass it to plug in your own (``strategy=MyStrategy()``).

    One strategy object serves one pool. ``key_source`` names where hash strategies take their key from
    (``None``: the strategy ignores keys, and the transport does not compute one).
    """

    name: ClassVar[str] = "custom"
    key_source: ClassVar[KeySource | None] = None
    tracks_load: ClassVar[bool] = False

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self.rng = rng
        self._view = PoolView((), (), False, 10.0)
        self._attached = False

    def attach(self, rng: random.Random) -> None:
        """Called once by the pool that this strategy serves; ``rng`` is used if it has none."""
        if getattr(self, "_attached", False):
            raise ValueError(f"strategy {self!r} already serves another pool; create one per pool")
        self._attached = True
        if getattr(self, "rng", None) is None:
            self.rng = rng

    def update(self, view: PoolView) -> None:
        """Take a new set of candidates. Called under the pool's lock."""
        self._view = view

    @abstractmethod
    def pick(self, key: str | None, now: float) -> HostState | None:
        """Choose a host among the current candidates, or ``None`` when there is none."""

    def on_load_change(self, host: HostState) -> None:  # noqa: B027 - optional hook
        """Called after ``host``'s in-flight count or latency changed (when ``tracks_load`` is set)."""

    def _random(self) -> random.Random:
        if self.rng is None:
            raise RuntimeError(f"{type(self).__name__} has no random generator; attach it to a Pool")
        return self.rng

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class RoundRobin(Strategy):
    """Each candidate in turn, in configuration order, starting at a random candidate.

    The start is drawn once from the strategy's generator, when the first candidates arrive, so that a
    fleet of clients started together does not send every first request to the same host (Envoy does the
    same); after that the candidates take plain turns, and each gets exactly one pick per round. When
    the candidates change the rotation keeps its place (the same position in the new list). For a fixed
    order (in your own tests) give it a seeded generator: ``RoundRobin(rng=random.Random(0))`` replays
    the same order on every run; which host comes first depends on the seed and the host count.
    """

    name = "round_robin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._next = 0
        self._started = False

    def update(self, view: PoolView) -> None:
        super().update(view)
        if not self._started and view.candidates:
            self._started = True
            self._next = int(self._random().random() * len(view.candidates))

    def pick(self, key: str | None, now: float) -> HostState | None:
        candidates = self._view.candidates
        if not candidates:
            return None
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


class WeightedRoundRobin(Strategy):
    """nginx's smooth weighted round robin: weights {a: 5, b: 1, c: 1} give ``a a b a c a a``.

    nginx scans every host per pick. Here hosts of equal weight form a class: inside a class nginx's
    choice always follows configuration order, so a pick only compares one candidate per class, which is
    exact and O(number of distinct weights). With more than ``max_classes`` distinct weights the pick
    switches to an earliest-deadline-first heap (the scheduler Envoy uses): the same shares, O(log n),
    with a slightly different interleaving. Non-integer weights are honoured to 1/1000.

    So that a fleet of clients does not walk the cycle in step, each time the schedule is built (first
    candidates, then every change of candidates or weights, where nginx's cycle restarts too) the hosts of
    each weight class are rotated by a random offset among their places in the configuration: the picks
    are exactly nginx's sequence for that reordered configuration (for equal weights, nginx's order
    started at a random host), and every cycle of sum(weights) picks gives each host its weight. The
    class that comes first in a cycle (the heaviest) is still picked first by every client: starting at a
    random point of the cycle would need replaying up to sum(weights) picks per rebuild. The EDF heap
    starts each host at a random point within its first period. A seeded generator
    (``WeightedRoundRobin(rng=random.Random(0))``) repeats the same order on every run.
    """

    name = "weighted_round_robin"
    max_classes: ClassVar[int] = 32

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._classes: list[_WeightClass] = []
        self._total = 0
        self._step = 0
        self._edf: list[tuple[float, int]] = []
        self._edf_weights: list[int] = []

    def update(self, view: PoolView) -> None:
        super().update(view)
        candidates = view.candidates
        raw = [h.effective_weight for h in candidates]
        if all(float(w).is_integer() for w in raw):
            weights = [int(w) for w in raw]
        else:  # honour ratios to 1/1000 of the lightest host's weight
            lightest = min(raw, default=1.0)
            weights = [max(1, round(w / lightest * 1000)) for w in raw]
        by_weight: dict[int, list[tuple[int, HostState]]] = {}
        for index, (host, weight) in enumerate(zip(candidates, weights, strict=True)):
            by_weight.setdefault(weight, []).append((index, host))
        self._total = sum(weights)
        self._step = 0
        if not candidates:
            self._classes = []
            self._edf = []
        elif len(by_weight) <= self.max_classes:
            rng = self._random()
            self._classes = [_WeightClass(w, members, rng) for w, members in by_weight.items()]
            self._edf = []
        else:
            rng = self._random()
            self._classes = []
            self._edf_weights = weights
            self._edf = [(rng.random() / w, i) for i, w in enumerate(weights)]
            heapq.heapify(self._edf)

    def pick(self, key: str | None, now: float) -> HostState | None:
        if self._edf:
            deadline, index = self._edf[0]
            heapq.heapreplace(self._edf, (deadline + 1.0 / self._edf_weights[index], index))
            return self._view.candidates[index]
        if not self._classes:
            return None
        step = self._step + 1
        total = self._total
        best = self._classes[0]
        best_score = best.score(step, total)
        for cls in self._classes[1:]:
            score = cls.score(step, total)
            if score > best_score:
                best, best_score = cls, score
        host = best.take()
        if step == total:  # every host had its share: nginx's current weights are all back at 0
            self._step = 0
            for cls in self._classes:
                cls.turn = 0
        else:
            self._step = step
        return host


class _WeightClass:
    """Hosts of one weight; inside the class smooth WRR picks them in configuration order.

    ``members`` pairs each place (index in the candidates, which breaks ties between classes) with the
    host that takes it: the hosts are rotated by a random offset over the class's places, as if they had
    been configured in that order.
    """

    __slots__ = ("weight", "members", "turn")

    def __init__(self, weight: int, members: list[tuple[int, HostState]], rng: random.Random) -> None:
        self.weight = weight
        offset = int(rng.random() * len(members))
        hosts = [host for _, host in members]
        hosts = hosts[offset:] + hosts[:offset]
        self.members = [(index, host) for (index, _), host in zip(members, hosts, strict=True)]
        self.turn = 0

    def score(self, step: int, total: int) -> tuple[int, int]:
        """nginx's current weight of the class's next host, then -index so the first host wins ties."""
        size = len(self.members)
        index = self.members[self.turn % size][0]
        return step * self.weight - total * (self.turn // size), -index

    def take(self) -> HostState:
        host = self.members[self.turn % len(self.members)][1]
        self.turn += 1
        return host


class RandomChoice(Strategy):
    """A uniformly random candidate."""

    name = "random"

    def pick(self, key: str | None, now: float) -> HostState | None:
        candidates = self._view.candidates
        if not candidates:
            return None
        return candidates[int(self._random().random() * len(candidates))]


class WeightedRandom(Strategy):
    """A random candidate with probability proportional to its weight (cumulative table, bisect)."""

    name = "weighted_random"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._cumulative: list[float] = []

    def update(self, view: PoolView) -> None:
        super().update(view)
        self._cumulative = list(accumulate(h.effective_weight for h in view.candidates))

    def pick(self, key: str | None, now: float) -> HostState | None:
        candidates = self._view.candidates
        if not candidates:
            return None
        point = self._random().random() * self._cumulative[-1]
        return candidates[min(bisect_right(self._cumulative, point), len(candidates) - 1)]


class _LeastLoaded(Strategy):
    """Least of ``load(host)`` over the candidates, kept in a heap with lazy invalidation.

    Each load change pushes a fresh entry stamped with a sequence number; entries whose stamp is no
    longer the host's are dropped when they reach the top. Equal loads are broken by a virtual time per
    host that advances by ``1 / weight`` at each pick (stride scheduling, Waldspurger and Weihl 1995):
    idle hosts then share requests in proportion to their weights, or take plain turns when
    ``weighted_ties`` is off. The first virtual times are drawn at random within one stride (uniform in
    ``[0, 1 / weight)``, or ``[0, 1)`` for plain turns), so ties break in a different order in each
    client of a fleet while every span of one unit of virtual time still gives each idle host exactly its
    weight in picks. Virtual times survive updates; a host that joins starts at a random point within
    one stride above the lowest virtual time of the others, so it is neither flooded nor starved, and a
    fleet whose pools all learn of it at once sends it their first requests spread over a round rather
    than all at the next pick. A seeded generator (``LeastConnections(rng=random.Random(0))``) repeats
    the same order on every run.
    """

    tracks_load = True
    weighted_ties: ClassVar[bool] = True

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._index: dict[HostState, int] = {}
        self._passes: dict[HostState, float] = {}
        self._stamps: list[int] = []
        self._heap: list[tuple[float, float, int, int]] = []
        self._seq = 0

    @abstractmethod
    def load(self, host: HostState) -> float:
        """The quantity to minimise."""

    def update(self, view: PoolView) -> None:
        super().update(view)
        candidates = view.candidates
        previous = self._passes
        # Hosts without a virtual time (all of them at first, then those that join) draw one at random
        # within a stride above the lowest that is kept (0 when none is): an order of their own per client.
        floor = min((previous[h] for h in candidates if h in previous), default=0.0)
        rng = self._random() if any(h not in previous for h in candidates) else None
        self._passes = {
            host: previous[host] if host in previous or rng is None else floor + rng.random() * self._stride(host)
            for host in candidates
        }
        self._index = {host: i for i, host in enumerate(candidates)}
        self._stamps = [0] * len(candidates)
        self._rebuild()

    def _rebuild(self) -> None:
        passes, stamps = self._passes, self._stamps
        self._heap = [(self._key(h), passes[h], stamps[i], i) for i, h in enumerate(self._view.candidates)]
        heapq.heapify(self._heap)

    def _key(self, host: HostState) -> float:
        """``load(host)``, or infinite while the host is at its max_in_flight, so it sinks in the heap."""
        return math.inf if host.overloaded else self.load(host)

    def on_load_change(self, host: HostState) -> None:
        index = self._index.get(host)
        if index is None:
            return
        self._seq += 1
        self._stamps[index] = self._seq
        heapq.heappush(self._heap, (self._key(host), self._passes[host], self._seq, index))
        if len(self._heap) > 4 * len(self._stamps) + 64:
            self._rebuild()

    def pick(self, key: str | None, now: float) -> HostState | None:
        heap = self._heap
        stamps = self._stamps
        while heap:
            _, virtual_time, stamp, index = heap[0]
            if stamps[index] == stamp:
                host = self._view.candidates[index]
                self._passes[host] = virtual_time + self._stride(host)
                return host
            heapq.heappop(heap)
        return None

    def _stride(self, host: HostState) -> float:
        return 1.0 / host.effective_weight if self.weighted_ties else 1.0


class LeastConnections(_LeastLoaded):
    """The candidate with the fewest requests in flight from this client; weights are ignored."""

    name = "least_connections"
    weighted_ties = False

    def load(self, host: HostState) -> float:
        return host.outstanding


class WeightedLeastConnections(_LeastLoaded):
    """The candidate with the fewest requests in flight per unit of weight (nginx least_conn)."""

    name = "weighted_least_connections"

    def load(self, host: HostState) -> float:
        return host.outstanding / host.effective_weight


def _latency_cost(latency: float | None, host: HostState) -> float:
    """Expected wait on ``host``: its latency times the requests it would be serving, per weight."""
    if latency is None:
        return _UNPROBED_PENALTY + host.outstanding if host.outstanding else 0.0
    return max(latency, 1e-9) * (host.outstanding + 1) / host.effective_weight


class LeastResponseTime(_LeastLoaded):
    """The candidate with the lowest EWMA latency x (in-flight + 1) / weight (NGINX Plus least_time).

    A host without a latency sample costs 0 while idle and is sent one request at a time until it
    answers, so new hosts are measured without being flooded.
    """

    name = "least_response_time"

    def load(self, host: HostState) -> float:
        return _latency_cost(host.ewma_latency, host)


class _TwoChoices(Strategy):
    """Two distinct random candidates, keep the one with the lower ``cost`` (Mitzenmacher, "The Power
    of Two Choices in Randomized Load Balancing", 2001): exponentially better balance than one random
    choice, O(1), and no herding when many clients each see only their own load. The two are drawn in
    proportion to weight and the first wins ties, so idle hosts get weighted shares."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._cumulative: list[float] | None = None

    def update(self, view: PoolView) -> None:
        super().update(view)
        weights = [h.effective_weight for h in view.candidates]
        uniform = all(w == weights[0] for w in weights)
        self._cumulative = None if uniform else list(accumulate(weights))

    @abstractmethod
    def cost(self, host: HostState, now: float) -> float:
        """The quantity compared between the two choices."""

    def _draw(self, count: int) -> int:
        point = self._random().random()
        cumulative = self._cumulative
        if cumulative is None:
            return int(point * count)
        return min(bisect_right(cumulative, point * cumulative[-1]), count - 1)

    def pick(self, key: str | None, now: float) -> HostState | None:
        candidates = self._view.candidates
        count = len(candidates)
        if count <= 1:
            return candidates[0] if candidates else None
        first = self._draw(count)
        second = first
        for _ in range(4):  # a heavy host may be drawn twice; then its neighbour is the rival
            second = self._draw(count)
            if second != first:
                break
        else:
            second = (first + 1) % count
        a, b = candidates[first], candidates[second]
        if not (a.selectable and b.selectable):  # one is at its max_in_flight: the other, if it has room
            return a if a.selectable else b
        return b if self.cost(b, now) < self.cost(a, now) else a


class PowerOfTwoChoices(_TwoChoices):
    """P2C on in-flight requests per unit of weight."""

    name = "power_of_two_choices"

    def cost(self, host: HostState, now: float) -> float:
        return host.outstanding / host.effective_weight


class PeakEwma(_TwoChoices):
    """P2C on peak-EWMA latency x (in-flight + 1) / weight, as Finagle's and Linkerd's balancers.

    The peak jumps to any slower sample at once and relaxes back toward the host's EWMA (time constant
    10 s by default) within about a second, so one stall is soon forgotten while a host that stays slow
    keeps re-raising it; while a host gets no samples its cost decays toward 0, so a host that was slow
    is probed again later instead of being shunned for good. The latency used is at least the mean age
    of the host's requests in flight, so a host that suddenly stops answering costs more at once, not
    only when its first slow answer (or timeout) comes back.
    """

    name = "peak_ewma"

    def cost(self, host: HostState, now: float) -> float:
        if host.peak_ewma is None:
            return _latency_cost(None, host)
        latency = max(host.peak_ewma_at(now, self._view.decay), host.inflight_age(now))
        return _latency_cost(latency, host)


class _KeyedHash(Strategy):
    """Maps a key onto the members, weighted, by a stable hash. A key whose host is not selectable is
    rehashed (up to 20 times, as nginx's hash module) so that keys of hosts that are up do not move; a
    request without a key is sent round robin, as nginx does for an empty hash key."""

    _rehash_limit: ClassVar[int] = 20

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._cumulative: list[float] = []
        self._round_robin = RoundRobin()

    def attach(self, rng: random.Random) -> None:
        super().attach(rng)
        self._round_robin.attach(self._random())

    def update(self, view: PoolView) -> None:
        super().update(view)
        self._cumulative = list(accumulate(h.weight for h in view.members))
        self._round_robin.update(view)

    def pick(self, key: str | None, now: float) -> HostState | None:
        if key is None:
            return self._round_robin.pick(None, now)
        members = self._view.members
        if not members:
            return None
        total = self._cumulative[-1]
        point = hash64(key)
        for attempt in range(self._rehash_limit):
            index = bisect_right(self._cumulative, point / HASH_SPACE * total)
            host = members[min(index, len(members) - 1)]
            if host.selectable:
                return host
            point = hash64(f"{key}#{attempt}")
        candidates = self._view.candidates
        return candidates[point % len(candidates)] if candidates else None


class IpHash(_KeyedHash):
    """The client address (``lb_key``, else the first ``X-Forwarded-For`` address, else ``X-Real-IP``)
    picks the host: requests of one end user stick to one host."""

    name = "ip_hash"
    key_source = "client_ip"


class UrlHash(_KeyedHash):
    """The request path (or ``lb_key``) picks the host: good for per-host caches."""

    name = "url_hash"
    key_source = "path"


class ConsistentHash(Strategy):
    """A hash ring (Karger et al., 1997) with ``vnodes`` points per unit of weight and a binary search.

    When one of n hosts leaves or is ejected only its ~1/n share of keys moves: a key walks clockwise to
    the next point of a selectable host. Points come from BLAKE2b of the host URL, so every process builds
    the same ring. The ring is rebuilt only when members or weights change, not on health changes.
    """

    name = "consistent_hash"
    key_source = "path"
    _index_bits: ClassVar[int] = 24
    _walk_limit: ClassVar[int] = 256

    def __init__(self, *, vnodes: int = 100, rng: random.Random | None = None) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        super().__init__(rng=rng)
        self.vnodes = vnodes
        self._ring: list[int] = []
        self._ring_members: tuple[tuple[str, float], ...] = ()
        self._points: dict[tuple[str, int], list[int]] = {}
        self._round_robin = RoundRobin()

    def attach(self, rng: random.Random) -> None:
        super().attach(rng)
        self._round_robin.attach(self._random())

    def update(self, view: PoolView) -> None:
        super().update(view)
        self._round_robin.update(view)
        members = tuple((h.url, h.weight) for h in view.members)
        if members == self._ring_members:
            return
        if len(members) >= 1 << self._index_bits:
            raise ValueError(f"consistent_hash supports fewer than {1 << self._index_bits} hosts")
        # Each host's points are hashed once and kept, so a change of members re-hashes only newcomers.
        points: dict[tuple[str, int], list[int]] = {}
        ring: list[int] = []
        for index, (url, weight) in enumerate(members):
            key = (url, max(1, round(self.vnodes * weight)))
            own = points[key] = self._points.get(key) or [p << self._index_bits for p in hash64_many(*key)]
            ring.extend([point | index for point in own])
        ring.sort()
        self._ring = ring
        self._ring_members = members
        self._points = points

    def pick(self, key: str | None, now: float) -> HostState | None:
        if key is None:
            return self._round_robin.pick(None, now)
        ring = self._ring
        members = self._view.members
        if not ring or not self._view.candidates:
            return None
        mask = (1 << self._index_bits) - 1
        point = hash64(key)
        start = bisect_left(ring, point << self._index_bits)
        size = len(ring)
        for step in range(min(size, self._walk_limit)):
            host = members[ring[(start + step) % size] & mask]
            if host.selectable:
                return host
        candidates = self._view.candidates  # nearly every host is out: do not walk the whole ring
        return candidates[point % len(candidates)]


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        RandomChoice,
        WeightedRandom,
        LeastConnections,
        WeightedLeastConnections,
        LeastResponseTime,
        PowerOfTwoChoices,
        PeakEwma,
        IpHash,
        UrlHash,
        ConsistentHash,
    )
}


def make_strategy(spec: str | Strategy) -> Strategy:
    """A strategy object from its name, or ``spec`` itself when it already is one."""
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str) and spec in STRATEGIES:
        return STRATEGIES[spec]()
    raise ValueError(f"unknown strategy {spec!r}; valid names: {', '.join(STRATEGIES)}")
