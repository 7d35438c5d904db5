"""HTTPS hosts on a private CA (made on the fly with trustme), reached by address and verified by name.

Every backend here serves a certificate for ``users.internal`` only, never for its address, as the
hosts that DNS discovery finds do: without ``sni_hostname`` the certificate cannot be verified.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from servers import proxy_process, wait_for

from lbclient import HealthCheck, Host, LBClient
from lbclient.proxy import make_app
from lbclient.testing import Backend

from conftest import Flavor, eventually

pytestmark = pytest.mark.anyio

NAME = "users.internal"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """What a client that trusts the private CA passes as ``verify=``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _server_context(ca: trustme.CA, *, client_certs: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME).configure_cert(context)
    if client_certs:  # mutual TLS: a caller without a certificate of the CA is refused
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


@pytest.fixture
def https_backends(ca: trustme.CA) -> Iterator[Callable[..., list[Backend]]]:
    started: list[Backend] = []

    def make(count: int = 3, *, client_certs: bool = False) -> list[Backend]:
        context = _server_context(ca, client_certs=client_certs)
        new = [Backend(chr(ord("a") + len(started) + i), ssl_context=context) for i in range(count)]
        started.extend(new)
        return new

    yield make
    for backend in started:
        backend.kill()


def _checks() -> HealthCheck:
    return HealthCheck(interval=0.05, timeout=1.0, healthy_threshold=1, unhealthy_threshold=2)


async def test_an_https_host_given_by_address_is_verified_against_sni_hostname(
    flavor: Flavor, https_backends: Callable[..., list[Backend]], client_context: ssl.SSLContext
) -> None:
    backends = https_backends(2)
    async with flavor.client([b.url for b in backends], verify=client_context, sni_hostname=NAME) as client:
        answered = {(await flavor.get(client, "/x")).json()["id"] for _ in range(4)}
        assert answered == {"a", "b"}
        # The Host header names the service too: the address is only where the connection goes.
        response = await flavor.get(client, "/x")
        port = httpx.URL(response.extensions["lb_host"]).port
        assert response.json()["host"] == f"{NAME}:{port}"
    assert sum(b.tls_failures for b in backends) == 0


async def test_without_sni_hostname_the_certificate_is_refused(
    flavor: Flavor, https_backends: Callable[..., list[Backend]], client_context: ssl.SSLContext
) -> None:
    (backend,) = https_backends(1)
    async with flavor.client([backend.url], verify=client_context, retries=1) as client:
        with pytest.raises(httpx.ConnectError):
            await flavor.get(client, "/x")
    assert backend.count() == 0  # no request ever reached it
    await eventually(lambda: backend.tls_failures >= 1, what="the server seeing the handshake refused")


async def test_a_hosts_own_sni_hostname_wins_over_the_clients(
    flavor: Flavor, https_backends: Callable[..., list[Backend]], client_context: ssl.SSLContext
) -> None:
    (backend,) = https_backends(1)
    host = Host(backend.url, sni_hostname=NAME)
    async with flavor.client([host], verify=client_context, sni_hostname="wrong.internal", retries=1) as client:
        assert (await flavor.get(client, "/x")).status_code == 200


async def test_health_checks_use_the_clients_tls_settings(
    flavor: Flavor, https_backends: Callable[..., list[Backend]], client_context: ssl.SSLContext
) -> None:
    """All hosts healthy, no panic, and a host that dies is still found out and ejected."""
    backends = https_backends(3)
    events: list[str] = []
    async with flavor.client(
        [b.url for b in backends],
        verify=client_context,
        sni_hostname=NAME,
        health_check=_checks(),
        on_event=lambda event: events.append(event.kind),
    ) as client:
        await eventually(lambda: all(b.count("GET", "/health") >= 3 for b in backends), what="three rounds of checks")
        assert all(h.healthy for h in client.pool.hosts)
        assert not client.pool.panic
        assert "unhealthy" not in events
        assert "panic" not in events
        backends[0].kill()
        await eventually(
            lambda: not client.pool.hosts[0].healthy or client.pool.hosts[0].ejected, what="dead host taken out"
        )
        for _ in range(6):
            assert (await flavor.get(client, "/x")).status_code == 200
        assert not client.pool.panic


async def test_verify_false_reaches_the_health_checks_too(
    flavor: Flavor, https_backends: Callable[..., list[Backend]]
) -> None:
    backends = https_backends(2)
    async with flavor.client([b.url for b in backends], verify=False, health_check=_checks()) as client:
        await eventually(lambda: all(b.count("GET", "/health") >= 2 for b in backends), what="checks")
        assert all(h.healthy for h in client.pool.hosts)
        assert (await flavor.get(client, "/x")).status_code == 200


async def test_a_client_certificate_reaches_requests_and_health_checks(
    flavor: Flavor, ca: trustme.CA, https_backends: Callable[..., list[Backend]]
) -> None:
    backends = https_backends(2, client_certs=True)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    ca.issue_cert("client.internal").configure_cert(context)  # the client's own certificate (mutual TLS)
    async with flavor.client(
        [b.url for b in backends], verify=context, sni_hostname=NAME, health_check=_checks()
    ) as client:
        await eventually(lambda: all(b.count("GET", "/health") >= 2 for b in backends), what="checks")
        assert all(h.healthy for h in client.pool.hosts)
        assert (await flavor.get(client, "/x")).status_code == 200
    assert sum(b.tls_failures for b in backends) == 0


def test_bad_sni_hostnames_are_refused() -> None:
    for bad in ("127.0.0.1", "::1", "", "bad name", 3):
        with pytest.raises(ValueError, match="sni_hostname"):
            LBClient(["https://127.0.0.1:1"], sni_hostname=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="sni_hostname"):
            Host("https://127.0.0.1:1", sni_hostname=bad)  # type: ignore[arg-type]
    assert Host("https://127.0.0.1:1", sni_hostname="Bücher.Example").sni_hostname == "xn--bcher-kva.example"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_proxys_health_and_upstreams_share_the_tls_settings(
    anyio_backend: str, https_backends: Callable[..., list[Backend]], client_context: ssl.SSLContext
) -> None:
    backends = https_backends(2)
    proxy = make_app([b.url for b in backends], verify=client_context, sni_hostname=NAME, health_check=_checks())
    transport = httpx.ASGITransport(app=proxy)
    async with proxy, httpx.AsyncClient(transport=transport, base_url="http://proxy") as caller:
        await eventually(lambda: all(b.count("GET", "/health") >= 2 for b in backends), what="checks")
        assert (await caller.get("/health")).status_code == 200
        assert (await caller.get("/x")).status_code == 200


def test_the_proxy_command_verifies_https_hosts_by_name(
    tmp_path: Path, ca: trustme.CA, https_backends: Callable[..., list[Backend]]
) -> None:
    """``lbclient proxy --ca-file --sni-hostname --health-check``: checks and requests alike pass."""
    backends = https_backends(2)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    hosts = [b.url for b in backends]
    args = ("--hosts", *hosts, "--ca-file", str(ca_file), "--sni-hostname", NAME, "--health-check")
    with proxy_process(tmp_path, *args) as (_process, url):
        wait_for(lambda: all(b.count("GET", "/health") >= 1 for b in backends), what="a check of each host")
        with httpx.Client(base_url=url) as caller:
            assert caller.get("/health").status_code == 200
            assert {caller.get("/x").json()["id"] for _ in range(4)} == {"a", "b"}
    assert sum(b.tls_failures for b in backends) == 0
