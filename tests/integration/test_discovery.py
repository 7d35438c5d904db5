"""Discovery against a real DNS server (dnsmasq on a loopback port) and a real hosts file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import DNSServer, Fleet, addresses, dns, fleet

import lbclient
from lbclient import DNSDiscovery, FileDiscovery, LBClient
from lbclient.testing import Backend

from conftest import Flavor, eventually

__all__ = ["dns", "fleet"]  # fixtures from servers.py


@pytest.mark.anyio
async def test_hosts_follow_the_dns_records(
    flavor: Flavor, dns: DNSServer, fleet: Callable[[int], list[Backend]]
) -> None:
    h2, h3, h4 = fleet(3)
    dns.start({"web.test": addresses([h2, h3])})
    source = dns.discovery("web.test", h2.port, records=("A",), min_interval=0.1, max_interval=0.5)
    async with flavor.client(source) as client:
        assert {h.url for h in client.pool.hosts} == {h2.url, h3.url}
        for _ in range(4):
            await flavor.get(client, "/x")
        assert (h2.count(), h3.count()) == (2, 2)

        dns.write({"web.test": addresses([h2, h3, h4])})  # a host added: traffic within a refresh
        await eventually(lambda: len(client.pool.hosts) == 3, timeout=5, what="the added host in the pool")
        for _ in range(6):
            await flavor.get(client, "/x")
        assert h4.count() >= 1

        dns.write({"web.test": addresses([h3, h4])})  # a host removed: no new requests after the refresh
        await eventually(lambda: h2.url not in {h.url for h in client.pool.hosts}, timeout=5, what="h2 gone")
        before = h2.count()
        for _ in range(6):
            await flavor.get(client, "/x")
        assert h2.count() == before


@pytest.mark.anyio
async def test_state_of_hosts_that_stay_is_kept(
    flavor: Flavor, dns: DNSServer, fleet: Callable[[int], list[Backend]]
) -> None:
    h2, h3 = fleet(2)
    dns.start({"web.test": addresses([h2])})
    source = dns.discovery("web.test", h2.port, records=("A",), min_interval=0.1, max_interval=0.5)
    async with flavor.client(source) as client:
        for _ in range(3):
            await flavor.get(client, "/x")
        kept = client.pool.hosts[0]
        dns.write({"web.test": addresses([h2, h3])})
        await eventually(lambda: len(client.pool.hosts) == 2, timeout=5, what="h3 added")
        assert client.pool.hosts[0] is kept
        assert kept.requests == 3


@pytest.mark.anyio
async def test_an_empty_or_failed_answer_never_empties_the_pool(
    flavor: Flavor, dns: DNSServer, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lbclient")
    h2, h3 = fleet(2)
    dns.start({"web.test": addresses([h2, h3])})
    source = dns.discovery("web.test", h2.port, records=("A",), min_interval=0.1, max_interval=0.5)
    async with flavor.client(source) as client:
        dns.write({})  # every record gone
        await eventually(lambda: "discovery failed" in caplog.text, timeout=5, what="the empty answer logged")
        assert len(client.pool.hosts) == 2
        dns.stop()  # the server gone: lookups time out
        caplog.clear()
        await eventually(lambda: "discovery failed" in caplog.text, timeout=10, what="the failed lookup logged")
        assert len(client.pool.hosts) == 2
        assert (await flavor.get(client, "/x")).status_code == 200


def test_srv_records_give_ports_weights_and_priorities(dns: DNSServer) -> None:
    dns.start(
        {"a.web.test": ["127.0.0.21"], "b.web.test": ["127.0.0.22"], "c.web.test": ["127.0.0.23"]},
        srv=[
            "_http._tcp.web.test,a.web.test,8001,0,10",
            "_http._tcp.web.test,b.web.test,8002,0,30",
            "_http._tcp.web.test,c.web.test,8003,1,50",  # a lower priority (higher number): standby
        ],
    )
    answer = dns.discovery("_http._tcp.web.test", records=("SRV",)).resolve()
    hosts = {lbclient.Host(h).url if isinstance(h, str) else h.url: h for h in answer.hosts}  # type: ignore[union-attr]
    assert set(hosts) == {"http://127.0.0.21:8001", "http://127.0.0.22:8002"}
    weights = {url: host.weight for url, host in hosts.items()}  # type: ignore[union-attr]
    assert weights == {"http://127.0.0.21:8001": 10.0, "http://127.0.0.22:8002": 30.0}
    assert answer.ttl == 1.0


def test_the_record_ttl_drives_the_refresh(dns: DNSServer) -> None:
    dns.ttl = 3
    dns.start({"web.test": ["127.0.0.2"]})
    source = dns.discovery("web.test", records=("A",), min_interval=0.5, max_interval=60)
    answer = source.resolve()
    assert answer.ttl == 3.0
    assert source.next_refresh(answer.ttl) == 3.0
    assert source.next_refresh(0.0) == 0.5  # bounded below
    assert source.next_refresh(None) == 60.0


def test_a_client_cannot_start_without_hosts(dns: DNSServer) -> None:
    dns.start({})
    with pytest.raises(ValueError, match=r"web\.test"):
        LBClient(dns.discovery("web.test", records=("A",)))


@pytest.mark.anyio
async def test_a_hosts_file_is_followed(flavor: Flavor, tmp_path: Path, backends: list[Backend]) -> None:
    a, b, c = backends
    path = tmp_path / "hosts.txt"
    path.write_text(f"# the users service\n{a.url}\n{b.url} 2\n")
    async with flavor.client(FileDiscovery(path, min_interval=0.05)) as client:
        assert [(h.url, h.weight) for h in client.pool.hosts] == [(a.url, 1.0), (b.url, 2.0)]
        path.write_text(f"{b.url} 2\n{c.url}\n")
        os.utime(path, (time.time() + 5, time.time() + 5))
        await eventually(lambda: {h.url for h in client.pool.hosts} == {b.url, c.url}, timeout=5, what="the new file")
        path.write_text("not a url at all\n")
        await anyio_sleep(0.3)
        assert {h.url for h in client.pool.hosts} == {b.url, c.url}


async def anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": ""}, "''"),
        ({"name": "x.test", "port": 0}, "0"),
        ({"name": "x.test", "scheme": "ftp"}, "ftp"),
        ({"name": "x.test", "records": ("MX",)}, "MX"),
        ({"name": "x.test", "min_interval": -1}, "-1"),
        ({"name": "x.test", "min_interval": 5, "max_interval": 1}, "1"),
        ({"name": "x.test", "records": "A"}, "'A'"),
        ({"name": "x.test", "weight": float("nan")}, "nan"),
        ({"name": "x.test", "weight": -1}, "-1"),
        ({"name": "x.test", "weight": 0}, "weight"),
        ({"name": "x.test", "sni_hostname": "10.0.0.1"}, "10.0.0.1"),
    ],
)
def test_bad_discovery_settings_are_refused(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DNSDiscovery(**kwargs)  # type: ignore[arg-type]


def test_https_hosts_found_by_dns_are_verified_by_the_name_asked_for(
    dns: DNSServer, fleet: Callable[[int], list[Backend]]
) -> None:
    h2, h3 = fleet(2)
    dns.start({"web.test": addresses([h2, h3])})
    found = dns.discovery("web.test", 8443, records=("A",), scheme="https").resolve()
    assert [(h.url, h.sni_hostname) for h in found.hosts] == [  # type: ignore[union-attr]
        ("https://127.0.0.2:8443", "web.test"),
        ("https://127.0.0.3:8443", "web.test"),
    ]
    other = dns.discovery("web.test", 8443, records=("A",), scheme="https", sni_hostname="api.example").resolve()
    assert {h.sni_hostname for h in other.hosts} == {"api.example"}  # type: ignore[union-attr]
    plain = dns.discovery("web.test", 8080, records=("A",)).resolve()
    assert {h.sni_hostname for h in plain.hosts} == {None}  # type: ignore[union-attr]
