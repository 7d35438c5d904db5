"""Mount balancing transports on a plain httpx client: one per downstream service."""

import httpx

from lbclient import LoadBalancingTransport
from lbclient.testing import Backend

with Backend("users-1") as u1, Backend("users-2") as u2, Backend("orders-1") as o1:
    mounts = {
        "all://users": LoadBalancingTransport([u1.url, u2.url], service="users"),
        "all://orders": LoadBalancingTransport([o1.url], service="orders", strategy="least_connections"),
    }
    with httpx.Client(mounts=mounts) as client:
        for _ in range(2):
            print(client.get("http://users/profile").json()["id"])
        print(client.get("http://orders/list").json()["id"])
