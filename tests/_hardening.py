"""What the property and schemathesis tests share: a fleet of one
simulated Ollama box and one simulated llama-server behind ollamux on loopback, so that
requests are relayed as they came and translated both ways, and a wait for every slot
to come back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

# Every POST route ollamux serves for both APIs (tests/openapi.yaml documents them).
POST_ROUTES = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
]


M = "llama3.2"  # on the Ollama box
E = "nomic-embed-text"  # on the Ollama box
G = "org/Tiny-GGUF:Q4_K_M"  # on the llama-server box: Ollama clients get a translation
MODELS = [M, E, G, "no-such-model"]


@dataclass
class Fleet:
    url: str
    boxes: list[SimBox | SimLlama]

    def box_requests(self) -> int:
        return sum(b.stats.requests for b in self.boxes)


@asynccontextmanager
async def mixed_fleet() -> AsyncIterator[Fleet]:
    """An Ollama box (M, E) and a llama-server box (G), ollamux in front of them."""
    async with AsyncExitStack() as stack:
        ollama = SimConfig(name="ollama", models=[M, E], preloaded=[M], default_tokens=4)
        llama = LlamaConfig(name="llama", models=[G], default_tokens=4)
        boxes: list[SimBox | SimLlama] = [
            await stack.enter_async_context(SimBox(ollama)),
            await stack.enter_async_context(SimLlama(llama)),
        ]
        endpoints = [
            {"url": boxes[0].url, "name": "ollama"},
            {"url": boxes[1].url, "name": "llama", "kind": "llama-server"},
        ]
        settings = parse_settings(
            {
                "endpoints": endpoints,
                "probe": {"ps": 0.2, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5},
                "timeouts": {"first_byte": 5, "idle": 5},
                "max_concurrent_connections": 4,
            }
        )
        url = await stack.enter_async_context(serve_app(create_app(settings)))
        yield Fleet(url, boxes)


def settled(http: httpx.Client) -> dict[str, Any]:
    """The status once no slot is taken and nothing waits (a lease is released just
    after the client has read the last byte); fails if that does not happen in 5 s."""
    deadline = time.monotonic() + 5
    while True:
        status: dict[str, Any] = http.get("/router/status").json()
        in_use = sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])
        if (in_use, status["totals"]["in_flight"], status["queue"]["waiting"]) == (0, 0, 0):
            return status
        assert time.monotonic() < deadline, f"a slot is still taken: {status}"
        time.sleep(0.01)
