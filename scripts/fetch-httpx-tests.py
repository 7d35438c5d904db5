"""Fetch httpx's own test suite for the installed httpx: ``python scripts/fetch-httpx-tests.py``.

Downloads the sdist of exactly the installed version with pip (``--no-deps --no-binary :all:``) and
unpacks its ``tests/`` and ``pyproject.toml`` (its pytest settings) under ``compat/.httpx/httpx-<version>/``
(git-ignored). Not its ``httpx/`` sources: the tests must import the installed httpx that lbclient runs
on. Prints the folder; does nothing but print it when it is already there.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "compat" / ".httpx"


def fetch() -> pathlib.Path:
    release = version("httpx")
    target = CACHE / f"httpx-{release}"
    if (target / "tests" / "client").is_dir():
        return target
    with tempfile.TemporaryDirectory() as scratch:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"httpx=={release}", "--dest", scratch], check=True)  # noqa: S603 - our own argv
        (sdist,) = pathlib.Path(scratch).glob("httpx-*.tar.gz")
        partial = CACHE / f".partial-{release}"
        with tarfile.open(sdist) as archive:
            prefix = f"httpx-{release}/"
            members = [
                member
                for member in archive.getmembers()
                if member.name.startswith(prefix + "tests/") or member.name == prefix + "pyproject.toml"
            ]
            archive.extractall(partial, members=members, filter="data")
        (partial / f"httpx-{release}").rename(target)
        partial.rmdir()
    return target


if __name__ == "__main__":
    print(fetch())
