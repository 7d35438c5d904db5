"""A pytest plugin that runs httpx's own client tests through lbclient (``nox -s compat``).

``-p lbclient_compat --lb-mode=client``: ``httpx.Client`` and ``httpx.AsyncClient`` are ``LBClient`` and
``AsyncLBClient``, with every keyword the test gives. The pool is the origin of the test's ``base_url``
(one host, so what the test expects to see sent is what the pool sends), else httpx's test server; so
every relative request goes through the balancer (pick, lease, retries, Host header, URL restored)
and every absolute one through its pass-through.

``--lb-mode=transport``: the clients are httpx's own; a ``transport=`` the test gives is wrapped in a
``LoadBalancingTransport`` (``AsyncLoadBalancingTransport``) whose service is the ``base_url``'s origin,
and without one such a transport, with default inner transports, is mounted for the ``base_url``'s
host.

The tests that are expected to behave differently are listed, each with its reason, in
``expected.toml`` beside this file; they are strict xfails, so a new difference fails the run and so
does one that went away (then the entry is removed).
"""

from __future__ import annotations

import pathlib
import tomllib
from typing import Any

import httpx
import pytest

import lbclient

EXPECTED = pathlib.Path(__file__).with_name("expected.toml")
#: httpx's test server (its ``server`` fixture), the pool of clients whose base_url names no host.
SERVER = "http://127.0.0.1:8000"

_CLIENT, _ASYNC_CLIENT = httpx.Client, httpx.AsyncClient


def _origin(kwargs: dict[str, Any]) -> str | None:
    """The origin the test's ``base_url`` names, or None."""
    base = kwargs.get("base_url")
    if base in (None, ""):
        return None
    url = httpx.URL(base)
    if not url.host or url.scheme not in ("http", "https"):
        return None
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _hosts(kwargs: dict[str, Any]) -> list[str]:
    return [_origin(kwargs) or SERVER]


def _service(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Without a base_url, the test server's origin is the pool's: requests for it are balanced."""
    return {} if _origin(kwargs) else {"service": SERVER}


class LBCompatClient(lbclient.LBClient):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(_hosts(kwargs), **_service(kwargs), **kwargs)


class AsyncLBCompatClient(lbclient.AsyncLBClient):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(_hosts(kwargs), **_service(kwargs), **kwargs)


def _through_transport(kwargs: dict[str, Any], transport_class: Any) -> dict[str, Any]:
    origin = _origin(kwargs)
    inner = kwargs.pop("transport", None)
    if inner is not None:
        kwargs["transport"] = transport_class(_hosts(kwargs), transport=inner, service=origin or SERVER)
    else:
        origin = origin or SERVER
        keywords = ("verify", "cert", "trust_env", "http1", "http2", "limits")
        options = {key: kwargs[key] for key in keywords if key in kwargs}
        balancer = transport_class([origin], service=origin, transport_options=options)
        host = httpx.URL(origin).host
        pattern = f"all://[{host}]" if ":" in host else f"all://{host}"
        kwargs["mounts"] = {pattern: balancer, **(kwargs.get("mounts") or {})}
    return kwargs


class MountedCompatClient(_CLIENT):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_through_transport(kwargs, lbclient.LoadBalancingTransport))


class AsyncMountedCompatClient(_ASYNC_CLIENT):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_through_transport(kwargs, lbclient.AsyncLoadBalancingTransport))


MODES = {
    "httpx": (_CLIENT, _ASYNC_CLIENT),  # httpx itself: the baseline
    "client": (LBCompatClient, AsyncLBCompatClient),
    "transport": (MountedCompatClient, AsyncMountedCompatClient),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lb-mode", choices=sorted(MODES), default="client", help="how lbclient stands in for httpx")


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--lb-mode")
    httpx.Client, httpx.AsyncClient = MODES[mode]  # type: ignore[misc]
    with EXPECTED.open("rb") as file:
        config.stash[_expected_key] = tomllib.load(file).get(mode, {})


_expected_key = pytest.StashKey[dict[str, str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expected = dict(config.stash[_expected_key])
    for item in items:
        reason = expected.pop(item.nodeid, None)
        if reason is None:
            # An entry may name a test without its parameters: every case of it differs.
            reason = expected.get(item.nodeid.split("[", 1)[0])
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    unknown = [name for name in expected if not any(item.nodeid.split("[", 1)[0] == name for item in items)]
    if unknown:
        raise pytest.UsageError(f"expected.toml names tests that do not exist: {unknown}")
