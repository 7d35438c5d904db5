"""respx and pytest-httpx in their usual patterns, with routes on the service URL the caller writes
(``http://users/...``): ``lbclient.testing.mock_client`` and ``mock_async_client`` build clients whose
pool still picks a host for every request but hands the mock the service URL, with one attempt and no
health checks, so the mock meets exactly the requests the test makes."""

from __future__ import annotations

import httpx
import pytest
import respx
from pytest_httpx import HTTPXMock

from lbclient import LBClient
from lbclient.testing import MOCK_HOSTS, mock_async_client, mock_client

BACKENDS = ["anyio_backend", ["asyncio", "trio"]]


# -- respx ---------------------------------------------------------------------------------------------------


@respx.mock
def test_respx_routes_on_the_service_url_match() -> None:
    route = respx.get("http://users/api/me").respond(json={"name": "alice"})
    with mock_client(service="users") as client:
        response = client.get("/api/me")
    assert response.json() == {"name": "alice"}
    assert response.extensions["lb_host"] in MOCK_HOSTS
    assert route.call_count == 1
    assert route.calls.last.request.headers["host"] == "users"


def test_respx_mock_fixture_with_a_base_url_and_balancing(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("http://users/v1/items", json={"n": 1}).respond(201, json={"id": 7})
    with mock_client(base_url="http://users/v1") as client:
        hosts = [client.post("/items", json={"n": 1}).extensions["lb_host"] for _ in range(3)]
    assert sorted(hosts) == sorted(MOCK_HOSTS)  # round robin still spreads the requests
    assert route.call_count == 3


@respx.mock
def test_respx_a_mocked_timeout_is_seen_once() -> None:
    route = respx.get("http://users/slow").mock(side_effect=httpx.ReadTimeout("no response"))
    with mock_client(service="users") as client, pytest.raises(httpx.ReadTimeout):
        client.get("/slow")
    assert route.call_count == 1  # not three: the mock meets only the request the test made


@respx.mock
def test_respx_retries_when_the_test_asks_for_them() -> None:
    route = respx.get("http://users/flaky").mock(side_effect=[httpx.Response(503), httpx.Response(200, text="ok")])
    with mock_client(service="users", retries=3) as client:
        response = client.get("/flaky")
    assert response.text == "ok"
    assert response.extensions["lb_attempts"] == 2
    assert route.call_count == 2


@respx.mock
def test_respx_requests_for_other_hosts_pass_through_unchanged() -> None:
    route = respx.get("https://example.org/x").respond(text="elsewhere")
    with mock_client(service="users") as client:
        assert client.get("https://example.org/x").text == "elsewhere"
    assert route.call_count == 1


def test_respx_router_as_the_transport() -> None:
    """A router that patches nothing, handed over as the transport: no global mock at all."""
    router = respx.Router(assert_all_called=True)
    route = router.get("http://users/api/me").respond(json={"name": "bob"})
    with mock_client(httpx.MockTransport(router.handler), service="users") as client:
        assert client.get("/api/me").json() == {"name": "bob"}
    router.assert_all_called()
    assert route.call_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(*BACKENDS)
async def test_respx_router_as_an_async_transport(anyio_backend: str) -> None:
    router = respx.Router()
    router.get("http://users/api/me").respond(json={"name": "bob"})
    async with mock_async_client(httpx.MockTransport(router.async_handler), service="users") as client:
        assert (await client.get("/api/me")).json() == {"name": "bob"}


@pytest.mark.anyio
@pytest.mark.parametrize(*BACKENDS)
async def test_respx_async(anyio_backend: str, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get("http://users/api/me").respond(json={"name": "alice"})
    async with mock_async_client(service="users") as client:
        response = await client.get("/api/me")
    assert response.json() == {"name": "alice"}
    assert route.call_count == 1


@respx.mock
def test_respx_without_the_helper_routes_name_the_hosts() -> None:
    """What a plain LBClient shows a mock: the host's URL (the balancer has pointed the request there)."""
    route = respx.get("http://10.0.0.1:8000/api/me").respond(json={"name": "alice"})
    with LBClient(["10.0.0.1:8000"], service="users", health_check=None) as client:
        assert client.get("/api/me").json() == {"name": "alice"}
    assert route.call_count == 1


# -- pytest-httpx ----------------------------------------------------------------------------------------------


def test_pytest_httpx_responses_on_the_service_url(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url="http://users/api/me", json={"name": "alice"})
    with mock_client(service="users") as client:
        response = client.get("/api/me")
    assert response.json() == {"name": "alice"}
    assert response.extensions["lb_host"] in MOCK_HOSTS


def test_pytest_httpx_matches_method_and_body(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="POST", url="http://users/v1/items", match_json={"n": 1}, status_code=201)
    with mock_client(base_url="http://users/v1") as client:
        assert client.post("/items", json={"n": 1}).status_code == 201
    assert httpx_mock.get_request().url == "http://users/v1/items"


def test_pytest_httpx_a_mocked_timeout_is_seen_once(httpx_mock: HTTPXMock) -> None:
    """One registered exception, one request: teardown finds no request it did not expect."""
    httpx_mock.add_exception(httpx.ReadTimeout("no response"), url="http://users/slow")
    with mock_client(service="users") as client, pytest.raises(httpx.ReadTimeout):
        client.get("/slow")
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(*BACKENDS)
async def test_pytest_httpx_async(anyio_backend: str, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url="http://users/api/me", json={"name": "alice"})
    async with mock_async_client(service="users") as client:
        response = await client.get("/api/me")
    assert response.json() == {"name": "alice"}


def test_mock_client_with_httpx_mock_transport() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"ok": True})

    with mock_client(httpx.MockTransport(handler), service="users") as client:
        assert client.get("/a?b=1").json() == {"ok": True}
    assert seen == ["http://users/a?b=1"]


def test_a_sync_client_refuses_an_async_only_transport() -> None:
    class AsyncOnly(httpx.AsyncBaseTransport):
        pass

    with mock_client(AsyncOnly(), service="users") as client, pytest.raises(TypeError, match="mock_async_client"):  # type: ignore[arg-type]
        client.get("/x")
