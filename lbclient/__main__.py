"""The ``lbclient`` command (also ``python -m lbclient``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, _demo
from .sim import main as sim_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbclient", description="Client-side load balancing for httpx.")
    parser.add_argument("--version", action="version", version=f"lbclient {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run every strategy against local backends and show the spread")
    _demo.add_arguments(demo)
    demo.set_defaults(run=_demo.run)
    sim = commands.add_parser("sim", help="the fleet simulator (python -m lbclient.sim --help)", add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(run=lambda args: sim_main(args.rest))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
