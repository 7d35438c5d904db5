"""A throwaway nginx on 127.0.0.1: generated config in a temp dir, started and stopped by us.

Every path answers ``200 ok``. nginx runs in the foreground (``daemon off``) as our child process, with
one worker (the benchmark machine has two cores: one for the client, one for nginx), no access log and
keep-alive connections that last for the whole run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["NginxServer", "find_nginx", "run_nginx"]

LOOPBACK = "127.0.0.1"
_FALLBACK_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_START_ATTEMPTS = 3
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1

#: The top of every nginx config of the benchmarks (this plain backend's, and _proxies' backends and
#: proxy): one worker in the foreground, files in ``root``, no access log, connections kept for the run.
#: The ``http`` block is left open for the servers.
NGINX_HEAD = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
"""

_CONFIG = (
    NGINX_HEAD
    + """
    server {{
        listen {host}:{port};
        server_name _;
        location / {{
            return 200 "ok";
        }}
    }}
}}
"""
)


@dataclass(frozen=True)
class NginxServer:
    """A running nginx: ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    version: str
    pid: int


def find_nginx(explicit: str | None = None) -> str:
    """The nginx binary: ``explicit``, then ``$NGINX``, then ``PATH``, then the usual sbin paths."""
    for candidate in (explicit, os.environ.get("NGINX"), shutil.which("nginx"), *_FALLBACK_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nginx not found: run `nox -s bench` (it installs it), or pass --nginx / set $NGINX")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    """True once ``url`` answers ``200 ok`` (through a proxy: once a backend answered through it); False
    if ``proc`` exits or nothing answers within the timeout."""
    deadline = time.monotonic() + _START_TIMEOUT
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = client.get(f"{url}/ready")
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            return response.status_code == 200 and response.text == "ok"
    return False


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGQUIT) -> None:
    """Stop ``proc`` with ``sig`` (nginx's SIGQUIT is graceful: the master stops its worker, then exits),
    and kill it if it has not exited in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_STOP_TIMEOUT)


def _die_with_parent() -> None:
    """In the child before exec: on Linux, have the kernel send nginx SIGTERM if the benchmark dies
    without stopping it (killed by SIGKILL, say), so that no nginx outlives the run."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _command(binary: str, version: str, root: Path, config: Path) -> list[str]:
    command = [binary, "-p", str(root), "-c", str(config)]
    # -e (nginx >= 1.19.5) keeps even the start-up messages out of the system's log directory.
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    return [*command, "-e", str(root / "error.log")] if numbers >= (1, 19, 5) else command


def _start(binary: str, version: str, root: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    port = _free_port()
    url = f"http://{LOOPBACK}:{port}"
    config = root / "nginx.conf"
    config.write_text(_CONFIG.format(root=root, host=LOOPBACK, port=port))
    proc = subprocess.Popen(  # a fixed argument list, no shell
        _command(binary, version, root, config),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal reaches us only, and we stop nginx ourselves
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run yet; it only calls prctl
    )
    if _wait_ready(proc, url):
        return proc, url
    _stop(proc)
    return None


@contextlib.contextmanager
def run_nginx(binary: str | None = None) -> Iterator[NginxServer]:
    """Start nginx on a free loopback port, yield it, and always stop it and remove its files."""
    path = find_nginx(binary)
    version = _version(path)
    with tempfile.TemporaryDirectory(prefix="lbclient-bench-nginx-") as tmp:
        root = Path(tmp)
        for _ in range(_START_ATTEMPTS):  # another process may take the free port before nginx binds it
            started = _start(path, version, root)
            if started is not None:
                break
        else:
            log = root / "error.log"
            detail = log.read_text()[-2000:] if log.exists() else "(no error log)"
            raise RuntimeError(f"nginx ({path}) did not start on {LOOPBACK}:\n{detail}")
        proc, url = started
        try:
            yield NginxServer(url=url, version=version, pid=proc.pid)
        finally:
            _stop(proc)
