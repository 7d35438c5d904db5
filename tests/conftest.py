"""Shared fixtures: real backends on 127.0.0.1, and one behaviour table run sync, on asyncio and on trio."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from lbclient import AsyncLBClient, LBClient
from lbclient.testing import Backend


@pytest.fixture
def make_backends() -> Iterator[Callable[..., list[Backend]]]:
    """``make_backends(n)`` starts n backends named a, b, c, ...; all are killed after the test."""
    started: list[Backend] = []

    def make(count: int = 3, **options: Any) -> list[Backend]:
        new = [Backend(chr(ord("a") + len(started) + i), **options) for i in range(count)]
        started.extend(new)
        return new

    yield make
    for backend in started:
        backend.kill()


@pytest.fixture
def backends(make_backends: Callable[..., list[Backend]]) -> list[Backend]:
    """Three running backends: a, b and c."""
    return make_backends(3)


class Flavor:
    """Drives LBClient or AsyncLBClient through the same async test code."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_async = name != "sync"

    @contextlib.asynccontextmanager
    async def client(self, hosts: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if self.is_async:
            async with AsyncLBClient(hosts, **kwargs) as client:
                yield client
        else:
            with LBClient(hosts, **kwargs) as client:
                yield client

    async def request(self, client: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.is_async:
            response: httpx.Response = await client.request(method, url, **kwargs)
        else:
            response = client.request(method, url, **kwargs)
        return response

    async def get(self, client: Any, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request(client, "GET", url, **kwargs)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["sync", "asyncio", "trio"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend(mode: str) -> str:
    return "trio" if mode == "trio" else "asyncio"


@pytest.fixture
def flavor(mode: str) -> Flavor:
    return Flavor(mode)


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` (sync, or returning an awaitable) is true; fail after ``timeout`` seconds.

    Every wait in the fault tests goes through here: a condition with a deadline, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await anyio.sleep(interval)
