"""The simulated llama-server answers like llama-server: health while loading, props,
slots, both model lists, router mode loading on demand, SSE with usage and timings,
slots with a queue, and errors in its shape. The official `openai` client reads it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama

MODEL = "org/Tiny-GGUF:Q4_K_M"
OTHER = "org/Other-GGUF:Q8_0"
MSG = [{"role": "user", "content": "tell me about rivers"}]


def connect(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=5, verify=False, trust_env=False)


@pytest.fixture
async def single() -> AsyncIterator[tuple[SimLlama, httpx.AsyncClient]]:
    async with SimLlama(LlamaConfig(models=[MODEL], n_parallel=3)) as box, connect(box.url) as c:
        yield box, c


async def test_health_is_503_in_llama_shape_while_the_model_loads() -> None:
    async with SimLlama(LlamaConfig(models=[MODEL], load_time=0.3)) as box, connect(box.url) as c:
        health = await c.get("/health")
        assert health.status_code == 503
        assert health.json() == {
            "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        }
        assert (await c.get("/v1/models")).status_code == 503
        await asyncio.sleep(0.4)
        assert (await c.get("/health")).json() == {"status": "ok"}
        assert (await c.get("/v1/models")).status_code == 200


async def test_props_slots_and_both_model_lists(single: tuple[SimLlama, httpx.AsyncClient]) -> None:
    _, c = single
    props = (await c.get("/props")).json()
    assert props["total_slots"] == 3
    assert props["default_generation_settings"]["n_ctx"] > 0
    slots = (await c.get("/slots")).json()
    assert [s["id"] for s in slots] == [0, 1, 2]
    listed = (await c.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == [MODEL]
    assert "status" not in listed["data"][0]  # single-model mode: no status
    assert [m["name"] for m in listed["models"]] == [MODEL]


async def test_router_mode_loads_on_demand_and_says_so() -> None:
    config = LlamaConfig(models=[MODEL, OTHER], router=True, preloaded=[MODEL], load_time=0.05)
    async with SimLlama(config) as box, connect(box.url) as c:
        statuses = {m["id"]: m["status"]["value"] for m in (await c.get("/models")).json()["data"]}
        assert statuses == {MODEL: "loaded", OTHER: "unloaded"}
        assert "total_slots" not in (await c.get("/props")).json()
        assert (await c.get("/slots")).status_code == 400  # which model's slots?
        assert (await c.get("/props", params={"model": MODEL})).json()["total_slots"] == 2
        resp = await c.post("/v1/chat/completions", json={"model": OTHER, "messages": MSG})
        assert resp.status_code == 200
        statuses = {m["id"]: m["status"]["value"] for m in (await c.get("/models")).json()["data"]}
        assert statuses == {MODEL: "loaded", OTHER: "loaded"}
        assert box.stats.loads == 1
        missing = await c.post("/v1/chat/completions", json={"model": "nope", "messages": MSG})
        assert missing.status_code == 404
        assert set(missing.json()["error"]) == {"code", "message", "type"}


async def test_stream_ends_with_finish_usage_timings_and_done(
    single: tuple[SimLlama, httpx.AsyncClient],
) -> None:
    _, c = single
    body = {"model": MODEL, "messages": MSG, "stream": True}
    body["stream_options"] = {"include_usage": True}
    resp = await c.post("/v1/chat/completions", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop" and "timings" in finish
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(chunks) - 3


async def test_the_openai_client_reads_it(single: tuple[SimLlama, httpx.AsyncClient]) -> None:
    box, _ = single
    async with openai.AsyncOpenAI(base_url=f"{box.url}/v1", api_key="x") as client:
        reply = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        tool = {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        called = await client.chat.completions.create(model=MODEL, messages=MSG, tools=[tool])
        call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "weather"  # type: ignore[union-attr]
        assert "city" in orjson.loads(call.function.arguments)  # type: ignore[union-attr]
        done = await client.completions.create(model=MODEL, prompt="once upon")
        assert done.choices[0].text
        vectors = await client.embeddings.create(model=MODEL, input=["a", "b"])
        assert [len(d.embedding) for d in vectors.data] == [8, 8]


async def test_slots_queue_beyond_n_parallel() -> None:
    config = LlamaConfig(models=[MODEL], n_parallel=2, tokens_per_s=40, default_tokens=4)
    async with SimLlama(config) as box, connect(box.url) as c:
        body: dict[str, Any] = {"model": MODEL, "messages": MSG}
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=body) for _ in range(4))
        )
        elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in replies)
        assert box.stats.max_active_per_model[MODEL] == 2
        assert elapsed >= 0.18  # two waves of 4 tokens at 40/s


async def test_errors_are_in_llama_shape(single: tuple[SimLlama, httpx.AsyncClient]) -> None:
    box, c = single
    bad = await c.post("/v1/chat/completions", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    box.faults.error_status = 500
    failed = await c.post("/v1/chat/completions", json={"model": MODEL, "messages": MSG})
    assert failed.status_code == 500
    assert failed.json()["error"] == {
        "code": 500,
        "message": "simulated failure",
        "type": "server_error",
    }
