"""AsyncLBClient on asyncio or trio (``python examples/async_client.py trio``)."""

import sys

import anyio

from lbclient import AsyncLBClient
from lbclient.testing import Backend


async def main() -> None:
    with Backend("a") as a, Backend("b") as b, Backend("slow", delay=0.05) as slow:
        async with AsyncLBClient([a.url, b.url, slow.url], strategy="peak_ewma") as client:
            seen: dict[str, int] = {}

            async def worker() -> None:
                for _ in range(25):
                    name = (await client.get("/work")).json()["id"]
                    seen[name] = seen.get(name, 0) + 1

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(worker)
            print("requests per backend (peak_ewma avoids the slow one):", dict(sorted(seen.items())))


anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
