"""Real servers that several test modules run: dnsmasq on a loopback port (for ``DNSDiscovery``) and
uvicorn serving an ASGI app in a thread (for the proxy). Every wait is a condition with a deadline."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lbclient
from lbclient import DNSDiscovery
from lbclient.testing import Backend

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> None:
    """The blocking twin of ``eventually``, for fixtures, threads and subprocesses."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.01)


# -- dnsmasq ------------------------------------------------------------------------------------------------


def _free_udp_port() -> int:
    """A loopback port free for both UDP and TCP (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for dnsmasq")


class DNSServer:
    """dnsmasq answering for ``*.test`` from files this object rewrites."""

    def __init__(self, root: Path, ttl: int = 1) -> None:
        assert DNSMASQ is not None
        self.root = root
        self.port = _free_udp_port()
        self.hosts_file = root / "hosts"
        self.ttl = ttl
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, addresses: dict[str, list[str]], srv: list[str] | None = None) -> None:
        """(Re)start with these A records and ``srv-host=`` lines."""
        self.stop()
        self.write(addresses)
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "keep-in-foreground",
            f"addn-hosts={self.hosts_file}",
            f"local-ttl={self.ttl}",
            f"pid-file={self.root / 'pid'}",
            # As root, dnsmasq would switch to 'nobody', who cannot read pytest's private tmp_path.
            *(["user=root"] if os.geteuid() == 0 else []),
            *(f"srv-host={line}" for line in srv or []),
        ]
        config = self.root / "dnsmasq.conf"
        config.write_text("\n".join(lines) + "\n")
        with (self.root / "dnsmasq.log").open("ab") as log:
            self.process = subprocess.Popen([DNSMASQ, "-C", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        probe = DNSDiscovery("ready.test", nameservers=["127.0.0.1"], nameserver_port=self.port, timeout=0.2)
        last: Exception | None = None
        while True:  # ready when it answers
            try:
                probe.resolve()
                return
            except lbclient.DiscoveryError as exc:
                last = exc
            assert self.process.poll() is None, (self.root / "dnsmasq.log").read_text()
            assert time.monotonic() < deadline, f"dnsmasq did not start: {last}"
            time.sleep(0.05)

    def write(self, addresses: dict[str, list[str]]) -> None:
        """Rewrite the A records (atomically: a new file renamed over the old one, so dnsmasq never reads
        half a file) and tell dnsmasq to read them again."""
        records = {"ready.test": ["127.0.0.1"], **addresses}
        text = "".join(f"{address} {name}\n" for name, values in records.items() for address in values)
        fresh = self.hosts_file.with_name(self.hosts_file.name + ".new")
        fresh.write_text(text)
        fresh.replace(self.hosts_file)
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def discovery(self, name: str, port: int = 80, **kwargs: object) -> DNSDiscovery:
        return DNSDiscovery(name, port, nameservers=["127.0.0.1"], nameserver_port=self.port, timeout=1.0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DNSServer]:
    """dnsmasq on a free loopback port, stopped after the test (``start()`` it with the records)."""
    if DNSMASQ is None:
        if os.environ.get("CI"):
            pytest.fail("dnsmasq is missing: scripts/install-test-deps.sh should have installed it")
        pytest.skip("dnsmasq is not installed (scripts/install-test-deps.sh installs it)")
    server = DNSServer(tmp_path)
    yield server
    server.stop()


Fleet = Callable[[int], list[Backend]]


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Backends on 127.0.0.2, .3, ... sharing one port, as the A records of one name."""
    started: list[Backend] = []

    def make(count: int) -> list[Backend]:
        first = Backend("h2", address="127.0.0.2")
        started.append(first)
        for index in range(3, count + 2):
            started.append(Backend(f"h{index}", address=f"127.0.0.{index}", port=first.port))
        return started[-count:]

    yield make
    for backend in started:
        backend.kill()


def addresses(backends: list[Backend]) -> list[str]:
    return [b.address for b in backends]


# -- uvicorn -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the proxy ``app`` as ``lbclient proxy`` does (uvicorn with the guarded protocol) in a thread
    on a free port of 127.0.0.1; yield its base URL."""
    pytest.importorskip("uvicorn")
    from lbclient._proxy_server import server_for

    server = server_for(app, log_level="warning")
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="proxy", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="proxy startup")
        assert server.started, "the proxy did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the proxy did not shut down"


@contextlib.contextmanager
def proxy_process(
    tmp_path: Path, *args: str, nofile: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``lbclient proxy --listen 127.0.0.1:0 ARGS`` in a subprocess (with RLIMIT_NOFILE lowered to
    ``nofile`` if given); yields it and its base URL. Its stderr is ``tmp_path / "proxy.err"``."""
    out, err = tmp_path / "proxy.out", tmp_path / "proxy.err"
    command = [sys.executable, "-m", "lbclient", "proxy", "--listen", "127.0.0.1:0", "--log-level", "warning", *args]

    def lower_nofile() -> None:
        import resource

        assert nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with out.open("wb") as stdout, err.open("wb") as stderr:
        # preexec_fn only calls setrlimit, which takes no lock that another thread could hold.
        preexec = None if nofile is None else lower_nofile
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, preexec_fn=preexec)  # noqa: PLW1509
    try:
        wait_for(
            lambda: "listening on" in out.read_text() or process.poll() is not None,
            timeout=20,
            what="the proxy's listening line",
        )
        match = re.search(r"listening on (http://\S+)", out.read_text())
        assert match, f"no listening line; stderr: {err.read_text()}"
        yield process, match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=15)
