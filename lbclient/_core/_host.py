"""Hosts: the validated configuration of one backend, and its live state in a pool."""

from __future__ import annotations

import ipaddress
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PEAK_RELAX", "Host", "HostLike", "HostState", "check_sni_hostname", "parse_hosts"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9_.-]*[a-z0-9])?")
#: Time constant (seconds) with which a host's peak latency relaxes back toward its EWMA.
PEAK_RELAX = 0.3


def _normalize_url(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"host URL must be a non-empty string, got {raw!r}")
    text = raw.strip()
    if any(ord(char) < 33 or ord(char) == 127 for char in text):
        raise ValueError(f"host URL {raw!r} contains whitespace or control characters")
    candidate = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"host URL {raw!r} is not valid: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"host URL {raw!r} is not http(s): scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"host URL {raw!r} has no host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"host URL {raw!r} carries credentials; pass auth= to the client instead")
    if parts.query or parts.fragment:
        raise ValueError(f"host URL {raw!r} must not have a query or fragment")
    hostname = parts.hostname.lower()
    _check_hostname(hostname, raw)
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _validate_weight(weight: object, url: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"weight of host {url!r} must be a number, got {weight!r}")
    if not math.isfinite(float(weight)) or weight < 0:
        raise ValueError(f"weight of host {url!r} must be a finite number >= 0, got {weight!r}")
    return float(weight)


def _check_hostname(hostname: str, raw: object) -> None:
    if ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise ValueError(f"host URL {raw!r} has an invalid IPv6 address {hostname!r}") from None
        return
    try:
        ascii_name = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"host URL {raw!r} has an invalid host name {hostname!r}") from None
    if not _HOSTNAME.fullmatch(ascii_name):
        raise ValueError(f"host URL {raw!r} has an invalid host name {hostname!r}")


def check_sni_hostname(value: object, owner: str) -> str | None:
    """A TLS server name (``sni_hostname=``): None, or a DNS host name, not an address (RFC 6066 3),
    returned in lower-case ASCII (IDNA)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip(".") or value != value.strip():
        raise ValueError(f"{owner} sni_hostname must be a DNS host name or None, got {value!r}")
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError(f"{owner} sni_hostname must be a DNS name, not an IP address: got {value!r}")
    try:
        name = value.rstrip(".").lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{owner} sni_hostname {value!r} is not a valid host name") from None
    if not _HOSTNAME.fullmatch(name):
        raise ValueError(f"{owner} sni_hostname {value!r} is not a valid host name")
    return name


@dataclass(frozen=True)
class Host:
    """One backend of a pool: a base URL (with an optional path prefix) and a weight.

    ``Host("10.0.0.1:8000")`` gets ``http://``; ``Host("https://b.internal/v1", weight=3)`` receives three
    times the share of a weight-1 host and ``/v1`` is joined in front of every request path. Weight 0
    drains the host: it keeps its in-flight requests but receives no new ones. ``metadata`` is free for
    the user (zone, version, ...) and ignored by the balancer.
    """

    url: str
    weight: float = 1.0
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    sni_hostname: str | None = None

    def __post_init__(self) -> None:
        url = _normalize_url(self.url)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "weight", _validate_weight(self.weight, url))
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"metadata of host {url!r} must be a mapping, got {self.metadata!r}")
        object.__setattr__(self, "sni_hostname", check_sni_hostname(self.sni_hostname, f"host {url!r}:"))

    @property
    def prefix(self) -> str:
        """The path prefix joined in front of request paths ("" when there is none)."""
        return urlsplit(self.url).path


HostLike = str | Host | Mapping[str, Any]

_MAPPING_KEYS = frozenset({"url", "weight", "metadata", "sni_hostname"})


def _to_host(item: object) -> Host:
    if isinstance(item, Host):
        return item
    if isinstance(item, str):
        return Host(item)
    if isinstance(item, Mapping):
        unknown = set(item) - _MAPPING_KEYS
        if unknown:
            raise ValueError(f"host {dict(item)!r} has unknown keys {sorted(unknown)!r}")
        if "url" not in item:
            raise ValueError(f"host {dict(item)!r} has no 'url'")
        return Host(item["url"], item.get("weight", 1.0), item.get("metadata", {}), item.get("sni_hostname"))
    raise ValueError(f"host must be a URL string, a Host or a mapping, got {item!r}")


def parse_hosts(hosts: Iterable[HostLike]) -> list[Host]:
    """Validate a host list: non-empty, no duplicates, at least one host with weight > 0."""
    if isinstance(hosts, (str, bytes, Host, Mapping)) or not isinstance(hosts, Iterable):
        raise ValueError(f"hosts must be a non-empty sequence of hosts, got {hosts!r}")
    parsed = [_to_host(item) for item in hosts]
    if not parsed:
        raise ValueError("hosts must not be empty: got []")
    seen: set[str] = set()
    for host in parsed:
        if host.url in seen:
            raise ValueError(f"host {host.url!r} is listed twice")
        seen.add(host.url)
    if all(host.weight == 0 for host in parsed):
        raise ValueError(f"every host has weight 0, so none can take requests: {[h.url for h in parsed]!r}")
    return parsed


class HostState:
    """The live state of one host in a pool, updated as requests start and end.

    Read it through ``pool.hosts``; the pool mutates it under its lock. ``ewma_latency`` is a
    time-decayed moving average of response latency in seconds (``None`` until the first response);
    ``peak_ewma`` jumps up to any slower sample at once and relaxes back toward ``ewma_latency`` within
    about ``PEAK_RELAX`` seconds (a host that turned slow costs more at once; one stall is soon forgotten).
    ``effective_weight`` is ``weight`` scaled down while the host ramps up after joining or returning
    (slow start); weighted strategies use it. ``ejected_until`` is the monotonic time at which an
    ejected host returns; ``ejections`` counts its recent ejections (the back-off multiplier).
    """

    __slots__ = (
        "host",
        "url",
        "weight",
        "effective_weight",
        "healthy",
        "ejected",
        "outstanding",
        "inflight_started",
        "inflight_timed",
        "requests",
        "failures",
        "ewma_latency",
        "peak_ewma",
        "last_sample_at",
        "latency_samples",
        "consecutive_failures",
        "ejections",
        "times_ejected",
        "ejected_until",
        "returned_at",
        "checks_passed",
        "checks_failed",
        "ramp_started_at",
        "selectable",
        "left",
    )

    def __init__(self, host: Host) -> None:
        self.host = host
        self.url = host.url
        self.weight = host.weight
        self.effective_weight = host.weight
        self.healthy = True
        self.ejected = False
        self.outstanding = 0
        #: The sum of the start times of the requests in flight whose outcome is still awaited (their mean
        #: age is a latency signal), and how many they are: a settled lease (a TCP connection that is up)
        #: stays in ``outstanding`` but leaves these.
        self.inflight_started = 0.0
        self.inflight_timed = 0
        self.requests = 0
        self.failures = 0
        self.ewma_latency: float | None = None
        self.peak_ewma: float | None = None
        self.last_sample_at = 0.0
        #: Latency samples folded in so far.
        self.latency_samples = 0
        self.consecutive_failures = 0
        self.ejections = 0
        #: Ejections since the host joined (``ejections`` is forgiven after a healthy stretch).
        self.times_ejected = 0
        self.ejected_until: float | None = None
        self.returned_at: float | None = None
        self.checks_passed = 0
        self.checks_failed = 0
        self.ramp_started_at: float | None = None
        #: True while the current picker may choose this host (maintained by the pool).
        self.selectable = False
        #: True once the host left the pool: this state then only finishes its requests in flight (a host
        #: that comes back gets a new state).
        self.left = False

    @property
    def available(self) -> bool:
        """Takes new requests outside panic: weight > 0, healthy and not ejected."""
        return self.weight > 0 and self.healthy and not self.ejected

    def record_latency(self, sample: float, now: float, decay: float) -> None:
        """Fold one latency sample into both averages; ``decay`` is the EWMA's time constant in seconds.

        Finagle and Linkerd keep one value that jumps to a slower sample and then decays with the EWMA's
        10 s: one client-side stall (a GC pause, a busy event loop) then makes a fast host look as slow as
        a really slow one for tens of seconds. Here the peak relaxes toward the EWMA on its own, shorter
        time constant, while the EWMA itself keeps the 10 s memory.
        """
        self.latency_samples += 1
        if self.ewma_latency is None or self.peak_ewma is None:
            self.ewma_latency = self.peak_ewma = sample
        else:
            elapsed = max(now - self.last_sample_at, 0.0)
            # Until a host has a time constant's worth of samples, the plain mean of its samples: else the
            # first one (often with a connection set-up in it) would weigh for ~10 s however many follow.
            share = max(-math.expm1(-elapsed / decay), 1.0 / self.latency_samples)
            ewma = self.ewma_latency = self.ewma_latency + (sample - self.ewma_latency) * share
            relaxed = ewma + (self.peak_ewma - ewma) * math.exp(-elapsed / PEAK_RELAX)
            self.peak_ewma = max(sample, relaxed)
        self.last_sample_at = now

    def inflight_age(self, now: float) -> float:
        """The mean age of the requests in flight, in seconds (0 when none): a host that stopped answering
        shows here before any response reports it."""
        return now - self.inflight_started / self.inflight_timed if self.inflight_timed else 0.0

    def peak_ewma_at(self, now: float, decay: float) -> float:
        """Peak EWMA as of ``now``: relaxed toward the EWMA, and the whole decaying toward 0 (time constant
        ``decay``) while no sample arrives, so that a host shunned as slow is probed again after a while
        instead of being shunned forever (Finagle's PeakEwma decays to 0 the same way)."""
        if self.peak_ewma is None or self.ewma_latency is None:
            return 0.0
        elapsed = max(now - self.last_sample_at, 0.0)
        if not elapsed:
            return self.peak_ewma
        relaxed = self.ewma_latency + (self.peak_ewma - self.ewma_latency) * math.exp(-elapsed / PEAK_RELAX)
        return relaxed * math.exp(-elapsed / decay)

    def __repr__(self) -> str:
        flags = [] if self.healthy else ["unhealthy"]
        if self.ejected:
            flags.append("ejected")
        if self.weight == 0:
            flags.append("drained")
        latency = "-" if self.ewma_latency is None else f"{self.ewma_latency * 1000:.1f}ms"
        return (
            f"<HostState {self.url} weight={self.weight:g} outstanding={self.outstanding} "
            f"requests={self.requests} failures={self.failures} ewma={latency}"
            + (f" {' '.join(flags)}" if flags else "")
            + ">"
        )
