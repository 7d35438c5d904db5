"""A discovery source of your own: here a tiny HTTP registry (as Consul or Eureka would be) that lists
the service's instances as JSON. The client re-reads it in the background and follows the fleet."""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from lbclient import Discovery, DiscoveryError, LBClient, Resolution
from lbclient.testing import Backend


class Registry(ThreadingHTTPServer):
    """A registry server on loopback: GET /v1/instances answers the current instance list."""

    def __init__(self) -> None:
        self.instances: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"instances": registry.instances}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class RegistryDiscovery(Discovery):
    """Asks the registry every ``min_interval`` seconds; a failed or empty answer keeps the last hosts."""

    def __init__(self, registry_url: str) -> None:
        super().__init__(min_interval=0.2, max_interval=0.2)
        self.registry_url = registry_url
        self.empty_answers = 0

    def resolve(self) -> Resolution:
        try:
            instances = httpx.get(self.registry_url, timeout=2.0).json()["instances"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise DiscoveryError(f"registry {self.registry_url} did not answer: {exc!r}") from exc
        if not instances:
            self.empty_answers += 1
            raise DiscoveryError("the registry lists no instance")
        return Resolution(instances, ttl=None)


def spread(client: LBClient, count: int = 30) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(count):
        name = client.get("/work").json()["id"]
        seen[name] = seen.get(name, 0) + 1
    return dict(sorted(seen.items()))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


with Backend("a") as a, Backend("b") as b, Backend("c") as c:
    registry = Registry()
    registry.instances = [a.url, b.url]
    source = RegistryDiscovery(f"http://127.0.0.1:{registry.server_address[1]}/v1/instances")
    with LBClient(source) as client:
        print("two instances:", spread(client))
        registry.instances = [a.url, b.url, c.url]  # a deploy scales the service out
        wait_for(lambda: len(client.pool) == 3, "c to join")
        print("c joined:", spread(client))
        registry.instances = []  # a broken registry must not empty the pool
        wait_for(lambda: source.empty_answers >= 2, "two empty answers")
        print("registry empty, pool kept:", spread(client))
    registry.shutdown()
