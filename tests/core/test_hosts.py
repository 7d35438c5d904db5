"""Host parsing and validation (CONTRACT section 2) and the pool's own argument checks."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbclient._core import STRATEGIES, Host, Pool, make_strategy
from lbclient.testing import FakeClock

FAST = settings(derandomize=True, database=None, max_examples=150, deadline=None)


def make_pool(hosts: Any, strategy: Any = "round_robin", **kwargs: Any) -> Pool:
    return Pool(hosts, strategy, clock=FakeClock(), rng=random.Random(0), **kwargs)


# --- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("a", "http://a"),
        ("127.0.0.1:8001", "http://127.0.0.1:8001"),
        ("  127.0.0.1:8001  ", "http://127.0.0.1:8001"),
        ("http://a/", "http://a"),
        ("http://a:80", "http://a"),
        ("a:80", "http://a"),
        ("http://a:80/", "http://a"),
        ("https://a:443/", "https://a"),
        ("https://a:80", "https://a:80"),
        ("http://a:443", "http://a:443"),
        ("https://b.internal:8443/v1", "https://b.internal:8443/v1"),
        ("https://b.internal:8443/v1/", "https://b.internal:8443/v1"),
        ("b.internal/api/v2/", "http://b.internal/api/v2"),
        ("HTTP://Example.COM:8080/Api", "http://example.com:8080/Api"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("https://[::1]:443", "https://[::1]"),
    ],
)
def test_url_normalisation(raw: str, url: str) -> None:
    assert Host(raw).url == url
    # the pool applies the same normalisation to plain strings
    assert make_pool([raw]).hosts[0].url == url


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        ("a", ""),
        ("http://a/", ""),
        ("https://b.internal:8443/v1", "/v1"),
        ("https://b.internal:8443/v1/", "/v1"),
        ("a:9000/api/v2/", "/api/v2"),
    ],
)
def test_path_prefix_kept(raw: str, prefix: str) -> None:
    assert Host(raw).prefix == prefix
    assert Host(raw).url.endswith(prefix)


def test_host_default_weight_and_number_types() -> None:
    assert Host("a").weight == 1.0
    assert Host("a", weight=3).weight == 3.0
    assert Host("a", weight=0.25).weight == 0.25
    assert Host("a", weight=0).weight == 0.0
    assert Host("a:80") == Host("http://a/")
    assert Host("a", weight=2) != Host("a", weight=3)


def test_mapping_form_and_mixed_list() -> None:
    pool = make_pool(
        [
            {"url": "a:8001", "weight": 2},
            {"url": "https://b/v1/"},
            "c",
            Host("https://d:8443", weight=3),
            {"url": "e", "weight": 0.5, "metadata": {"zone": "x"}},
        ]
    )
    assert [(h.url, h.weight) for h in pool.hosts] == [
        ("http://a:8001", 2.0),
        ("https://b/v1", 1.0),
        ("http://c", 1.0),
        ("https://d:8443", 3.0),
        ("http://e", 0.5),
    ]
    assert pool.hosts[4].host.metadata == {"zone": "x"}
    assert pool.hosts[1].host.prefix == "/v1"


def test_a_drained_host_is_accepted() -> None:
    pool = make_pool(["a", {"url": "b", "weight": 0}])
    assert [h.weight for h in pool.hosts] == [1.0, 0.0]


# --- errors: ValueError naming the offending value ---------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "needle"),
    [
        ([], "[]"),
        ((), "[]"),
        (["ftp://x"], "ftp://x"),
        (["a", "ftp://x"], "ftp://x"),
        (["ws://sock:9000"], "ws://sock:9000"),
        (["file:///etc/passwd"], "file:///etc/passwd"),
        ([""], "''"),
        (["http://"], "http://"),
        (["a:notaport"], "a:notaport"),
        (["http://user:pw@a"], "http://user:pw@a"),
        (["http://a/?q=1"], "http://a/?q=1"),
        ([{"url": "a", "weight": -1}], "-1"),
        ([{"url": "a", "weight": -0.5}], "-0.5"),
        ([{"url": "a", "weight": "heavy"}], "heavy"),
        ([{"url": "a", "weight": "3"}], "'3'"),
        ([{"url": "a", "weight": None}], "None"),
        ([{"url": "a", "weight": True}], "True"),
        ([{"url": "a", "weight": False}, "b"], "False"),
        ([{"url": "a", "weight": math.nan}], "nan"),
        ([{"url": "a", "weight": math.inf}], "inf"),
        ([{"url": "a", "weight": 0}, {"url": "b", "weight": 0}], "http://b"),
        ([{"url": "a", "weight": 0}], "http://a"),
        (["a", "a"], "http://a"),
        (["a:80", "http://a"], "http://a"),
        (["http://A/", "http://a"], "http://a"),
        (["https://x:443", "x", "https://x/"], "https://x"),
        ([{"weight": 2}], "weight"),
        ([{"url": "a", "wieght": 2}], "wieght"),
        ([42], "42"),
        ("http://a", "http://a"),
    ],
)
def test_bad_hosts_raise_value_error_naming_the_value(hosts: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make_pool(hosts)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("weight", "needle"),
    [(-1, "-1"), ("x", "'x'"), (True, "True"), (None, "None"), (math.nan, "nan"), ([1], "[1]")],
)
def test_host_rejects_bad_weight(weight: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        Host("a", weight=weight)
    assert needle in str(info.value)


def test_same_url_different_scheme_is_not_a_duplicate() -> None:
    pool = make_pool(["https://a", "http://a", "http://a:8080"])
    assert [h.url for h in pool.hosts] == ["https://a", "http://a", "http://a:8080"]


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=None) as info:
        make_pool(["a"], "fastest_please")
    message = str(info.value)
    assert "fastest_please" in message
    for name in STRATEGIES:
        assert name in message
    with pytest.raises(ValueError, match="42"):
        make_strategy(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, 2, -1, math.nan, True, "0.5", None])
def test_panic_threshold_outside_0_1(threshold: Any) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make_pool(["a"], panic_threshold=threshold)
    assert repr(threshold) in str(info.value)


@pytest.mark.parametrize("threshold", [0, 0.0, 0.5, 1, 1.0])
def test_panic_threshold_bounds_accepted(threshold: float) -> None:
    make_pool(["a", "b"], panic_threshold=threshold)


@pytest.mark.parametrize("decay", [0, -1.0, "10", True])
def test_ewma_decay_must_be_positive(decay: Any) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make_pool(["a"], ewma_decay=decay)
    assert repr(decay) in str(info.value)


def test_update_validates_like_the_constructor_and_keeps_the_old_set() -> None:
    pool = make_pool(["a", "b"])
    for bad, needle in [([], "[]"), (["ftp://x"], "ftp://x"), (["a", "a:80"], "http://a")]:
        with pytest.raises(ValueError, match=None) as info:
            pool.update(bad)
        assert needle in str(info.value)
    assert [h.url for h in pool.hosts] == ["http://a", "http://b"]


# --- properties ---------------------------------------------------------------------------------------

_labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_hostnames = st.lists(_labels, min_size=1, max_size=3).map(".".join)
_paths = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True), max_size=3).map(
    lambda parts: "".join("/" + p for p in parts)
)


@FAST
@given(
    scheme=st.sampled_from(["", "http://", "https://", "HTTP://", "Https://"]),
    host=_hostnames,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=_paths,
    slash=st.booleans(),
)
def test_normalisation_is_idempotent_and_canonical(
    scheme: str, host: str, port: int | None, path: str, slash: bool
) -> None:
    raw = f"{scheme}{host}{'' if port is None else f':{port}'}{path}{'/' if slash else ''}"
    url = Host(raw).url
    assert Host(url).url == url
    assert not url.endswith("/")
    real_scheme = scheme.lower().rstrip(":/") or "http"
    assert url.startswith(f"{real_scheme}://{host}")
    default = {"http": 80, "https": 443}[real_scheme]
    if port is None or port == default:
        assert url == f"{real_scheme}://{host}{path}"
    else:
        assert url == f"{real_scheme}://{host}:{port}{path}"
    assert Host(raw).prefix == path


# --- one spelling per host -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spellings", "url"),
    [
        (["127.1:8000", "127.0.0.1:8000", "0x7f.0.0.1:8000", "0177.0.0.1:8000", "2130706433:8000"], "127.0.0.1:8000"),
        (["10.1.2:80", "10.1.0.2"], "10.1.0.2"),
        (["[0:0::1]:8000", "[::1]:8000", "[0000:0000:0000:0000:0000:0000:0000:0001]:8000"], "[::1]:8000"),
        (["[2001:DB8::1]", "[2001:db8:0:0::1]"], "[2001:db8::1]"),
        (
            ["bücher.example", "BÜCHER.example", "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE"],
            "xn--bcher-kva.example",
        ),
    ],
)
def test_spellings_of_one_host_are_one_host(spellings: list[str], url: str) -> None:
    assert {Host(spelling).url for spelling in spellings} == {f"http://{url}"}
    for other in spellings[1:]:
        with pytest.raises(ValueError, match="listed twice"):
            make_pool([spellings[0], other])


def test_a_host_that_returns_in_another_spelling_keeps_its_state() -> None:
    pool = make_pool(["127.0.0.1:8000", "[::1]:8000", "bücher.example"])
    states = pool.hosts
    for state in states:
        state.requests = 7
    pool.update(["127.1:8000", "[0:0::1]:8000", "xn--bcher-kva.example"])
    assert [s is t for s, t in zip(pool.hosts, states, strict=True)] == [True, True, True]


@pytest.mark.parametrize("raw", ["1.2.3.4.5", "256.0.0.1", "1.2.65536", "0x1g.1", "08.1.1.1", "a.b.1", "example.0x10"])
def test_a_name_ending_in_a_number_must_be_an_ipv4_address(raw: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(raw))):
        Host(raw)


def test_a_weight_beyond_float_range_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"weight of host 'http://a' must be a finite number >= 0, got 1000"):
        Host("a", weight=10**400)
    with pytest.raises(ValueError, match="weight"):
        make_pool([{"url": "a", "weight": -(10**400)}])


# --- max_in_flight and sni_hostname -------------------------------------------------------------------------


def test_max_in_flight_and_sni_hostname_are_kept() -> None:
    host = Host("https://10.0.0.1:8443", max_in_flight=8, sni_hostname="API.Bücher.Example")
    assert (host.max_in_flight, host.sni_hostname) == (8, "api.xn--bcher-kva.example")
    assert Host("a").max_in_flight is None
    assert Host("a").sni_hostname is None
    assert Host("a", max_in_flight=2) != Host("a", max_in_flight=3)
    [mapped] = make_pool([{"url": "a", "max_in_flight": 2, "sni_hostname": "b.internal"}]).hosts
    assert (mapped.host.max_in_flight, mapped.host.sni_hostname, mapped.max_in_flight) == (2, "b.internal", 2)
    with pytest.raises(TypeError):
        Host("a", 1.0, {}, 4)  # type: ignore[misc]  # keyword only


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, math.inf])
def test_max_in_flight_must_be_a_positive_int(value: Any) -> None:
    message = rf"max_in_flight of host 'http://a' must be an int >= 1 or None, got {value!r}"
    with pytest.raises(ValueError, match=message):
        Host("a", max_in_flight=value)


@pytest.mark.parametrize("value", ["", "1.2.3.4", "127.1", "::1", "[::1]", "a..b", "a b", "-a.example", 5, b"a"])
def test_sni_hostname_must_be_a_dns_name(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"sni_hostname of host 'http://a' .* got {re.escape(repr(value))}"):
        Host("a", sni_hostname=value)
