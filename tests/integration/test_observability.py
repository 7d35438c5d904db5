"""Stats snapshots, the event hook and OpenTelemetry metrics, against real loopback backends."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

import lbclient
from lbclient import LBClient, OutlierDetection, PoolEvent
from lbclient.testing import Backend

EJECT_AT_ONCE = OutlierDetection(consecutive_failures=1, base_ejection_time=30.0)


def _spread_with_one_dead(client: LBClient, dead: Backend, count: int = 12) -> None:
    dead.kill()
    for _ in range(count):
        assert client.get("/x").status_code == 200  # the dead host's attempts are retried elsewhere


def test_stats_is_a_consistent_snapshot_of_counters_and_state(backends: list[Backend]) -> None:
    a, b, c = backends
    with LBClient([a.url, b.url, c.url], outlier_detection=EJECT_AT_ONCE) as client:
        _spread_with_one_dead(client, b)
        stats = client.pool.stats()
    by_url = {host.url: host for host in stats.hosts}
    assert list(by_url) == [a.url, b.url, c.url]
    dead = by_url[b.url]
    assert (dead.ejected, dead.times_ejected, dead.failures) == (True, 1, 1)
    assert (dead.available, by_url[a.url].available) == (False, True)
    assert by_url[a.url].requests + by_url[c.url].requests == 12
    assert by_url[a.url].requests == a.count()
    assert all(host.outstanding == 0 for host in stats.hosts)
    assert by_url[a.url].ewma_latency is not None
    assert (stats.panic, stats.available) == (False, 2)
    assert json.loads(json.dumps(stats.as_dict()))["hosts"][1]["times_ejected"] == 1


def test_on_event_sees_ejections_and_a_failing_hook_breaks_nothing(
    backends: list[Backend], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = backends
    seen: list[PoolEvent] = []

    def hook(event: PoolEvent) -> None:
        seen.append(event)
        raise RuntimeError("a bug in the user's hook")

    with LBClient([a.url, b.url, c.url], outlier_detection=EJECT_AT_ONCE, on_event=hook) as client:
        with caplog.at_level(logging.ERROR, logger="lbclient"):
            _spread_with_one_dead(client, b)
        client.pool.update([a.url, c.url])
    assert [(event.kind, event.host) for event in seen] == [("ejected", b.url), ("removed", b.url)]
    assert "on_event hook" in caplog.text
    assert "a bug in the user's hook" in caplog.text


@pytest.mark.parametrize("bad", ["print", 42])
def test_on_event_must_be_callable(bad: Any) -> None:
    with pytest.raises(TypeError, match=repr(bad)):
        LBClient(["a:1"], on_event=bad)


def test_opentelemetry_metrics_follow_the_pool(backends: list[Backend]) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from lbclient.otel import instrument

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    a, b, c = backends
    with LBClient([a.url, b.url, c.url], outlier_detection=EJECT_AT_ONCE, service="users") as client:
        instrument(client, meter=provider.get_meter("test"))
        _spread_with_one_dead(client, b)
        data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, dict[str, float]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    key = str(attributes.get("lb.host", "pool"))
                    assert attributes["lb.service"] == "users"
                    points.setdefault(metric.name, {})[key] = point.value  # type: ignore[union-attr]
    assert points["lbclient.requests"][a.url] + points["lbclient.requests"][c.url] == 12
    assert points["lbclient.failures"][b.url] == 1
    assert points["lbclient.ejections"] == {a.url: 0, b.url: 1, c.url: 0}
    assert points["lbclient.available"] == {a.url: 1, b.url: 0, c.url: 1}
    assert points["lbclient.in_flight"] == {a.url: 0, b.url: 0, c.url: 0}
    assert points["lbclient.panic"] == {"pool": 0}
    latency = points["lbclient.latency.ewma"]
    assert latency[b.url] > max(latency[a.url], latency[c.url])  # a failure counts as a slow answer


def test_instrument_refuses_what_is_not_a_balancer() -> None:
    pytest.importorskip("opentelemetry")
    from lbclient.otel import instrument

    with httpx.Client() as plain, pytest.raises(TypeError, match="Client"):
        instrument(plain)  # type: ignore[arg-type]


def test_stats_types_are_public() -> None:
    assert lbclient.PoolStats.__name__ == "PoolStats"
    assert "times_ejected" in lbclient.HostStats.__dataclass_fields__
