"""Service discovery: sources of hosts that ``hosts=`` accepts in place of a list.

A :class:`Discovery` answers ``resolve()`` with the hosts it finds now and how long that answer stays
good. The transports resolve once when built (so a client never starts empty), then keep re-resolving
in the background (a thread for the sync client, an anyio task for the async one) and apply each answer
with ``pool.update``, which keeps the state of hosts that stay, lets hosts that leave finish their
requests and ramps up hosts that join (slow start). A failed or empty answer keeps the last good hosts
and is logged: discovery never empties a pool.

Built in: :class:`DNSDiscovery` (A/AAAA records, or SRV with ports, priorities and weights; TTL-driven;
through dnspython, the ``dns`` extra, when installed or when a name server is given, else the system
resolver) and :class:`FileDiscovery` (a file of hosts, re-read when it changes).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from ._background import TaskLoop, ThreadLoop
from ._connections import Connections, aclose_transports, close_transports
from ._core import Host, HostLike, Pool, check_sni_hostname

__all__ = ["DNSDiscovery", "Discovery", "DiscoveryError", "FileDiscovery", "Resolution"]

logger = logging.getLogger("lbclient")


class DiscoveryError(Exception):
    """A discovery source could not produce hosts (the last good hosts stay in use)."""


@dataclass(frozen=True)
class Resolution:
    """An answer: the hosts, and the seconds it stays good (None: the source does not say)."""

    hosts: Sequence[HostLike]
    ttl: float | None = None

    def __post_init__(self) -> None:
        ttl = self.ttl
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 0
        ):
            raise ValueError(f"Resolution.ttl must be a finite number of seconds >= 0 or None, got {ttl!r}")


def _check_interval(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class Discovery(ABC):
    """A source of hosts. Subclass it for Consul, Kubernetes endpoints, a config service...:
    implement :meth:`resolve` (blocking is fine: it runs on a worker thread in async clients).

    The next refresh comes after the answer's ``ttl``, kept within ``min_interval`` and
    ``max_interval`` seconds.
    """

    def __init__(self, *, min_interval: float = 1.0, max_interval: float = 30.0) -> None:
        owner = type(self).__name__
        self.min_interval = _check_interval(owner, "min_interval", min_interval)
        self.max_interval = _check_interval(owner, "max_interval", max_interval)
        if self.max_interval < self.min_interval:
            raise ValueError(f"{owner}.max_interval {max_interval!r} is below min_interval {min_interval!r}")

    @abstractmethod
    def resolve(self) -> Resolution:
        """The hosts now. Raise :class:`DiscoveryError` (or any error) when they cannot be found."""

    def next_refresh(self, ttl: float | None) -> float:
        """Seconds until the next ``resolve()`` after an answer with ``ttl``."""
        return min(max(ttl if ttl is not None else self.max_interval, self.min_interval), self.max_interval)


RecordType = Literal["A", "AAAA", "SRV"]
#: One address found: (address, port, weight, TTL in seconds or None, the name it was found under).
_Found = tuple[str, int, float, float | None, str]


class DNSDiscovery(Discovery):
    """Every address of a DNS name, as hosts ``scheme://address:port``.

    ``DNSDiscovery("users.internal", port=8000)`` asks for A and AAAA records (``records=("A",)`` for
    one family). ``DNSDiscovery("_http._tcp.users.internal", records=("SRV",))`` asks for SRV records:
    their ports and weights are used and only the lowest priority present (RFC 2782), and their targets'
    addresses are looked up. ``nameservers=["127.0.0.1"], nameserver_port=5353`` asks those servers through dnspython
    (``pip install 'lbclient[dns]'``); without them dnspython uses the system's servers, and without
    dnspython the system resolver answers A/AAAA (it gives no TTL: ``max_interval`` applies). The name
    is asked again when the shortest TTL of its answer runs out, kept within the interval bounds.

    With ``scheme="https"`` the hosts are addresses, but their certificates name the service: each host's
    TLS server name (``sni_hostname``, sent and verified) is the name it was found under (``name``, or
    an SRV record's target) unless ``sni_hostname=`` names another, or is None for none.
    """

    def __init__(
        self,
        name: str,
        port: int = 80,
        *,
        scheme: str = "http",
        records: Sequence[RecordType] = ("A", "AAAA"),
        nameservers: Sequence[str] | None = None,
        nameserver_port: int = 53,
        timeout: float = 2.0,
        weight: float = 1.0,
        min_interval: float = 1.0,
        max_interval: float = 30.0,
        sni_hostname: str | Literal[True] | None = True,
    ) -> None:
        super().__init__(min_interval=min_interval, max_interval=max_interval)
        if not isinstance(name, str) or not name.strip(".") or any(c.isspace() for c in name):
            raise ValueError(f"DNSDiscovery.name must be a DNS name, got {name!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"DNSDiscovery.port must be a TCP port, got {port!r}")
        if scheme not in ("http", "https"):
            raise ValueError(f"DNSDiscovery.scheme must be 'http' or 'https', got {scheme!r}")
        if isinstance(records, str) or not isinstance(records, Sequence):
            raise ValueError(f"DNSDiscovery.records must be a sequence such as ('A', 'AAAA'), got {records!r}")
        unknown = [r for r in records if r not in ("A", "AAAA", "SRV")]
        if not records or unknown or ("SRV" in records and len(records) > 1):
            raise ValueError(f"DNSDiscovery.records must be A and/or AAAA, or SRV alone, got {records!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"DNSDiscovery.weight must be a finite number > 0, got {weight!r}")
        self.name = name
        self.port = port
        self.scheme = scheme
        self.records = tuple(records)
        self.weight = float(weight)
        #: The TLS server name of the hosts found (HTTPS only): the name asked for, by default; for SRV,
        #: each record's target. None: none (the address is verified, as without discovery).
        self.sni_hostname: str | Literal[True] | None = (
            True if sni_hostname is True else check_sni_hostname(sni_hostname, "DNSDiscovery")
        )
        self.timeout = _check_interval("DNSDiscovery", "timeout", timeout)
        self._resolver = _dnspython_resolver(nameservers, nameserver_port, self.timeout)
        if self._resolver is None and (nameservers or "SRV" in self.records):
            raise ValueError(
                "DNSDiscovery with nameservers or SRV records needs dnspython: pip install 'lbclient[dns]'"
            )

    def resolve(self) -> Resolution:
        found: list[_Found]
        if self._resolver is None:
            addresses = _system_addresses(self.name, self.port)
            found = [(address, self.port, self.weight, None, self.name) for address in addresses]
        elif self.records == ("SRV",):
            found = self._srv()
        else:
            found = self._lookup(self.name, self.records, self.port, self.weight)
        if not found:
            raise DiscoveryError(f"DNS name {self.name!r} has no {'/'.join(self.records)} records")
        hosts = {
            f"{self.scheme}://{_netloc(address)}:{port}": (weight, self._sni(owner))
            for address, port, weight, _, owner in found
        }
        ttls = [ttl for _, _, _, ttl, _ in found if ttl is not None]
        # Asked again when the shortest TTL runs out (within the interval bounds).
        # Sorted, so that every client (and every refresh) lists the hosts in the same order.
        ordered = sorted(hosts.items())
        return Resolution(
            [Host(url, weight=weight, sni_hostname=sni) for url, (weight, sni) in ordered],
            min(ttls) if ttls else None,
        )

    def _sni(self, owner: str) -> str | None:
        """The TLS server name of a host found under the DNS name ``owner``."""
        if self.scheme != "https":
            return None
        if self.sni_hostname is True:
            return check_sni_hostname(owner.rstrip("."), "DNSDiscovery")
        return self.sni_hostname

    def _query(self, name: str, record: str) -> Any:
        """dnspython's answer, None when the name has no such records; raises DiscoveryError."""
        import dns.exception
        import dns.resolver

        try:
            return self._resolver.resolve(name, record)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return None
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"DNS lookup of {name!r} ({record}) failed: {exc}") from exc

    def _lookup(self, name: str, families: Sequence[str], port: int, weight: float) -> list[_Found]:
        """Addresses of ``name`` in each family. One family failing is fine while another answers
        (a server may refuse AAAA for a name it only has A records for)."""
        found: list[_Found] = []
        errors: list[DiscoveryError] = []
        for family in families:
            try:
                answer = self._query(name, family)
            except DiscoveryError as exc:
                errors.append(exc)
                continue
            if answer is not None:
                ttl = float(answer.rrset.ttl)
                found += [(item.address, port, weight, ttl, name) for item in answer]
        if errors and not found:
            raise errors[0]
        return found

    def _srv(self) -> list[_Found]:
        answer = self._query(self.name, "SRV")
        if answer is None:
            return []
        records: list[Any] = list(answer)
        best = min(record.priority for record in records)
        chosen = [record for record in records if record.priority == best]
        every_zero = all(record.weight == 0 for record in chosen)
        found: list[_Found] = []
        for record in chosen:
            # SRV weight 0 means "rarely": a small share; if all are 0 they share equally.
            weight = 1.0 if every_zero else max(float(record.weight), 0.01)
            found += self._lookup(record.target.to_text(), ("A", "AAAA"), record.port, weight)
        return found


def _dnspython_resolver(nameservers: Sequence[str] | None, port: int, timeout: float) -> Any:
    try:
        import dns.resolver
    except ImportError:
        return None
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.lifetime = timeout
    resolver.cache = None  # the TTLs drive our refreshes; a cache would hide changes from us
    return resolver


def _system_addresses(name: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DiscoveryError(f"DNS lookup of {name!r} failed: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _netloc(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class FileDiscovery(Discovery):
    """Hosts from a file, one per line (``URL [weight]``; ``#`` starts a comment), re-read when its
    modification time changes, checked every ``min_interval`` seconds (1 by default). Handy with
    config management, or with a sidecar that writes the file. ``sni_hostname`` is the TLS server name
    of every HTTPS host listed (None: each host's own address or name)."""

    def __init__(
        self, path: str | os.PathLike[str], *, min_interval: float = 1.0, sni_hostname: str | None = None
    ) -> None:
        super().__init__(min_interval=min_interval, max_interval=min_interval)
        self.path = Path(path)
        self.sni_hostname = check_sni_hostname(sni_hostname, "FileDiscovery")

    def resolve(self) -> Resolution:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DiscoveryError(f"cannot read hosts file {str(self.path)!r}: {exc}") from exc
        hosts: list[HostLike] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            url, *rest = line.split()
            try:
                weight = float(rest[0]) if rest else 1.0
            except ValueError:
                raise DiscoveryError(f"{self.path}:{number}: weight {rest[0]!r} is not a number") from None
            hosts.append(Host(url, weight=weight, sni_hostname=self.sni_hostname))
        if not hosts:
            raise DiscoveryError(f"hosts file {str(self.path)!r} lists no host")
        return Resolution(hosts, None)


class Refresher:
    """Applies a discovery source's answers to a pool; ``thread()`` or ``task()`` makes its loop."""

    def __init__(self, discovery: Discovery, pool_of: Callable[[], Pool], service: str) -> None:
        self.discovery = discovery
        self._pool_of = pool_of
        self.name = f"lbclient-discovery-{service}"
        self.service = service
        self._first_delay = discovery.min_interval
        #: The client's connections, tidied after each update (the TCP proxy has none).
        self.connections: Connections[Any] | None = None

    def apply(self, answer: Resolution | BaseException) -> float:
        """Update the pool with a good answer; keep the hosts (and log) otherwise. Returns the delay."""
        if isinstance(answer, BaseException):
            logger.warning("%s: discovery failed, keeping %d hosts: %s", self.service, len(self._pool_of()), answer)
            return self.discovery.min_interval
        try:
            self._pool_of().update(answer.hosts)
        except ValueError as exc:
            logger.warning("%s: discovery gave unusable hosts, keeping the last good ones: %s", self.service, exc)
            return self.discovery.min_interval
        return self.discovery.next_refresh(answer.ttl)

    def first(self) -> Sequence[HostLike]:
        """The hosts a pool starts from; a failure here is the caller's error to see. The loops refresh
        after this answer's TTL."""
        try:
            answer = self.discovery.resolve()
        except Exception as exc:
            raise ValueError(f"discovery {self.discovery!r} found no hosts to start with: {exc}") from exc
        self._first_delay = self.discovery.next_refresh(answer.ttl)
        return answer.hosts

    def thread(self) -> ThreadLoop:
        def step(loop: ThreadLoop) -> float:
            answer = self._resolve()
            if loop.stopping.is_set():
                return 0.0  # the client closed while resolve() ran: its answer is not used
            delay = self.apply(answer)
            if self.connections is not None:
                close_transports(self.connections.tidy(self._pool_of()))  # hosts that left, idle: closed now
            return delay

        return ThreadLoop(self.name, step, first_delay=self._first_delay)

    def task(self) -> TaskLoop:
        async def step() -> float:
            # abandon_on_cancel: closing the client never waits for a resolve() that blocks; its answer
            # is dropped, since it is applied here, in the task, which is cancelled by then.
            answer = await anyio.to_thread.run_sync(self._resolve, abandon_on_cancel=True)
            delay = self.apply(answer)
            if self.connections is not None:
                await aclose_transports(self.connections.tidy(self._pool_of()))
            return delay

        return TaskLoop(self.name, step, first_delay=self._first_delay)

    def _resolve(self) -> Resolution | Exception:
        try:
            answer: object = self.discovery.resolve()  # a user's source: checked, not trusted
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good hosts
            return exc
        if not isinstance(answer, Resolution):
            return DiscoveryError(f"{self.discovery!r}.resolve() returned {answer!r}, not a Resolution")
        return answer
