"""The window of recent latencies behind percentile hedging delays."""

from __future__ import annotations

import random

from lbclient._core._latency import LatencyWindow


def test_no_percentile_until_enough_samples() -> None:
    window = LatencyWindow(size=256, refresh=16)
    for value in range(15):
        window.record(float(value))
        assert window.percentile(0.5) is None
    window.record(15.0)
    assert window.percentile(0.5) == 8.0


def test_percentile_follows_the_recent_samples_only() -> None:
    window = LatencyWindow(size=100, refresh=10)
    for _ in range(100):
        window.record(1.0)
    assert window.percentile(0.99) == 1.0
    for _ in range(100):
        window.record(5.0)
    assert window.percentile(0.01) == 5.0


def test_percentile_matches_a_sorted_reference() -> None:
    rng = random.Random(4)
    window = LatencyWindow(size=500, refresh=1)
    samples = [rng.expovariate(10) for _ in range(500)]
    for sample in samples:
        window.record(sample)
    ordered = sorted(samples)
    assert window.percentile(0.95) == ordered[int(0.95 * 500)]
