"""Every example runs against the backends it starts itself, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The examples import this checkout's lbclient, not whichever one is installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

EXPECTED = {
    "sync_client.py": ["/v1/api/data", "bypass: c"],
    "async_client.py": ["requests per backend"],
    "mounts.py": ["users-1", "users-2", "orders-1"],
    "sticky_sessions.py": ["alice ->", "203.0.113.7 ->"],
    "custom_strategy.py": ["['primary', 'primary', 'primary']", "['standby', 'standby', 'standby']"],
    "custom_discovery.py": ["two instances: {'a': 15, 'b': 15}", "c joined: {'a': 10, 'b': 10, 'c': 10}", "pool kept"],
    "prometheus_metrics.py": ['lbclient_ejections_total{service="users"', "} 1\n"],
    "fastapi_service.py": ["alice {'user': 'users-", "'orders': 'orders-"],
    "tcp_proxy.py": ["open connections: {'db-1': 2, 'db-2': 2}", "after db-2 died: ['db-1', 'db-1', 'db-1', 'db-1']"],
    "openai_sdk.py": ["failed calls: 0\n", "streamed: hello there", "httpx2 answered by a pool host: True"],
    "httpx2_client.py": ["answered by: ['a', 'a', 'b', 'b']", "httpx2's: True lb_host: True", "answered by: {'a'}"],
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize(("script", "args"), [(name, []) for name in EXPECTED] + [("async_client.py", ["trio"])])
def test_example_runs(script: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    for text in EXPECTED[script]:
        assert text in done.stdout


def test_demo_runs_briefly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lbclient", "demo", "--quick", "--strategy", "peak_ewma"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Summary" in done.stdout
    assert "(1 of 1 runs)" in done.stdout  # e's ejection and its return were both seen
