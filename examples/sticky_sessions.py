"""Sticky routing with hash strategies: the same key reaches the same host in every process."""

from lbclient import LBClient
from lbclient.testing import Backend

with Backend("a") as a, Backend("b") as b, Backend("c") as c:
    with LBClient([a.url, b.url, c.url], strategy="consistent_hash") as client:
        for user in ("alice", "bob", "alice", "carol", "bob"):
            r = client.get("/cart", extensions={"lb_key": user})
            print(user, "->", r.json()["id"])
    with LBClient([a.url, b.url, c.url], strategy="ip_hash") as client:
        for ip in ("203.0.113.7", "198.51.100.23", "203.0.113.7"):
            r = client.get("/page", headers={"X-Forwarded-For": ip})
            print(ip, "->", r.json()["id"])
