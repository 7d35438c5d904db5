"""httpx2 (the maintained fork of httpx): mount lbclient's balancing transport on an httpx2.Client."""

import httpx2

from lbclient.httpx2 import LoadBalancingTransport
from lbclient.testing import Backend

with Backend("a") as a, Backend("b") as b:
    users = LoadBalancingTransport([a.url, b.url], service="users", strategy="round_robin")
    with httpx2.Client(mounts={"all://users": users}, timeout=5.0) as client:
        answered = [client.get("http://users/api/profile").json()["id"] for _ in range(4)]
        print("answered by:", sorted(answered))
        r = client.get("http://users/api/profile")
        print(
            "response is httpx2's:",
            isinstance(r, httpx2.Response),
            "lb_host:",
            r.extensions["lb_host"] in (a.url, b.url),
        )
        b.kill()
        print("b killed, still answered by:", {client.get("http://users/x").json()["id"] for _ in range(4)})
