"""Every example runs against the backends it starts itself, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "sync_client.py": ["/v1/api/data", "bypass: c"],
    "async_client.py": ["requests per backend"],
    "mounts.py": ["users-1", "users-2", "orders-1"],
    "sticky_sessions.py": ["alice ->", "203.0.113.7 ->"],
    "custom_strategy.py": ["['primary', 'primary', 'primary']", "['standby', 'standby', 'standby']"],
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize(("script", "args"), [(name, []) for name in EXPECTED] + [("async_client.py", ["trio"])])
def test_example_runs(script: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for text in EXPECTED[script]:
        assert text in done.stdout


def test_demo_runs_briefly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lbclient", "demo", "-n", "40", "-c", "4", "--strategy", "peak_ewma"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "peak_ewma" in done.stdout
