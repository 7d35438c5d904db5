"""LBClient: balance relative requests over a pool; absolute URLs bypass it."""

from lbclient import Host, LBClient
from lbclient.testing import Backend

with Backend("a") as a, Backend("b") as b, Backend("c") as outside:
    hosts = [a.url, Host(f"{b.url}/v1", weight=2)]  # b gets twice a's share; /v1 goes in front of paths
    with LBClient(hosts, strategy="weighted_round_robin", timeout=5.0) as client:
        for _ in range(3):
            r = client.get("/api/data", params={"q": "x"})
            print(r.json()["id"], r.json()["path"], "via", r.extensions["lb_host"])
        print("bypass:", client.get(f"{outside.url}/elsewhere").json()["id"])
        for host in client.pool.hosts:
            print(f"{host.url}: requests={host.requests} in-flight={host.outstanding} ewma={host.ewma_latency:.4f}s")
