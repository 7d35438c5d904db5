"""Per-host metrics in Prometheus' text format from ``client.pool.stats()``, served on /metrics with
the standard library only (with prometheus_client, the same snapshot feeds a custom collector). For
OpenTelemetry, ``lbclient.otel.instrument(client)`` reports the same figures."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from lbclient import LBClient, OutlierDetection, PoolStats
from lbclient.testing import Backend

METRICS = [
    # name, type, help, how to read it from a HostStats
    ("lbclient_requests_total", "counter", "Requests sent to the host", lambda h: h.requests),
    ("lbclient_failures_total", "counter", "Requests to the host that failed", lambda h: h.failures),
    ("lbclient_ejections_total", "counter", "Times the host was ejected", lambda h: h.times_ejected),
    ("lbclient_in_flight", "gauge", "Requests in flight", lambda h: h.outstanding),
    ("lbclient_available", "gauge", "1 while the host takes new requests", lambda h: int(h.available)),
]


def exposition(service: str, stats: PoolStats) -> str:
    lines = []
    for name, kind, text, read in METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{service="{service}",host="{h.url}"}} {read(h)}' for h in stats.hosts]
    return "\n".join(lines) + "\n"


def serve_metrics(client: LBClient) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(client.service, client.pool.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


with Backend("a") as a, Backend("b") as b:
    detection = OutlierDetection(consecutive_failures=2, base_ejection_time=30.0)
    with LBClient([a.url, b.url], service="users", outlier_detection=detection) as client:
        metrics = serve_metrics(client)
        for _ in range(10):
            client.get("/api")
        b.kill()  # its failed attempts are retried on a, then it is ejected
        for _ in range(10):
            client.get("/api")
        scrape = httpx.get(f"http://127.0.0.1:{metrics.server_address[1]}/metrics")
        print(scrape.text, end="")
        metrics.shutdown()
