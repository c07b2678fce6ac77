"""``ollamux --demo``: a few simulated Ollama boxes on loopback, so the proxy can be seen
working without a GPU. Models load in a second or two and decode at a human pace.

``DemoTraffic`` plays a few clients against the proxy (on by default with ``--demo``,
nowhere else), in waves of rising and falling concurrency, so the dashboard has slots
filling, a queue building, models loading and tuning figures to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson

from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.backends.upstream import Upstream
from ollamux.routing.errors import UpstreamError
from ollamux.routing.settings import Settings, Timeouts, parse_settings

DEMO_BOXES = (
    SimConfig(
        name="gpu-a",
        models=["llama3.2", "qwen2.5:7b", "nomic-embed-text"],
        preloaded=["llama3.2"],
        num_parallel=2,
        max_loaded=2,
        load_time=2.0,
        tokens_per_s=40.0,
        default_tokens=48,
    ),
    SimConfig(
        name="gpu-b",
        models=["llama3.2", "qwen2.5:7b", "mistral:7b"],
        preloaded=["qwen2.5:7b"],
        num_parallel=2,
        max_loaded=2,
        load_time=2.5,
        tokens_per_s=30.0,
        default_tokens=48,
    ),
    SimConfig(
        name="gpu-c",
        models=["llama3.2", "mistral:7b", "nomic-embed-text"],
        preloaded=["mistral:7b"],
        num_parallel=4,
        max_loaded=2,  # both chat models fit: its tuning figures show concurrency, not swaps
        load_time=1.5,
        tokens_per_s=60.0,
        default_tokens=48,
    ),
)


# gpu-c is given more slots than it runs at once, so the tuning help has something to
# find: past 4 in flight its total throughput stops rising.
OVERBOOKED = {"gpu-c": 2}
# What the demo clients ask for, and how often; one name no box has, for a 404.
DEMO_MODELS = ("llama3.2", "mistral:7b", "qwen2.5:7b", "nomic-embed-text", "llama4:400b")
DEMO_WEIGHTS = (8.0, 5.0, 4.0, 1.0, 0.2)
WAVES = (1, 3, 6, 12, 24, 10, 4, 2)  # clients at once, each wave ~20 s


@asynccontextmanager
async def demo_cluster(traffic_to: str | None = None) -> AsyncIterator[Settings]:
    """The demo boxes; with ``traffic_to`` (the proxy's loopback URL), demo clients too."""
    async with AsyncExitStack() as stack:
        boxes = [await stack.enter_async_context(SimBox(cfg)) for cfg in DEMO_BOXES]
        if traffic_to is not None:
            await stack.enter_async_context(DemoTraffic(traffic_to))
        yield parse_settings(
            {
                "endpoints": [
                    {
                        "url": box.url,
                        "name": box.config.name,
                        "max_concurrent": box.config.num_parallel
                        + OVERBOOKED.get(box.config.name, 0),
                    }
                    for box in boxes
                ]
            }
        )


def traffic_url(host: str, port: int) -> str | None:
    """Where demo clients reach a proxy listening on ``host``: loopback only."""
    if host in ("localhost", "0.0.0.0", ""):
        return f"http://127.0.0.1:{port}"
    if host == "::":
        return f"http://[::1]:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_loopback:
        return None
    return f"http://[{host}]:{port}" if address.version == 6 else f"http://{host}:{port}"


class DemoTraffic:
    def __init__(
        self,
        url: str,
        rng: random.Random | None = None,
        wave: float = 20.0,
        waves: Sequence[int] = WAVES,
    ) -> None:
        self.url = url
        self.rng = rng or random.Random()
        self.wave = wave
        self.waves = waves
        self.sent = 0
        self.clients = 0
        self._up = Upstream(Timeouts())
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DemoTraffic:
        await self._up.open()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._up.close()

    async def _run(self) -> None:
        clients: dict[int, asyncio.Task[None]] = {}
        try:
            for want in itertools.cycle(self.waves):
                self.clients = want  # client n leaves after its request once n >= this
                for n in range(want):
                    if n not in clients or clients[n].done():
                        clients[n] = asyncio.create_task(self._client(n))
                await asyncio.sleep(self.wave)
        finally:
            for task in clients.values():
                task.cancel()
            await asyncio.gather(*clients.values(), return_exceptions=True)

    async def _client(self, n: int) -> None:
        while n < self.clients:
            try:
                await self.one()
            except UpstreamError:  # the proxy is not up yet, or went away
                await asyncio.sleep(1.0)
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))

    async def one(self) -> int:
        """Send one request like a chat client would; return its status."""
        model = self.rng.choices(DEMO_MODELS, DEMO_WEIGHTS)[0]
        self.sent += 1
        body: dict[str, Any]
        if "embed" in model:
            path, body = "/api/embed", {"model": model, "input": ["hello", "world"]}
        else:
            prompt = f"demo question {self.rng.randrange(50)}"
            options = {"num_predict": self.rng.randrange(16, 120)}
            path = "/api/chat"
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            body.update(options=options, stream=self.rng.random() < 0.8)
        resp = await self._up.send(
            "demo",
            "POST",
            self.url + path,
            headers={"content-type": "application/json"},
            body=orjson.dumps(body),
        )
        try:
            async for _ in resp.chunks():
                pass
        finally:
            resp.close()
        return resp.status
