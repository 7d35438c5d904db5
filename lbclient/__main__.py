"""The ``lbclient`` command (also ``python -m lbclient``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, _cli_get, _demo, proxy, tcp_proxy
from .sim import main as sim_main


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:  # its own parser, --help included (argparse's REMAINDER would not take it)
        return sim_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="lbclient", description="Client-side load balancing for httpx.")
    parser.add_argument("--version", action="version", version=f"lbclient {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="live: local backends, one crashes and returns, strategy by strategy")
    _demo.add_arguments(demo)
    demo.set_defaults(run=_demo.run)
    get = commands.add_parser("get", help="load a pool of real hosts and report requests, errors and latency per host")
    _cli_get.add_arguments(get)
    get.set_defaults(run=_cli_get.run)
    serve = commands.add_parser("proxy", help="a reverse proxy (ASGI, served by uvicorn) in front of a pool")
    proxy.add_arguments(serve)
    serve.set_defaults(run=proxy.run)
    forward = commands.add_parser("tcp-proxy", help="a TCP forwarder in front of a pool (databases, any TCP service)")
    tcp_proxy.add_arguments(forward)
    forward.set_defaults(run=tcp_proxy.run)
    commands.add_parser("sim", help="the fleet simulator (lbclient sim --help)", add_help=False)
    args = parser.parse_args(args_list)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
