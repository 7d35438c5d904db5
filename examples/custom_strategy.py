"""A strategy of your own: subclass Strategy, keep whatever state you need, pick from the view."""

from __future__ import annotations

from lbclient import HostState, LBClient, PoolView, Strategy
from lbclient.testing import Backend


class FirstHealthy(Strategy):
    """Always the first candidate: active-passive failover."""

    name = "first_healthy"

    def update(self, view: PoolView) -> None:
        super().update(view)
        self._first = view.candidates[0] if view.candidates else None

    def pick(self, key: str | None, now: float) -> HostState | None:
        return self._first


with Backend("primary") as primary, Backend("standby") as standby:
    client = LBClient([primary.url, standby.url], strategy=FirstHealthy())
    with client:
        print([client.get("/").json()["id"] for _ in range(3)])
        client.pool.hosts[0].ejected = True  # what outlier detection will do when primary fails
        client.pool.refresh()
        print([client.get("/").json()["id"] for _ in range(3)])
