"""``python -m bench [--quick] [--only SECTION ...] [--nginx PATH] [--haproxy PATH] [--output FILE] [--strict]``."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import httpx

import lbclient

from ._agreement import agreement
from ._failover import failover
from ._nginx import NginxServer, run_nginx
from ._overhead import async_overhead, sync_overhead, transport_overhead
from ._proxies import proxies
from ._report import Section, render, write_json
from ._scaling import pick_costs, scaling
from ._settings import FULL, QUICK, Settings
from ._tail import tail
from ._tcp import tcp

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"

#: Sections that need nginx, in the order they run: name -> measurement.
NGINX_SECTIONS: dict[str, Callable[[str, Settings], Section]] = {
    "sync": sync_overhead,
    "async-default": partial(async_overhead, limits="default"),
    "async-fixed": partial(async_overhead, limits="fixed"),
    "transport": transport_overhead,
}
if importlib.util.find_spec("httpx2") is not None:  # extra httpx2: the bridge against plain httpx2
    from ._httpx2 import httpx2_overhead

    NGINX_SECTIONS["httpx2"] = httpx2_overhead
#: Sections that run in memory (httpx.MockTransport, bare pools).
MEMORY_SECTIONS: dict[str, Callable[[Settings], Section]] = {
    "scaling": scaling,
    "pick": pick_costs,
    "failover": failover,
    "tail": tail,
    "agreement": agreement,
}
#: Sections that start their own servers on loopback (nginx backends, nginx and HAProxy as proxies).
SERVER_SECTIONS: dict[str, Callable[[Settings, str | None, str | None], Section]] = {
    "proxies": proxies,
    "tcp": tcp,
}
SECTIONS = [*NGINX_SECTIONS, *SERVER_SECTIONS, *MEMORY_SECTIONS]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests: under a minute")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=f"among {SECTIONS}")
    parser.add_argument("--nginx", help="the nginx binary (default: $NGINX, PATH, /usr/sbin/nginx)")
    parser.add_argument("--haproxy", help="the haproxy binary (default: $HAPROXY, PATH, /usr/sbin/haproxy)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a ratio is over its bar")
    return parser.parse_args(argv)


def _require_sniffio() -> None:
    # Without sniffio, httpcore retries a failing import on every async request: the async numbers
    # would measure that instead of the clients.
    if importlib.util.find_spec("sniffio") is None:
        raise SystemExit("sniffio is not importable; it is a dependency of lbclient: pip install sniffio")


def _git_state() -> dict[str, Any] | None:
    """The commit of the lbclient measured, and whether its lbclient/ had uncommitted changes (None when
    that lbclient is not in a git checkout)."""
    root = Path(lbclient.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "lbclient_dirty": bool(git("status", "--porcelain", "lbclient"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _meta(settings: Settings, server: NginxServer | None, argv: Sequence[str], seconds: float) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *argv]),
        "seconds": round(seconds, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "httpx": httpx.__version__,
        "lbclient": lbclient.__version__,
        "lbclient_path": str(Path(lbclient.__file__).resolve().parent),
        "git": _git_state(),
        "nginx": None if server is None else {"version": server.version, "url": server.url},
        "settings": asdict(settings),
    }


def _header(meta: dict[str, Any]) -> list[str]:
    nginx = meta["nginx"]
    where = f"{nginx['version']} on {nginx['url']}" if nginx else "no nginx"
    return [
        f"lbclient {meta['lbclient']} benchmark ({meta['settings']['name']}, {meta['seconds']:.0f} s): "
        f"Python {meta['python']}, httpx {meta['httpx']}, {where}, {meta['cpus']} CPUs, {meta['platform']}",
        "Times are per request (median over interleaved rounds); ratios are subject / baseline (lower is better).",
    ]


def _timed(name: str, measure: Callable[[], Section]) -> Section:
    """Run one section, with progress on stderr (the table goes to stdout)."""
    print(f"[bench] {name} ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    section = measure()
    print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return section


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with blocks: nginx is stopped, clients closed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = QUICK if args.quick else FULL
    chosen = args.only or SECTIONS
    started = time.perf_counter()
    sections: list[Section] = []
    server: NginxServer | None = None
    nginx_sections = [name for name in NGINX_SECTIONS if name in chosen]
    if nginx_sections:
        _require_sniffio()
        with run_nginx(args.nginx) as server:
            for name in nginx_sections:
                sections.append(_timed(name, partial(NGINX_SECTIONS[name], server.url, settings)))
    for name in (name for name in SERVER_SECTIONS if name in chosen):
        _require_sniffio()
        sections.append(_timed(name, partial(SERVER_SECTIONS[name], settings, args.nginx, args.haproxy)))
    for name in (name for name in MEMORY_SECTIONS if name in chosen):
        sections.append(_timed(name, partial(MEMORY_SECTIONS[name], settings)))
    meta = _meta(settings, server, argv, time.perf_counter() - started)
    print(render(_header(meta), sections))
    write_json(args.output, meta, sections)
    print(f"\nresults: {args.output}")
    over = [ratio.label for section in sections for ratio in section.ratios if ratio.verdict == "OVER"]
    return 1 if args.strict and over else 0


if __name__ == "__main__":
    raise SystemExit(main())
