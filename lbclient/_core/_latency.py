"""Recent latencies of a pool, for percentiles (the hedging delay)."""

from __future__ import annotations

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """The last ``size`` latency samples in a ring; ``percentile`` is recomputed every ``refresh``
    samples (a sort of ``size`` values), so a read costs nothing and a record O(1) amortised."""

    __slots__ = ("_samples", "_size", "_next", "_refresh", "_since", "_sorted")

    def __init__(self, size: int = 1024, refresh: int = 64) -> None:
        self._samples: list[float] = []
        self._size = size
        self._next = 0
        self._refresh = refresh
        self._since = 0
        self._sorted: list[float] = []

    def record(self, sample: float) -> None:
        if len(self._samples) < self._size:
            self._samples.append(sample)
        else:
            self._samples[self._next] = sample
            self._next = (self._next + 1) % self._size
        self._since += 1
        if self._since >= self._refresh or len(self._sorted) < self._refresh:
            self._since = 0
            self._sorted = sorted(self._samples)

    def percentile(self, share: float) -> float | None:
        """The ``share`` quantile (0..1) of recent samples; None until there are enough of them."""
        ordered = self._sorted
        if len(ordered) < self._refresh:
            return None
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
