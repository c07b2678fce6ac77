"""``ollamux --demo``: a few simulated Ollama boxes on loopback, so the proxy can be seen
working without a GPU. Models load in a second or two and decode at a human pace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from backends.settings import Settings, parse_settings
from backends.simulated import SimBox, SimConfig

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
        max_loaded=1,
        load_time=1.5,
        tokens_per_s=60.0,
        default_tokens=48,
    ),
)


@asynccontextmanager
async def demo_cluster() -> AsyncIterator[Settings]:
    async with AsyncExitStack() as stack:
        boxes = [await stack.enter_async_context(SimBox(cfg)) for cfg in DEMO_BOXES]
        yield parse_settings(
            {
                "endpoints": [
                    {
                        "url": box.url,
                        "name": box.config.name,
                        "max_concurrent": box.config.num_parallel,
                    }
                    for box in boxes
                ]
            }
        )
