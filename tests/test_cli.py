"""The ``lbclient demo`` and ``lbclient get`` commands, run in-process against real loopback backends."""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console

from lbclient import _cli_get, _demo
from lbclient.__main__ import main
from lbclient._cli_get import percentile
from lbclient.testing import Backend


def _answered(out: str, backends: list[Backend]) -> dict[str, int]:
    """The ``answered`` column of the plain host table, by backend name."""
    counts = {}
    for backend in backends:
        line = next(line for line in out.splitlines() if line.startswith(backend.url + " "))
        counts[backend.name] = int(line.split()[1])
    return counts


def _rich_to(monkeypatch: pytest.MonkeyPatch, buffer: io.StringIO) -> None:
    """Make both commands render with rich, as on a terminal, into ``buffer``."""

    def console(plain: bool = False) -> Console:
        return Console(file=buffer, force_terminal=True, width=180)

    monkeypatch.setattr(_cli_get, "rich_console", console)
    monkeypatch.setattr(_demo, "rich_console", console)


# -- demo -------------------------------------------------------------------------------------------------


def test_demo_quick_shows_an_ejection_a_recovery_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    strategies = ["round_robin", "least_connections", "power_of_two_choices", "peak_ewma"]
    # Plain progress lines (stdout is not a terminal), the events as they happen.
    assert re.search(r"round_robin \+1\.\d/2\.5 s: \d+ requests", out)
    assert re.search(r"\+\d+\.\d\d s  e ejected: 5 consecutive gateway failures", out)
    assert re.search(r"\+\d+\.\d\d s  e returned: health check passed", out)
    # The summary: one row per strategy with requests for each host, then what the run showed.
    summary = out[out.index("Summary") :]
    header = summary.splitlines()[1].split()
    assert header[:6] == ["strategy", "a", "b", "c", "d", "e"]
    for strategy in strategies:
        row = next(line for line in summary.splitlines() if line.startswith(strategy + " "))
        assert all(int(cell) > 0 for cell in row.split()[1:6]), row
    assert re.search(r"Ejection: e was taken out \d+(-\d+)? ms after it crashed \(4 of 4 runs\)", summary)
    assert re.search(r"Recovery: e was back [\d.]+(-[\d.]+)? s after it restarted \(4 of 4 runs\)", summary)
    assert "Callers saw 0 errors" in summary


def test_demo_live_view_with_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    _rich_to(monkeypatch, buffer)
    assert main(["demo", "--quick", "--strategy", "least_connections"]) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert "in flight" in out  # the live table
    assert "EWMA ms" in out
    assert "strategy 1/1" in out  # the progress line under its bar
    assert re.search(r"e ejected: 5 consecutive gateway failures", out)
    assert "Summary" in out
    assert "(1 of 1 runs)" in out


def test_demo_rejects_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--duration", "0"])
    assert exited.value.code == 2
    assert "--duration: must be a number > 0, got '0'" in capsys.readouterr().err


# -- get --------------------------------------------------------------------------------------------------


def test_get_counts_add_up_to_n(capsys: pytest.CaptureFixture[str], backends: list[Backend]) -> None:
    hosts = [b.url for b in backends]
    assert main(["get", "/api/x", "--hosts", *hosts, "-n", "90", "-c", "6"]) == 0
    out = capsys.readouterr().out
    assert "GET /api/x on 3 hosts: 90 requests from 6 tasks, strategy round_robin" in out
    counts = _answered(out, backends)
    assert sum(counts.values()) == 90
    assert counts == {"a": 30, "b": 30, "c": 30}  # round robin, nothing failed
    assert [b.count(path="/api/x") for b in backends] == [30, 30, 30]  # what really arrived
    assert re.search(r"90 requests in [\d.]+ s \(\d+/s\), 0 errors, 0 retried; p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert "pool events: none" in out


def test_get_with_a_dead_host_reports_its_ejection(capsys: pytest.CaptureFixture[str], backends: list[Backend]) -> None:
    backends[2].kill()
    hosts = [b.url for b in backends]
    code = main(["get", "http://ignored.example/api?q=1", "--hosts", *hosts, "-n", "60"])
    out = capsys.readouterr().out
    assert code == 0  # every failed attempt was retried on a live host
    counts = _answered(out, backends)
    assert sum(counts.values()) == 60
    assert counts["c"] == 0
    dead = next(line for line in out.splitlines() if line.startswith(backends[2].url))
    assert dead.split()[-2:] == ["1", "ejected"]  # ejections, state
    assert f"{backends[2].url} ejected: 5 consecutive gateway failures" in out
    assert backends[0].count(path="/api") + backends[1].count(path="/api") == 60


def test_get_method_and_no_answer_row(capsys: pytest.CaptureFixture[str], backends: list[Backend]) -> None:
    backends[0].kill()
    code = main(["get", "items", "--hosts", backends[0].url, "-n", "3", "-c", "3", "-X", "delete"])
    out = capsys.readouterr().out
    assert code == 1  # requests failed
    assert "DELETE /items on 1 hosts" in out
    row = next(line for line in out.splitlines() if line.startswith("(no answer)"))
    assert row.split()[2:4] == ["3", "100%"]
    assert "ConnectError" in row


def test_get_with_rich(monkeypatch: pytest.MonkeyPatch, backends: list[Backend]) -> None:
    buffer = io.StringIO()
    _rich_to(monkeypatch, buffer)
    hosts = [b.url for b in backends]
    assert main(["get", "/", "--hosts", *hosts, "-n", "30", "--strategy", "least_connections", "-c", "1"]) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert "failed attempts" in out
    for backend in backends:
        assert re.search(re.escape(backend.url) + r" +│ +10 │ +33% │", out)


def test_get_without_rich_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backends: list[Backend]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails, as when it is not installed
    assert main(["get", "/", "--hosts", backends[0].url, "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == _cli_get.NO_RICH
    assert _answered(out, backends[:1]) == {"a": 5}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "fastest"], "argument --strategy: invalid choice: 'fastest'"),
        (["-n", "0"], "argument -n/--requests: must be an integer >= 1, got '0'"),
        (["-n", "ten"], "argument -n/--requests: must be an integer >= 1, got 'ten'"),
        (["-c", "-2"], "argument -c/--concurrency: must be an integer >= 1, got '-2'"),
        (["-X", "GE T"], "argument --method/-X: must be an HTTP method such as GET, got 'GE T'"),
        (["--timeout", "0"], "argument --timeout: must be a number > 0, got '0'"),
    ],
)
def test_get_rejects_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["get", "/", "--hosts", "127.0.0.1:9", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_get_rejects_a_bad_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "/", "--hosts", "127.0.0.1:9", "ftp://files.example"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lbclient get: error: ")
    assert "'ftp://files.example'" in err


def test_get_needs_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["get", "/"])
    assert "--hosts" in capsys.readouterr().err


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None


def test_sim_help_reaches_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sim", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "herding" in out
    assert "retries" in out


def test_sim_list_runs_through_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "list"]) == 0
    assert "herding" in capsys.readouterr().out


def test_proxy_rejects_a_bad_keep_alive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["proxy", "--hosts", "127.0.0.1:1", "--keep-alive", "0"])
    assert info.value.code == 2
    assert "'0'" in capsys.readouterr().err
