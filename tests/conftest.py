"""Real sockets on loopback: simulated boxes and the proxy served by uvicorn, in the test's
own event loop, so the official clients talk HTTP to them as they would in production."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from _pytest.mark.expression import Expression
from starlette.applications import Starlette

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.api.services import Services
from ollamux.routing.clock import Clock
from ollamux.routing.settings import Settings, parse_settings

# Assertion rewriting is cached as bytecode; where the environment turns bytecode off
# (PYTHONDONTWRITEBYTECODE), every run and every worker would rewrite the test modules
# and the client libraries they import again: keep the rewritten bytecode.
sys.dont_write_bytecode = False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A folder whose every test belongs to a group the marker expression leaves out is
    not even imported (tests/realbox pulls in LangChain and model tooling)."""
    if collection_path.name != "realbox" or not config.option.markexpr:
        return None
    expression = Expression.compile(config.option.markexpr)
    return not expression.evaluate(lambda name, **kwargs: name in ("realbox", "slow"))


@asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it every response pays Nagle's delay
    # against the client's delayed ACK (about 40 ms a request on loopback).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def rss_mb() -> float:
    """This process's resident set, in MiB (the tests serve ollamux in-process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the answer until the server closes the connection."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):  # a guard: the server must close, not wait
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


async def announce_body(url: str, route: str, length: int) -> httpx.Response:
    """POST only a head announcing a ``length``-byte JSON body; the answer, as a
    Response (a server refusing the size answers before the body is sent)."""
    host = urlsplit(url).netloc
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    status, headers, body = await raw_exchange(url, head.encode())
    return httpx.Response(status, headers=headers, content=body)


@dataclass
class Cluster:
    url: str
    boxes: list[SimBox]
    app: Starlette
    http: httpx.AsyncClient = field(repr=False)

    @property
    def services(self) -> Services:
        svc: Services = self.app.state.services
        return svc

    def box(self, name: str) -> SimBox:
        return next(b for b in self.boxes if b.config.name == name)

    async def status(self) -> dict[str, Any]:
        resp = await self.http.get("/router/status")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    async def in_use(self) -> int:
        status = await self.status()
        return sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])

    async def wait_for(self, check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not await check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)


def cluster_settings(
    boxes: list[SimBox], endpoint_extra: dict[str, dict[str, Any]] | None = None, **extra: Any
) -> Settings:
    """Settings for ``boxes``; ``endpoint_extra`` adds keys to named boxes' entries."""
    more = endpoint_extra or {}
    endpoints = [
        {"url": b.url, "name": b.config.name, **more.get(b.config.name, {})} for b in boxes
    ]
    probe = {"ps": 0.2, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5}
    return parse_settings({"endpoints": endpoints, "probe": probe, **extra})


@asynccontextmanager
async def run_cluster(
    *configs: SimConfig, clock: Clock | None = None, **extra: Any
) -> AsyncIterator[Cluster]:
    """``clock``: the scheduler's time, e.g. a ``ManualClock`` the test moves itself."""
    async with AsyncExitStack() as stack:
        boxes = [await stack.enter_async_context(SimBox(c)) for c in configs]
        app = create_app(cluster_settings(boxes, **extra), clock=clock)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield Cluster(url, boxes, app, http)


@pytest.fixture
def cluster() -> Callable[..., Any]:
    """``async with cluster(SimConfig(...), ...) as c:`` — boxes, proxy, and a client."""
    return run_cluster
