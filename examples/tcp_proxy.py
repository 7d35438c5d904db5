"""TCPProxy: plain TCP over a pool. Open connections are what least_connections balances; a host that
dies costs no connection (the connect is retried on another host) and is ejected."""

from collections import Counter

import anyio
import anyio.abc

from lbclient import OutlierDetection
from lbclient.tcp_proxy import TCPProxy


class Service:
    """A TCP service on 127.0.0.1 that greets each connection with its name, then echoes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.scope = anyio.CancelScope()

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            with self.scope:  # kill() cancels it: the listener and every connection close
                await listener.serve(self.handle)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(self.name.encode() + b"\n")
            async for chunk in stream:
                await stream.send(chunk)

    def kill(self) -> None:
        self.scope.cancel()


async def connect(address: tuple[str, int]) -> tuple[anyio.abc.SocketStream, str]:
    stream = await anyio.connect_tcp(*address)
    return stream, (await stream.receive()).decode().strip()


async def main() -> None:
    async with anyio.create_task_group() as group:
        services = [Service("db-1"), Service("db-2")]
        ports = [await group.start(service.run) for service in services]
        proxy = TCPProxy(
            [f"127.0.0.1:{port}" for port in ports], outlier_detection=OutlierDetection(consecutive_failures=1)
        )
        address = await group.start(proxy.serve, "127.0.0.1", 0)

        held = [await connect(address) for _ in range(4)]
        print("open connections:", dict(sorted(Counter(name for _, name in held).items())))
        stream, name = held[0]
        await stream.send(b"ping")
        print(f"through the proxy to {name}:", (await stream.receive()).decode())
        for stream, _ in held:
            await stream.aclose()

        services[1].kill()
        after = [await connect(address) for _ in range(4)]
        print("after db-2 died:", [name for _, name in after])
        print("db-2 ejected:", proxy.pool.hosts[1].ejected)
        for stream, _ in after:
            await stream.aclose()
        group.cancel_scope.cancel()


anyio.run(main)
