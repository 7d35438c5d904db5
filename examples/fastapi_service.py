"""A FastAPI service that calls two downstream services, each balanced over its own hosts, through
mounts on one shared ``httpx.AsyncClient`` (needs ``pip install fastapi uvicorn``)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request

from lbclient import AsyncLoadBalancingTransport
from lbclient.testing import Backend


def make_app(users: list[str], orders: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mounts = {
            "all://users": AsyncLoadBalancingTransport(users, service="users", strategy="peak_ewma"),
            "all://orders": AsyncLoadBalancingTransport(orders, service="orders", strategy="least_connections"),
        }
        async with httpx.AsyncClient(mounts=mounts, timeout=5.0) as client:
            app.state.downstream = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/profile/{name}")
    async def profile(name: str, request: Request) -> dict[str, str]:
        client: httpx.AsyncClient = request.app.state.downstream
        user, orders = await asyncio.gather(
            client.get(f"http://users/users/{name}"), client.get(f"http://orders/orders?user={name}")
        )
        return {"user": user.json()["id"], "orders": orders.json()["id"]}

    return app


async def main() -> None:
    with Backend("users-1") as u1, Backend("users-2") as u2, Backend("orders-1") as o1, Backend("orders-2") as o2:
        app = make_app([u1.url, u2.url], [o1.url, o2.url])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # it failed to start: say why
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as caller:
            for name in ("alice", "bob", "carol", "dave"):
                print(name, (await caller.get(f"/profile/{name}")).json())
        server.should_exit = True
        await serving


asyncio.run(main())
