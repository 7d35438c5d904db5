"""Where the balancing clients keep httpx's behaviour, and the few places where the pool differs on
purpose: environment proxies, the caller's transport, base_url, bad URLs, the Host header and
``bypass=False``. Real servers on 127.0.0.1; sync, asyncio and trio."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import lbclient
from lbclient import AsyncLBClient, LBClient, NotInPoolError

from conftest import Flavor

pytestmark = pytest.mark.anyio


async def _raises(flavor: Flavor, client: Any, url: str, error: type[BaseException]) -> BaseException:
    with pytest.raises(error) as caught:
        await flavor.get(client, url)
    return caught.value


# -- bypass=False ----------------------------------------------------------------------------------------


async def test_bypass_false_keeps_every_request_in_the_pool(flavor: Flavor, make_backends: Any) -> None:
    a, other = make_backends(2)
    async with flavor.client([a.url], bypass=False) as client:
        assert client.bypass is False
        assert (await flavor.get(client, "/x")).json()["id"] == "a"
        for url in (f"{other.url}/y", f"http://localhost:{other.port}/y"):
            error = await _raises(flavor, client, url, NotInPoolError)
            assert isinstance(error, httpx.UnsupportedProtocol)
            assert url in str(error)
    assert other.count() == 0
    assert a.count() == 1


async def test_bypass_false_beats_proxies_from_the_environment_and_proxy(
    flavor: Flavor, make_backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, other, proxy = make_backends(3)
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    async with flavor.client([a.url], bypass=False, proxy=None) as client:
        await _raises(flavor, client, f"{other.url}/y", NotInPoolError)
    async with flavor.client([a.url], bypass=False, proxy=proxy.url, trust_env=False) as client:
        await _raises(flavor, client, f"{other.url}/y", NotInPoolError)
    assert other.count() == proxy.count() == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_bypass_false_on_a_transport_mounted_for_all(is_async: bool, make_backends: Any) -> None:
    a, other = make_backends(2)
    if is_async:
        transport = lbclient.AsyncLoadBalancingTransport([a.url], service="users", bypass=False)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get("http://users/x")).json()["id"] == "a"
            with pytest.raises(NotInPoolError, match=other.url):
                await client.get(f"{other.url}/y")
    else:
        sync = lbclient.LoadBalancingTransport([a.url], service="users", bypass=False)
        with httpx.Client(transport=sync) as client:
            assert client.get("http://users/x").json()["id"] == "a"
            with pytest.raises(NotInPoolError, match=other.url):
                client.get(f"{other.url}/y")
    assert other.count() == 0


def test_bypass_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="bypass"):
        LBClient(["a:1"], bypass="no")  # type: ignore[arg-type]


# -- proxies and the caller's transport ------------------------------------------------------------------


async def test_pass_through_uses_proxies_from_the_environment(
    flavor: Flavor, make_backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, proxy = make_backends(2)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    async with flavor.client([a.url]) as client:
        # The proxy (a Backend) answers itself: the request went through it, not to example.org.
        assert (await flavor.get(client, "http://example.org/out")).json()["id"] == "b"
        assert (await flavor.get(client, "/in")).json()["id"] == "a"  # hosts are reached directly
    assert proxy.count() == 1
    async with flavor.client([a.url], trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await flavor.get(client, "http://example.invalid/out")
    assert proxy.count() == 1


async def test_pass_through_uses_proxy(flavor: Flavor, make_backends: Any) -> None:
    a, proxy = make_backends(2)
    async with flavor.client([a.url], proxy=proxy.url) as client:
        assert (await flavor.get(client, "http://example.org/out")).json()["id"] == "b"


class _Recording(httpx.MockTransport):
    def __init__(self) -> None:
        super().__init__(lambda request: httpx.Response(200, json={"url": str(request.url)}))
        self.events: list[str] = []

    def __enter__(self) -> _Recording:
        self.events.append("enter")
        return self

    def __exit__(self, *args: object) -> None:
        self.events.append("exit")
        self.close()

    def close(self) -> None:
        self.events.append("close")

    async def __aenter__(self) -> _Recording:
        self.events.append("enter")
        return self

    async def __aexit__(self, *args: object) -> None:
        self.events.append("exit")
        await self.aclose()

    async def aclose(self) -> None:
        self.events.append("close")


async def test_the_callers_transport_is_entered_and_exited_once(flavor: Flavor) -> None:
    inner = _Recording()
    async with flavor.client(["http://a:1"], transport=inner) as client:
        assert inner.events == ["enter"]
        assert (await flavor.get(client, "/x")).json()["url"] == "http://a:1/x"
    assert inner.events == ["enter", "exit", "close"]


# -- base_url, the pool's origin, bad URLs ----------------------------------------------------------------


async def test_any_base_url_names_the_pools_origin(flavor: Flavor, make_backends: Any) -> None:
    (a,) = make_backends(1)
    base = "https://www.example.com:8443/api/"
    async with flavor.client([a.url], base_url=base) as client:
        assert client.service == "www.example.com"
        response = await flavor.get(client, "items")
        assert response.json()["path"] == "/api/items"
        assert str(response.request.url) == "https://www.example.com:8443/api/items"
        assert (await flavor.get(client, "https://www.example.com:8443/z")).json()["path"] == "/z"
        for url in ("http://www.example.com:8443/z", "https://www.example.com/z", "https://www.example.com:9/z"):
            error = await _raises(flavor, client, url, NotInPoolError)
            assert url in str(error)
            assert "https://www.example.com:8443" in str(error)
    assert a.count() == 2


async def test_the_service_with_another_port_or_scheme_is_refused(flavor: Flavor, make_backends: Any) -> None:
    (a,) = make_backends(1)
    async with flavor.client([a.url], service="users") as client:
        assert (await flavor.get(client, "http://users/x")).json()["id"] == "a"
        assert (await flavor.get(client, "http://users:80/x")).json()["id"] == "a"  # the default port
        for url in ("http://users:9999/x", "https://users/x"):
            await _raises(flavor, client, url, NotInPoolError)
    assert a.count() == 2


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_mount_for_all_of_the_service_refuses_other_ports(is_async: bool, make_backends: Any) -> None:
    (a,) = make_backends(1)
    if is_async:
        transport = lbclient.AsyncLoadBalancingTransport([a.url], service="users")
        async with httpx.AsyncClient(mounts={"all://users": transport}) as client:
            assert (await client.get("http://users/x")).json()["id"] == "a"
            with pytest.raises(NotInPoolError, match="http://users:9999/x"):
                await client.get("http://users:9999/x")
    else:
        sync = lbclient.LoadBalancingTransport([a.url], service="https://users:8443")
        with httpx.Client(mounts={"all://users": sync}) as client:
            assert client.get("https://users:8443/x").json()["id"] == "a"
            with pytest.raises(NotInPoolError, match="http://users:8443/x"):
                client.get("http://users:8443/x")


@pytest.mark.parametrize("url", ["http://", "://example.org", "//other.host/x", "invalid://example.org"])
async def test_malformed_urls_fail_with_httpxs_own_errors(flavor: Flavor, make_backends: Any, url: str) -> None:
    (a,) = make_backends(1)
    async with flavor.client([a.url]) as client:
        await _raises(flavor, client, url, httpx.UnsupportedProtocol)
    assert a.count() == 0


# -- the Host header ------------------------------------------------------------------------------------


async def test_an_explicit_host_header_is_sent_as_given(flavor: Flavor, make_backends: Any) -> None:
    (a,) = make_backends(1)
    async with flavor.client([a.url]) as client:
        assert (await flavor.get(client, "/x")).json()["host"] == f"127.0.0.1:{a.port}"
        response = await flavor.get(client, "/x", headers={"Host": "api.example.com"})
        assert response.json()["host"] == "api.example.com"
        assert response.request.headers["Host"] == "api.example.com"
    async with flavor.client([a.url], headers={"Host": "client.example.com"}) as client:
        assert (await flavor.get(client, "/x")).json()["host"] == "client.example.com"


async def test_an_explicit_host_header_survives_retries(flavor: Flavor, make_backends: Any) -> None:
    a, b = make_backends(2)
    a.fail_next(1, 503)
    b.fail_next(1, 503)
    async with flavor.client([a.url, b.url], retries=3) as client:
        response = await flavor.get(client, "/x", headers={"Host": "api.example.com"})
    assert response.json()["host"] == "api.example.com"
    assert response.extensions["lb_attempts"] == 3


def test_the_async_client_is_an_httpx_async_client() -> None:
    assert issubclass(AsyncLBClient, httpx.AsyncClient)
    assert issubclass(NotInPoolError, httpx.UnsupportedProtocol)
