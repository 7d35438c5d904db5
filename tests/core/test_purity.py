"""The core is pure: it imports no I/O, async or thread machinery, reads no clock and uses neither the
global random generator nor Python's salted ``hash()``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lbclient._core

CORE = Path(lbclient._core.__file__).resolve().parent
PACKAGE = CORE.parent

FORBIDDEN_AT_RUNTIME = (
    "httpx",
    "httpcore",
    "anyio",
    "trio",
    "sniffio",
    "tenacity",
    "socket",
    "ssl",
    "selectors",
    "asyncio",
    "concurrent.futures",
    "lbclient._transports",
    "lbclient._client",
)

# The child imports lbclient._core under a bare ``lbclient`` package, so that lbclient/__init__.py (which
# pulls in the clients) does not run: only what the core itself imports is loaded.
_CHILD = """
import json, sys, types
package = types.ModuleType("lbclient")
package.__path__ = [sys.argv[1]]
sys.modules["lbclient"] = package
before = set(sys.modules)
import lbclient._core
from lbclient._core import Pool
core = sorted(set(sys.modules) - before)
import lbclient._transports  # control: the shell does pull httpx in, so the check can see it
print(json.dumps({"core": core, "control": "httpx" in sys.modules}))
"""


def test_importing_the_core_loads_no_io_or_async_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", _CHILD, str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["control"] is True
    loaded = set(report["core"])
    assert "lbclient._core._pool" in loaded
    for name in FORBIDDEN_AT_RUNTIME:
        assert not {m for m in loaded if m == name or m.startswith(name + ".")}, (name, sorted(loaded))


FORBIDDEN_IMPORTS = {
    "time",
    "datetime",
    "threading",
    "_thread",
    "multiprocessing",
    "concurrent",
    "asyncio",
    "socket",
    "ssl",
    "select",
    "selectors",
    "subprocess",
    "os",
    "io",
    "logging",
    "secrets",
    "uuid",
    "httpx",
    "httpcore",
    "anyio",
    "trio",
    "sniffio",
    "tenacity",
}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_source_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    random_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_IMPORTS:
                    problems.append(f"line {node.lineno}: import {alias.name}")
                if alias.name == "random":
                    random_aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.module and node.module.split(".")[0] in {"_transports", "_client"}:
                    problems.append(f"line {node.lineno}: from ..{node.module} import")
                continue
            top = (node.module or "").split(".")[0]
            if top in FORBIDDEN_IMPORTS or (node.level == 0 and top == "lbclient"):
                problems.append(f"line {node.lineno}: from {node.module} import")
            if top == "random":
                extra = {a.name for a in node.names} - {"Random"}
                if extra:
                    problems.append(f"line {node.lineno}: from random import {sorted(extra)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash":
            problems.append(f"line {node.lineno}: hash() is salted per process")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_aliases
            and node.attr != "Random"
        ):
            problems.append(f"line {node.lineno}: global random generator ({node.value.id}.{node.attr})")
    assert not problems, f"{path.name}: {problems}"
