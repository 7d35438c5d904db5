"""Project tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``compat``, ``demo``, ``bench``."""

from __future__ import annotations

import os
import pathlib
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = os.environ.get("LBCLIENT_PYTHON") or None  # the running interpreter unless told otherwise


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: the pure core, then real servers on 127.0.0.1 (asyncio and trio)."""
    session.run("bash", "scripts/install-test-deps.sh", external=True)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """httpx's own client tests (``tests/client`` of the installed httpx's sdist) run through LBClient and
    AsyncLBClient, then through a mounted balancing transport. The differences are listed, each with its
    reason, in ``compat/expected.toml``; any other one fails. Extra arguments go to pytest."""
    session.install("-e", ".[test]")
    fetched = session.run("python", "scripts/fetch-httpx-tests.py", silent=True)
    assert isinstance(fetched, str)
    folder = fetched.strip().splitlines()[-1]
    env = {"PYTHONPATH": str(pathlib.Path("compat").resolve())}
    with session.chdir(folder):
        for mode in ("client", "transport"):
            session.run(
                *("python", "-m", "pytest", "tests/client", "-p", "lbclient_compat", f"--lb-mode={mode}"),
                *("-m", "not network", "-p", "no:cacheprovider", "--timeout=60", "-q"),
                *session.posargs,
                env=env,
            )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[typecheck]")
    session.run("mypy", "lbclient")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site into ``site/``; ``--strict`` fails on a broken link or a docstring mkdocstrings
    cannot render. ``nox -s docs -- serve`` serves it on 127.0.0.1:8000 instead."""
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Start local backends on loopback and show how each strategy spreads requests."""
    session.install("-e", ".[cli]")
    session.run("python", "-m", "lbclient", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Overhead against plain httpx in the same run, pick cost from 10 to 10,000 hosts, failover, and
    AsyncLBClient against httpx through nginx and HAProxy proxies."""
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        session.run("bash", "bench/install-server.sh", "nginx", "nginx-light", "nginx", external=True)
    if shutil.which("haproxy") is None and not os.path.exists("/usr/sbin/haproxy"):
        session.run("bash", "bench/install-server.sh", "haproxy", "haproxy", external=True)
    session.install("-e", ".[proxy,httpx2]")  # uvicorn, for lbclient proxy against nginx and HAProxy; httpx2
    session.run("python", "-m", "bench", *session.posargs)
