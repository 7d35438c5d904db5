"""The fleet simulator: conservation, determinism, and the fleet effects it exists to show, on small sizes.

Every run here is seeded and on a fake clock; nothing measures wall time.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from lbclient._core import STRATEGIES, HealthCheck, HostState, OutlierDetection, RetryPolicy, Strategy
from lbclient.sim import (
    SCENARIOS,
    Change,
    HostModel,
    SimConfig,
    SimResult,
    Workload,
    format_table,
    main,
    plot,
    rolling_restart,
    run,
    run_scenario,
    single_client_configs,
)


def assert_conserved(result: SimResult, requests: int) -> None:
    assert result.completed == requests
    assert result.unfinished == 0
    assert result.leases_open == 0
    assert result.pool_outstanding == 0


def eventful(strategy: str, loop: str = "open", **workload: object) -> SimConfig:
    """Everything at once: errors, a host down then back, a host that hangs, a slow host, a deploy with
    discovery lag, health checks, timeouts and retries."""
    hosts = tuple(HostModel(latency=0.01, workers=4, error_rate=0.05 if i == 1 else 0.0) for i in range(8))
    changes = (
        Change(0.3, (2,), down=True),
        Change(0.5, (3,), hang=True),
        Change(0.6, (4,), latency=0.1),
        Change(0.9, (2,), down=False),
        Change(1.0, (3,), hang=False),
        *rolling_restart([5, 6], start=0.4, every=0.2, down_for=0.3, spread=0.1),
    )
    options: dict[str, object] = {
        "clients": 12,
        "requests": 3_000,
        "loop": loop,
        "rate": 150.0,
        "concurrency": 3,
        "timeout": 0.5,
        **workload,
    }
    return SimConfig(
        hosts,
        Workload(**options),  # type: ignore[arg-type]
        strategy,
        changes=changes,
        retries=RetryPolicy(per_try_timeout=0.2),
        health_check=HealthCheck(interval=0.1),
        outlier_detection=OutlierDetection(consecutive_failures=3, base_ejection_time=0.2, max_ejection_time=1.0),
        seed=7,
    )


# -- conservation and determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["open", "closed"])
@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "peak_ewma", "consistent_hash"])
def test_every_request_ends_once_and_every_lease_is_released(strategy: str, loop: str) -> None:
    result = run(eventful(strategy, loop))
    assert_conserved(result, 3_000)
    assert result.requests == 3_000
    assert sum(result.host_attempts) + sum(result.host_refused) == result.attempts
    assert result.attempts > result.requests  # the failures were retried
    assert result.errors < result.requests
    if loop == "open" and strategy == "round_robin":
        # some requests ran out of attempts, deadline or budget (peak_ewma may steer clear of them all)
        assert result.errors > 0
    assert result.p50 <= result.p99 <= result.p999


def test_warmup_requests_are_not_measured() -> None:
    config = eventful("power_of_two_choices", warmup=1_000)
    result = run(config)
    assert_conserved(result, 3_000)
    assert result.requests == 2_000


def test_a_seed_replays_a_run_exactly() -> None:
    config = eventful("peak_ewma")
    first, second = run(config).to_dict(), run(config).to_dict()
    for data in (first, second):
        data.pop("wall_seconds")
    assert first == second
    other = run(replace(config, seed=8)).to_dict()
    other.pop("wall_seconds")
    assert other != first


def test_result_is_json_able_and_the_table_names_every_run() -> None:
    results = [run(replace(eventful(s), label=f"run {s}")) for s in ("round_robin", "random")]
    text = json.dumps([r.to_dict() for r in results])
    assert json.loads(text)[0]["label"] == "run round_robin"
    table = format_table(results)
    for text in ("run round_robin", "run random", "p99.9"):
        assert text in table


def test_hosts_that_hang_need_a_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        SimConfig((HostModel(hang=True), HostModel()))
    with pytest.raises(ValueError, match="strategy"):
        SimConfig((HostModel(),), strategy="fastest")
    with pytest.raises(ValueError, match="host 3"):
        SimConfig((HostModel(),), changes=(Change(1.0, (3,), down=True),))


def test_rolling_restart_takes_each_host_out_and_back() -> None:
    changes = rolling_restart([0, 1], start=1.0, every=2.0, down_for=0.5, spread=0.2)
    assert [(c.at, c.hosts, c.down, c.in_pool) for c in changes] == [
        (1.0, (0,), True, False),
        (1.5, (0,), False, True),
        (3.0, (1,), True, False),
        (3.5, (1,), False, True),
    ]


# -- the core decides -------------------------------------------------------------------------------------------


def test_refused_connections_are_retried_on_another_host() -> None:
    hosts = (HostModel(down=True), HostModel(), HostModel())
    config = SimConfig(
        hosts, Workload(clients=1, requests=300, loop="closed"), "round_robin", outlier_detection=None, budget=False
    )
    result = run(config)
    assert result.errors == 0
    # Host 0 refuses; the retry takes the next host, which moves the rotation on: so every other
    # request meets host 0 first, and is answered by host 1. The rotation starts at a random host: from
    # host 1, the first request is answered at once and host 0 is met once fewer.
    refused = result.host_refused[0]
    assert refused in (149, 150)
    assert result.attempts == 300 + refused
    assert result.host_attempts == [0, 150, 150]


def test_without_retries_an_error_reaches_the_caller() -> None:
    hosts = (HostModel(error_rate=1.0), HostModel())
    workload = Workload(clients=1, requests=200, loop="closed")
    result = run(SimConfig(hosts, workload, "round_robin", retries=1, outlier_detection=None))
    assert result.error_rate == pytest.approx(0.5)
    # With outlier detection the failing host is ejected after 5 failures in a row.
    ejecting = run(SimConfig(hosts, workload, "round_robin", retries=1))
    assert ejecting.errors == 5
    assert result.attempts_per_request == 1.0


def test_membership_changes_reach_every_pool() -> None:
    hosts = tuple(HostModel(in_pool=i < 3) for i in range(4))
    changes = (Change(0.5, (3,), in_pool=True, spread=0.2), Change(1.0, (0,), in_pool=False))
    workload = Workload(clients=20, requests=20_000, rate=500.0, warmup=19_000)
    result = run(SimConfig(hosts, workload, "round_robin", changes=changes))
    assert_conserved(result, 20_000)
    assert result.host_attempts[0] == 0  # gone from every pool before the measured stretch
    assert min(result.host_attempts[1:]) > 250


# -- fleet effects, in the expected direction --------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "weighted_round_robin"])
def test_a_fleet_restarted_together_does_not_herd(strategy: str) -> None:
    """Every client sees every host idle, so the tie-break decides. With the same order in every client
    (here: every strategy given the same seeded generator, which is what a fixed start at the first host
    amounted to) the whole fleet picks the same host at once; with each client's own generator the
    rotation starts anywhere, and the fleet spreads as well as P2C."""
    hosts = tuple(HostModel(latency=0.02, workers=4) for _ in range(50))
    workload = Workload(clients=100, requests=6_000, loop="open", rate=40.0)
    cls = STRATEGIES[strategy]
    own = run(SimConfig(hosts, workload, strategy))
    same = run(SimConfig(hosts, workload, lambda: cls(rng=random.Random(0))))
    p2c = run(SimConfig(hosts, workload, "power_of_two_choices"))
    assert same.peak_concurrency > 3 * own.peak_concurrency
    assert same.p99 > 2 * own.p99
    assert own.peak_concurrency <= p2c.peak_concurrency + 3
    assert own.p99 < 1.2 * p2c.p99


def test_clients_that_start_apart_do_not_herd() -> None:
    hosts = tuple(HostModel(latency=0.02, workers=4) for _ in range(50))
    workload = Workload(clients=100, requests=12_000, loop="open", rate=40.0, start_spread=3.0, warmup=6_000)
    lc = run(SimConfig(hosts, workload, "least_connections"))
    assert lc.peak_concurrency < 25


def test_least_response_time_herds_onto_a_joining_host_and_p2c_does_not() -> None:
    hosts = tuple(HostModel(latency=0.02, workers=4, in_pool=i < 19) for i in range(20))
    workload = Workload(clients=60, requests=9_000, loop="open", rate=50.0, start_spread=1.0, warmup=4_500)
    join = (Change(2.0, (19,), in_pool=True),)
    results = {s: run(SimConfig(hosts, workload, s, changes=join)) for s in ("least_response_time", "peak_ewma")}
    # Every least_response_time client sends the idle-looking newcomer a request at once.
    assert results["least_response_time"].host_peak[19] >= 50
    assert results["peak_ewma"].host_peak[19] < 20


def retry_outage(clients: int, rate: float, **options: object) -> SimResult:
    hosts = tuple(HostModel(latency=0.02, workers=8) for _ in range(10))
    workload = Workload(clients=clients, requests=6_000, loop="open", rate=rate, warmup=2_000, timeout=2.0)
    outage = (Change(2_000 / (clients * rate), tuple(range(10)), error_rate=0.7),)
    config = SimConfig(hosts, workload, "power_of_two_choices", changes=outage, **options)  # type: ignore[arg-type]
    result = run(config)
    assert_conserved(result, 6_000)
    return result


def test_retries_amplify_an_outage_and_the_budget_caps_them() -> None:
    unbounded = retry_outage(5, 400.0, budget=False)
    budgeted = retry_outage(5, 400.0)
    assert unbounded.attempts_per_request == pytest.approx(1 + 0.7 + 0.49, abs=0.1)
    assert budgeted.attempts_per_request < 1.45
    assert budgeted.retries_denied > 0
    assert unbounded.retries_denied == 0
    assert unbounded.p99 > budgeted.p99


def test_the_budget_floor_is_per_client_so_a_fleet_of_small_clients_retries_more() -> None:
    few_big = retry_outage(5, 400.0)
    many_small = retry_outage(50, 40.0)
    assert many_small.attempts_per_request > few_big.attempts_per_request + 0.2


def panic_run(threshold: float) -> SimResult:
    """12 of 20 hosts fail their health checks from the start, but still serve."""
    hosts = tuple(HostModel(latency=0.02, workers=8, health_ok=i < 8) for i in range(20))
    workload = Workload(clients=20, requests=8_000, loop="open", rate=100.0, warmup=4_000)
    config = SimConfig(hosts, workload, "power_of_two_choices", health_check=HealthCheck(interval=0.2))
    result = run(replace(config, panic_threshold=threshold))
    assert_conserved(result, 8_000)
    return result


def test_panic_spreads_requests_over_every_host() -> None:
    panic = panic_run(0.5)
    assert panic.panic_attempts == panic.attempts
    assert min(panic.host_attempts) > 0.5 * sum(panic.host_attempts) / 20
    assert panic.load_max_mean < 1.5
    strict = panic_run(0.0)
    assert strict.panic_attempts == 0
    assert sum(strict.host_attempts[8:]) == 0  # only the 8 healthy hosts
    assert strict.load_max_mean > 2.0


def test_peak_ewma_keeps_the_tail_off_a_slow_host() -> None:
    hosts = tuple(HostModel(latency=0.1 if i == 0 else 0.01, workers=16) for i in range(10))
    workload = Workload(clients=20, requests=10_000, loop="open", rate=100.0, start_spread=1.0, warmup=4_000)
    rr = run(SimConfig(hosts, workload, "round_robin"))
    pe = run(SimConfig(hosts, workload, "peak_ewma"))
    assert rr.host_attempts[0] > 0.08 * sum(rr.host_attempts)
    assert pe.host_attempts[0] < 0.03 * sum(pe.host_attempts)
    assert pe.p99 < 0.5 * rr.p99


def test_a_client_short_of_cpu_queues_its_own_requests() -> None:
    hosts = tuple(HostModel(latency=0.005, distribution="constant") for _ in range(5))
    workload = Workload(clients=1, requests=2_000, loop="closed", concurrency=16, warmup=200)
    idle = run(SimConfig(hosts, workload))
    busy = run(SimConfig(hosts, replace(workload, client_cpu=0.001)))
    assert idle.p50 == pytest.approx(0.005)
    # 1 ms of CPU per request: at most 1,000 requests a second, so 16 in flight take 16 ms each.
    assert busy.p50 == pytest.approx(0.016, rel=0.01)


def test_a_spread_round_trip_keeps_its_mean() -> None:
    hosts = tuple(HostModel(latency=0.005, distribution="constant") for _ in range(5))
    workload = Workload(clients=1, requests=5_000, loop="closed", concurrency=4, rtt=0.001)
    fixed = run(SimConfig(hosts, workload))
    spread = run(SimConfig(hosts, replace(workload, rtt_sigma=1.0)))
    assert fixed.p50 == pytest.approx(0.006)
    assert fixed.p99 == pytest.approx(0.006)
    assert spread.mean == pytest.approx(0.006, rel=0.03)
    assert spread.p50 < 0.006 < spread.p99


def test_event_loop_stalls_delay_every_request_in_flight() -> None:
    hosts = tuple(HostModel(latency=0.005, distribution="constant") for _ in range(5))
    workload = Workload(clients=1, requests=5_000, loop="closed", concurrency=8, warmup=500)
    calm = run(SimConfig(hosts, workload))
    stalled = run(SimConfig(hosts, replace(workload, stall_rate=20.0, stall_mean=0.010)))
    assert calm.p99 == pytest.approx(0.005)
    # 20 pauses of 10 ms a second: a request whose answer comes during one waits for its end.
    assert stalled.p50 == pytest.approx(0.005)
    assert stalled.p99 > 0.015
    assert stalled.mean > 1.1 * calm.mean


def test_stalls_send_peak_ewma_to_a_slow_host_more_often() -> None:
    def share(rate: float, mean: float) -> float:
        (config,) = single_client_configs(
            8, strategies=("peak_ewma",), client_cpu=0.0005, stall_rate=rate, stall_mean=mean
        )
        result = run(config)
        return result.host_attempts[2] / sum(result.host_attempts)

    assert share(0.0, 0.0) < 0.002
    assert share(20.0, 0.008) > 0.005


def test_workload_rejects_negative_network_and_stall_figures() -> None:
    for bad in ({"rtt": -0.001}, {"rtt_sigma": -1.0}, {"stall_rate": -1.0}, {"stall_mean": float("nan")}):
        with pytest.raises(ValueError, match=">= 0"):
            Workload(**bad)  # type: ignore[arg-type]


def test_a_custom_strategy_runs_in_every_client() -> None:
    made: list[Strategy] = []

    def factory() -> Strategy:
        strategy = FirstHost()
        made.append(strategy)
        return strategy

    hosts = (HostModel(), HostModel())
    result = run(SimConfig(hosts, Workload(clients=3, requests=300), factory))
    assert result.strategy == "first"
    assert result.host_attempts == [300, 0]
    assert len(made) == 4  # one per client, and one to read its name


class FirstHost(Strategy):
    name = "first"

    def pick(self, key: str | None, now: float) -> HostState | None:
        candidates = self._view.candidates
        return candidates[0] if candidates else None


def test_single_client_scenario_matches_its_arithmetic() -> None:
    results = {r.strategy: r for r in (run(c) for c in single_client_configs(16, requests=1_000, warmup=200))}
    rr = results["round_robin"]
    assert rr.host_attempts[2] == 200  # a fifth of the requests go to the slow host
    assert rr.p50 == pytest.approx(0.005)
    assert rr.p99 == pytest.approx(0.055)
    assert results["peak_ewma"].p99 == pytest.approx(0.005)


# -- scenarios and the command line -----------------------------------------------------------------------------


def test_every_scenario_has_a_part_and_runs_small() -> None:
    result = run_scenario("single", scale=0.1)
    assert result.findings
    assert result.parts
    assert "round_robin x16" in result.render()
    assert json.loads(json.dumps(result.to_dict()))["name"] == "single"
    for scenario in SCENARIOS.values():
        parts = scenario.build(0.01, 0)
        assert parts
        assert all(part.configs for part in parts)


def test_plot_only_with_matplotlib(tmp_path: Path) -> None:
    result = run_scenario("single", scale=0.05)
    target = tmp_path / "cdf.png"
    drawn = plot([result], target)
    assert drawn == (importlib.util.find_spec("matplotlib") is not None)
    assert target.exists() == drawn


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "herding" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "panic" in capsys.readouterr().out
    assert main(["run", "--clients", "3", "--hosts", "4", "--requests", "500", "--strategy", "random"]) == 0
    out = capsys.readouterr().out
    assert "random" in out
    assert "3 clients x 4 hosts x 500 requests" in out
