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

__all__ = ["PEAK_RELAX", "Host", "HostLike", "HostState", "check_max_in_flight", "check_sni_hostname", "parse_hosts"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9_.-]*[a-z0-9])?")
_HEX_LABEL = re.compile(r"0[xX][0-9a-fA-F]*")
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
    hostname = _canonical_host(parts.hostname.lower(), raw)
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _validate_weight(weight: object, url: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"weight of host {url!r} must be a number, got {weight!r}")
    try:
        value = float(weight)
    except OverflowError:
        value = math.inf  # an int beyond float range (10**400): as unusable as an infinite weight
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"weight of host {url!r} must be a finite number >= 0, got {weight!r}")
    return value


def _canonical_host(hostname: str, raw: object) -> str:
    """One spelling per host, so that two spellings of one host are caught as duplicates and a host that
    returns matches its earlier self: IPv6 compressed (``0:0::1`` is ``::1``), IPv4 as WHATWG and httpx's
    resolver read it (a name whose last label is a number is an address: ``127.1`` is ``127.0.0.1``),
    and a name in its IDNA ASCII form (``bücher.example`` is ``xn--bcher-kva.example``)."""
    if ":" in hostname:
        try:
            return ipaddress.IPv6Address(hostname).compressed
        except ValueError:
            raise ValueError(f"host URL {raw!r} has an invalid IPv6 address {hostname!r}") from None
    if _ends_in_number(hostname):
        return str(_whatwg_ipv4(hostname, raw))
    return _ascii_hostname(hostname, f"host URL {raw!r} has an invalid host name {hostname!r}")


def _ascii_hostname(hostname: str, error: str) -> str:
    try:
        ascii_name = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(error) from None
    if not _HOSTNAME.fullmatch(ascii_name):
        raise ValueError(error)
    return ascii_name


def _ends_in_number(hostname: str) -> bool:
    """WHATWG URL's "ends in a number": the last label (a trailing dot aside) is digits or 0x-hex."""
    last = _labels(hostname)[-1]
    return (last.isdecimal() and last.isascii()) or bool(_HEX_LABEL.fullmatch(last))


def _labels(hostname: str) -> list[str]:
    """The dot-separated labels, a trailing dot (an absolute name) aside."""
    labels = hostname.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    return labels


def _whatwg_ipv4(hostname: str, raw: object) -> ipaddress.IPv4Address:
    """WHATWG URL's IPv4 parser: up to four parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the bytes that the others leave (``127.1``, ``0x7f.0.0.1`` and ``2130706433`` are one host)."""
    error = f"host URL {raw!r} has a host {hostname!r} that ends in a number but is not an IPv4 address"
    parts = _labels(hostname)
    if len(parts) > 4:
        raise ValueError(error)
    numbers_: list[int] = []
    for part in parts:
        base, digits = 10, part
        if part[:2] in ("0x", "0X"):
            base, digits = 16, part[2:]
        elif len(part) > 1 and part.startswith("0"):
            base, digits = 8, part[1:]
        if digits == "":
            value = 0 if base == 16 else -1
        else:
            try:
                value = int(digits, base) if digits.isascii() and digits.isalnum() else -1
            except ValueError:
                value = -1
        if value < 0:
            raise ValueError(error)
        numbers_.append(value)
    *head, last = numbers_
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers_)):
        raise ValueError(error)
    address = last + sum(n << (8 * (3 - i)) for i, n in enumerate(head))
    return ipaddress.IPv4Address(address)


def check_max_in_flight(value: object, name: str = "max_in_flight") -> int | None:
    """``max_in_flight`` as given: None (no cap) or an int >= 1; ``name`` says whose it is."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    return value


def check_sni_hostname(value: object, owner: str) -> str | None:
    """A TLS server name (``sni_hostname=``) as given: None, or a DNS host name, not an address (RFC 6066
    3), in lower-case IDNA ASCII; ``owner`` says whose it is in the error."""
    if value is None:
        return None
    error = f"sni_hostname of {owner} must be a DNS host name (not an IP address), got {value!r}"
    if not isinstance(value, str) or not value or ":" in value:
        raise ValueError(error)
    name = value.lower()
    if _ends_in_number(name):
        raise ValueError(error)
    return _ascii_hostname(name, error)


@dataclass(frozen=True)
class Host:
    """One backend of a pool: a base URL (with an optional path prefix) and a weight.

    ``Host("10.0.0.1:8000")`` gets ``http://``; ``Host("https://b.internal/v1", weight=3)`` receives three
    times the share of a weight-1 host and ``/v1`` is joined in front of every request path. Weight 0
    drains the host: it keeps its in-flight requests but receives no new ones. ``metadata`` is free for
    the user (zone, version, ...) and ignored by the balancer.

    The URL is kept in one spelling per host (lower case, default port dropped, IPv6 compressed, IPv4 as
    WHATWG reads it so ``127.1`` is ``127.0.0.1``, names in IDNA ASCII form), so two spellings of one
    host are caught as duplicates and a host that returns keeps its state.

    Keyword-only:

    - ``max_in_flight``: the most requests in flight to this host (an int >= 1), or None for the pool's
      default. A host at its cap is skipped by every strategy until one of its requests ends (Envoy's
      circuit breaker ``max_requests``, nginx's ``max_conns``).
    - ``sni_hostname``: the TLS server name sent (SNI) and verified for an HTTPS host, while the connection
      goes to the URL's own address; a DNS name (not an IP address), kept in lower-case IDNA ASCII form.
      None: the client's, else the URL's host.
    """

    url: str
    weight: float = 1.0
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    max_in_flight: int | None = field(default=None, kw_only=True)
    sni_hostname: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        url = _normalize_url(self.url)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "weight", _validate_weight(self.weight, url))
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"metadata of host {url!r} must be a mapping, got {self.metadata!r}")
        check_max_in_flight(self.max_in_flight, f"max_in_flight of host {url!r}")
        object.__setattr__(self, "sni_hostname", check_sni_hostname(self.sni_hostname, f"host {url!r}"))

    @property
    def prefix(self) -> str:
        """The path prefix joined in front of request paths ("" when there is none)."""
        return urlsplit(self.url).path


HostLike = str | Host | Mapping[str, Any]

_MAPPING_KEYS = frozenset({"url", "weight", "metadata", "max_in_flight", "sni_hostname"})


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
        return Host(
            item["url"],
            item.get("weight", 1.0),
            item.get("metadata", {}),
            max_in_flight=item.get("max_in_flight"),
            sni_hostname=item.get("sni_hostname"),
        )
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
    ``max_in_flight`` is the host's cap on requests in flight (its own, else the pool's; None: no cap)
    and ``overloaded`` is True while ``outstanding`` is at that cap: no strategy picks it then.
    ``consecutive_failures`` counts gateway failures in a row (transport errors, 502, 503, 504) and
    ``consecutive_errors`` failures of any kind in a row (every 5xx too).
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
        "consecutive_errors",
        "window_requests",
        "window_failures",
        "ejections",
        "times_ejected",
        "ejected_until",
        "returned_at",
        "checks_passed",
        "checks_failed",
        "ramp_started_at",
        "max_in_flight",
        "overloaded",
        "candidate",
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
        self.consecutive_errors = 0
        #: Requests ended, and how many of them failed, in the current success-rate interval.
        self.window_requests = 0
        self.window_failures = 0
        self.ejections = 0
        #: Ejections since the host joined (``ejections`` is forgiven after a healthy stretch).
        self.times_ejected = 0
        self.ejected_until: float | None = None
        self.returned_at: float | None = None
        self.checks_passed = 0
        self.checks_failed = 0
        self.ramp_started_at: float | None = None
        self.max_in_flight = host.max_in_flight
        self.overloaded = False
        #: True while the host is one of the pool's candidates (available, or any member in panic).
        self.candidate = False
        #: True while the current picker may choose this host: a candidate, and not overloaded
        #: (maintained by the pool).
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
        if self.overloaded:
            flags.append("overloaded")
        latency = "-" if self.ewma_latency is None else f"{self.ewma_latency * 1000:.1f}ms"
        return (
            f"<HostState {self.url} weight={self.weight:g} outstanding={self.outstanding} "
            f"requests={self.requests} failures={self.failures} ewma={latency}"
            + (f" {' '.join(flags)}" if flags else "")
            + ">"
        )
