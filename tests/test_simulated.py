"""The simulated Ollama box, tested the way the proxy meets it: over real loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ollama
import orjson
import pytest
from aiohttp import web

from ollamux.backends.sim.ollama import BUSY, SimBox, SimConfig, parse_keep_alive
from ollamux.backends.sim.store import layers

# Field lists from Ollama's docs/api.md (github.com/ollama/ollama): "List Local Models",
# "List Running Models", "Show Model Information", "Generate Embeddings", and the streamed
# and final objects of "Generate a completion" / "Generate a chat completion". Later
# versions of docs/api.md added "model" to /api/tags entries, "context_length" to /api/ps
# and "capabilities" to /api/show; they are included.
DETAILS_FIELDS = {
    "parent_model",
    "format",
    "family",
    "families",
    "parameter_size",
    "quantization_level",
}
TAGS_FIELDS = {"name", "model", "modified_at", "size", "digest", "details"}
PS_FIELDS = {
    "name",
    "model",
    "size",
    "digest",
    "details",
    "expires_at",
    "size_vram",
    "context_length",
}
SHOW_FIELDS = {
    "modelfile",
    "parameters",
    "template",
    "details",
    "model_info",
    "capabilities",
    "modified_at",
}
COUNTERS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}
CHAT_CHUNK_FIELDS = {"model", "created_at", "message", "done"}
GENERATE_CHUNK_FIELDS = {"model", "created_at", "response", "done"}
CHAT_FINAL_FIELDS = CHAT_CHUNK_FIELDS | {"done_reason"} | COUNTERS
GENERATE_FINAL_FIELDS = GENERATE_CHUNK_FIELDS | {"done_reason", "context"} | COUNTERS
EMBED_FIELDS = {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}

MODELS = ["llama3.2", "qwen2.5:7b", "nomic-embed-text"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def box() -> AsyncIterator[SimBox]:
    async with SimBox(SimConfig(models=list(MODELS))) as b:
        yield b


@pytest.fixture
async def http(box: SimBox) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(box.url) as client:
        yield client


def connect(url: str = "") -> httpx.AsyncClient:
    # Plain HTTP on loopback: no CA bundle to load (20 ms a client) and no proxy from the
    # environment in the way.
    return httpx.AsyncClient(base_url=url, timeout=5, verify=False, trust_env=False)


def chat(content: str = "why is the sky blue", **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **extra}


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.text.splitlines()]


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- metadata endpoints -------------------------------------------------------------


async def test_root_answers_get_and_head(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"].startswith("text/plain")
    assert (await http.head("/")).status_code == 200


async def test_version(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/version")).json() == {"version": "0.12.6"}


async def test_tags_fields_are_ollamas_and_deterministic(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    models = (await http.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == [
        "llama3.2:latest",
        "qwen2.5:7b",
        "nomic-embed-text:latest",
    ]
    for m in models:
        assert set(m) == TAGS_FIELDS
        assert set(m["details"]) == DETAILS_FIELDS
        assert m["model"] == m["name"] and len(m["digest"]) == 64 and m["size"] > 0
        datetime.fromisoformat(m["modified_at"])
    async with SimBox(SimConfig(models=list(MODELS))) as twin, connect(twin.url) as other:
        assert (await other.get("/api/tags")).json()["models"] == models
    box.add_model("mistral")
    names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
    assert names[-1] == "mistral:latest"


async def test_ps_lists_loaded_models_with_ollamas_fields(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/ps")).json() == {"models": []}
    await http.post("/api/chat", json=chat(stream=False))
    (entry,) = (await http.get("/api/ps")).json()["models"]
    assert set(entry) == PS_FIELDS
    assert set(entry["details"]) == DETAILS_FIELDS
    assert entry["name"] == "llama3.2:latest" and entry["size_vram"] == entry["size"]
    left = datetime.fromisoformat(entry["expires_at"]).timestamp() - time.time()
    assert 290 < left <= 300


async def test_ps_does_not_list_a_model_still_loading() -> None:
    async with SimBox(SimConfig(load_time=0.2)) as box, connect(box.url) as http:
        pending = asyncio.create_task(http.post("/api/chat", json=chat(stream=False)))
        await wait_until(lambda: box.stats.loads == 1)
        assert (await http.get("/api/ps")).json()["models"] == []
        assert (await pending).status_code == 200
        assert len((await http.get("/api/ps")).json()["models"]) == 1


async def test_show_fields_capabilities_and_legacy_name(http: httpx.AsyncClient) -> None:
    shown = (await http.post("/api/show", json={"model": "llama3.2"})).json()
    assert set(shown) == SHOW_FIELDS
    assert set(shown["details"]) == DETAILS_FIELDS
    assert shown["capabilities"] == ["completion"]
    legacy = (await http.post("/api/show", json={"name": "nomic-embed-text"})).json()
    assert legacy["capabilities"] == ["completion", "embedding"]
    missing = await http.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404 and "error" in missing.json()


# -- chat and generate --------------------------------------------------------------


async def test_chat_streams_one_line_per_http_chunk(box: SimBox) -> None:
    chunks = []
    buffer = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{box.url}/api/chat", json=chat()) as r,
    ):
        assert r.headers["Content-Type"] == "application/x-ndjson"
        async for data, end_of_chunk in r.content.iter_chunks():
            buffer += data
            if end_of_chunk:
                chunks.append(buffer)
                buffer = b""
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)
    parsed = [orjson.loads(c) for c in chunks]
    *tokens, final = parsed
    assert len(tokens) == 8  # default_tokens
    for chunk in tokens:
        assert set(chunk) == CHAT_CHUNK_FIELDS and chunk["done"] is False
        assert chunk["message"]["role"] == "assistant" and chunk["message"]["content"]
    assert all(t["message"]["content"].endswith(" ") for t in tokens[:-1])
    assert set(final) == CHAT_FINAL_FIELDS
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 8 and final["model"] == "llama3.2"
    assert all(isinstance(final[k], int) for k in COUNTERS)


async def test_generate_streams_and_ends_with_context(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": "llama3.2", "prompt": "why is it"})
    *tokens, final = lines(r)
    assert all(set(t) == GENERATE_CHUNK_FIELDS and t["response"] for t in tokens)
    assert set(final) == GENERATE_FINAL_FIELDS
    assert final["response"] == "" and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 3
    assert len(final["context"]) == 3 + final["eval_count"]


async def test_stream_absent_means_streaming_and_false_means_one_object(
    http: httpx.AsyncClient,
) -> None:
    streamed = await http.post("/api/chat", json=chat())
    assert streamed.headers["content-type"] == "application/x-ndjson"
    assert len(lines(streamed)) == 9
    single = await http.post("/api/chat", json=chat(stream=False))
    assert single.headers["content-type"].startswith("application/json")
    body = single.json()
    assert set(body) == CHAT_FINAL_FIELDS
    text = "".join(t["message"]["content"] for t in lines(streamed)[:-1])
    assert body["message"]["content"] == text and len(text.split()) == 8
    generated = (
        await http.post(
            "/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}
        )
    ).json()
    assert set(generated) == GENERATE_FINAL_FIELDS and len(generated["response"].split()) == 8


async def test_tokens_are_deterministic(http: httpx.AsyncClient) -> None:
    first = (await http.post("/api/chat", json=chat(stream=False))).json()
    again = (await http.post("/api/chat", json=chat(stream=False))).json()
    other = (await http.post("/api/chat", json=chat("something else", stream=False))).json()
    assert first["message"] == again["message"] != other["message"]


async def test_num_predict_sets_length_and_done_reason(http: httpx.AsyncClient) -> None:
    body = chat(stream=False, options={"num_predict": 3})
    final = (await http.post("/api/chat", json=body)).json()
    assert final["eval_count"] == 3 and final["done_reason"] == "length"
    assert len(final["message"]["content"].split()) == 3


async def test_format_json_and_schema_give_json_objects(http: httpx.AsyncClient) -> None:
    plain = (await http.post("/api/chat", json=chat(stream=False, format="json"))).json()
    assert isinstance(json.loads(plain["message"]["content"]), dict)
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["age", "name"],
    }
    r = await http.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "x", "format": schema}
    )
    *tokens, final = lines(r)
    obj = json.loads("".join(t["response"] for t in tokens))
    assert isinstance(obj["age"], int) and isinstance(obj["name"], str)
    assert final["done_reason"] == "stop" and final["eval_count"] == len(tokens) > 1


async def test_tools_get_a_tool_call_for_the_first_tool(http: httpx.AsyncClient) -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "other", "parameters": {}}},
    ]
    final = (await http.post("/api/chat", json=chat(stream=False, tools=tools))).json()
    assert final["message"]["content"] == ""
    assert final["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {}}}
    ]
    assert final["done_reason"] == "stop"
    streamed = lines(await http.post("/api/chat", json=chat(tools=tools)))
    calls = [c["message"]["tool_calls"] for c in streamed if "tool_calls" in c["message"]]
    assert calls and calls[0][0]["function"]["name"] == "get_weather"
    answered = chat(stream=False, tools=tools)
    answered["messages"].append({"role": "tool", "content": "sunny"})
    after_tool = (await http.post("/api/chat", json=answered)).json()
    assert "tool_calls" not in after_tool["message"] and after_tool["message"]["content"]


async def test_think_adds_thinking(http: httpx.AsyncClient) -> None:
    final = (await http.post("/api/chat", json=chat(stream=False, think=True))).json()
    assert final["message"]["thinking"] and final["message"]["content"]
    streamed = lines(await http.post("/api/chat", json=chat(think=True)))
    assert any(c["message"].get("thinking") for c in streamed[:-1])
    generated = await http.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "x", "think": True, "stream": False}
    )
    assert generated.json()["thinking"]


async def test_images_are_accepted(http: httpx.AsyncClient) -> None:
    body = chat(stream=False)
    body["messages"][0]["images"] = ["aGVsbG8="]
    final = (await http.post("/api/chat", json=body)).json()
    assert final["prompt_eval_count"] == 8  # role header, five words, image, generation prompt
    r = await http.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "", "images": ["aGVsbG8="]}
    )
    assert lines(r)[-1]["done_reason"] == "stop"


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    loaded = (await http.post("/api/generate", json={"model": "qwen2.5:7b"})).json()
    assert loaded == {
        "model": "qwen2.5:7b",
        "created_at": loaded["created_at"],
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    assert box.loaded_models() == ["qwen2.5:7b"]
    assert box.stats.served_by_model == {}  # a load takes no slot
    chat_load = (await http.post("/api/chat", json={"model": "llama3.2", "messages": []})).json()
    assert chat_load["message"] == {"role": "assistant", "content": ""}
    assert chat_load["done_reason"] == "load"
    unload = {"model": "qwen2.5:7b", "keep_alive": 0}
    assert (await http.post("/api/generate", json=unload)).json()["done_reason"] == "unload"
    assert box.loaded_models() == ["llama3.2:latest"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{bad", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": "nope"}', 404, 'model "nope" not found, try pulling it first'),
        (b'{"model": "llama3.2", "keep_alive": "soon"}', 400, None),
    ],
)
async def test_bad_requests_get_ollama_errors(
    http: httpx.AsyncClient, body: bytes, status: int, error: str | None
) -> None:
    r = await http.post("/api/chat", content=body)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert isinstance(message, str) and message
    if error is not None:
        assert message == error


async def test_the_official_ollama_client_understands_the_box(box: SimBox) -> None:
    async with ollama.AsyncClient(host=box.url) as client:
        listed = await client.list()
        assert listed.models[0].model == "llama3.2:latest"
        reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert reply.done and reply.message.content and reply.eval_count == 8
        parts = [p async for p in await client.chat(model="llama3.2", messages=[], stream=True)]
        assert parts[-1].done_reason == "load"
        stream = await client.generate(model="qwen2.5:7b", prompt="why", stream=True)
        parts = [p async for p in stream]
        assert parts[-1].done and parts[-1].context and len(parts) == 9
        ps = await client.ps()
        assert {m.model for m in ps.models} == {"llama3.2:latest", "qwen2.5:7b"}
        shown = await client.show("llama3.2")
        assert shown.capabilities == ["completion"] and shown.modelinfo
        embedded = await client.embed(model="nomic-embed-text", input=["a", "b"])
        assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
        single = await client.embeddings(model="nomic-embed-text", prompt="a")
        assert list(single.embedding) == embedded.embeddings[0]
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 404


async def test_embed_vectors_are_unit_length_and_deterministic(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    r = (await http.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b"})).json()
    assert set(r) == EMBED_FIELDS and r["prompt_eval_count"] == 2
    (vector,) = r["embeddings"]
    assert math.isclose(math.fsum(x * x for x in vector), 1.0)
    again = await http.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a b", "c"]})
    assert again.json()["embeddings"][0] == vector
    legacy = await http.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a b"})
    assert legacy.json() == {"embedding": vector}
    assert box.stats.served_by_model["nomic-embed-text:latest"] == 3  # each took a slot
    bad = await http.post("/api/embed", json={"model": "nomic-embed-text", "input": 3})
    assert bad.status_code == 400


# -- scheduler ----------------------------------------------------------------------


async def test_a_model_loads_on_demand_once_for_concurrent_requests() -> None:
    async with SimBox(SimConfig(load_time=0.2)) as box, connect(box.url) as http:
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(http.post("/api/chat", json=chat(stream=False)) for _ in range(3))
        )
        assert time.perf_counter() - started >= 0.2
        assert box.stats.loads == 1
        assert all(r.json()["load_duration"] >= 0.19e9 for r in replies)
        warm = (await http.post("/api/chat", json=chat(stream=False))).json()
        assert warm["load_duration"] < 0.05e9 and box.stats.loads == 1


async def test_lru_idle_model_is_evicted_at_max_loaded(
    http: httpx.AsyncClient, box: SimBox
) -> None:
    for model in ("llama3.2", "qwen2.5:7b", "llama3.2", "nomic-embed-text"):
        r = await http.post("/api/generate", json={"model": model, "prompt": "x", "stream": False})
        assert r.status_code == 200
    assert box.loaded_models() == ["nomic-embed-text:latest", "llama3.2:latest"]
    assert (box.stats.loads, box.stats.evictions) == (3, 1)


async def test_a_load_waits_until_a_loaded_model_is_idle() -> None:
    config = SimConfig(models=["a", "b"], max_loaded=1, tokens_per_s=100, default_tokens=20)
    async with SimBox(config) as box, connect(box.url) as http:
        busy = asyncio.create_task(
            http.post("/api/chat", json={**chat(stream=False), "model": "a"})
        )
        await wait_until(lambda: box.stats.active == 1)
        second = await http.post("/api/chat", json={**chat(stream=False), "model": "b"})
        assert second.json()["load_duration"] >= 0.1e9  # b waited for a to finish
        assert box.loaded_models() == ["b:latest"] and box.stats.evictions == 1
        assert (await busy).status_code == 200


async def test_num_parallel_caps_concurrent_generation_the_rest_queue() -> None:
    config = SimConfig(num_parallel=2, tokens_per_s=200, default_tokens=10)
    async with SimBox(config) as box, connect(box.url) as http:
        started = time.perf_counter()
        replies = await asyncio.gather(*(http.post("/api/chat", json=chat()) for _ in range(6)))
        elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 and lines(r)[-1]["done"] for r in replies)
    assert box.stats.max_active_per_model == {"llama3.2:latest": 2}
    assert box.stats.max_held_per_model == {"llama3.2:latest": 6}  # four of them queued
    assert box.stats.served_by_model == {"llama3.2:latest": 6}
    assert elapsed >= 3 * 10 / 200 * 0.9  # three rounds of two


async def test_the_box_queue_is_fifo() -> None:
    config = SimConfig(num_parallel=1, tokens_per_s=200, default_tokens=20)
    async with SimBox(config) as box, connect(box.url) as http:
        finished: list[int] = []

        async def one(i: int) -> None:
            await http.post("/api/chat", json=chat(f"question {i}", stream=False))
            finished.append(i)

        tasks = [asyncio.create_task(one(0))]
        await wait_until(lambda: box.stats.active == 1)
        for i in range(1, 4):  # queued in this order while the first one generates
            tasks.append(asyncio.create_task(one(i)))
            await wait_until(lambda i=i: box.stats.waiting == i)
        await asyncio.gather(*tasks)
    assert finished == [0, 1, 2, 3]


async def test_beyond_max_queue_the_box_answers_busy() -> None:
    config = SimConfig(num_parallel=1, max_queue=1, tokens_per_s=50, default_tokens=10)
    async with SimBox(config) as box, connect(box.url) as http:
        first = asyncio.create_task(http.post("/api/chat", json=chat(stream=False)))
        await wait_until(lambda: box.stats.active == 1)
        second = asyncio.create_task(http.post("/api/chat", json=chat(stream=False)))
        await wait_until(lambda: box.stats.waiting == 1)
        refused = await http.post("/api/chat", json=chat())
        assert refused.status_code == 503 and refused.json() == {"error": BUSY}
        assert (await first).status_code == (await second).status_code == 200


async def test_a_follow_up_turn_hits_the_prefix_cache() -> None:
    config = SimConfig(num_parallel=2, prompt_tokens_per_s=2000)
    async with SimBox(config) as box, connect(box.url) as http:
        long_question = " ".join(f"word{i}" for i in range(400))
        first = (await http.post("/api/chat", json=chat(long_question, stream=False))).json()
        # Another conversation in between must not take the first one's slot.
        await http.post("/api/chat", json=chat("an unrelated question", stream=False))
        follow_up = chat(long_question, stream=False)
        follow_up["messages"] += [first["message"], {"role": "user", "content": "and then?"}]
        second = (await http.post("/api/chat", json=follow_up)).json()
    assert first["prompt_eval_count"] == 402  # role header, words, generation prompt
    assert second["prompt_eval_count"] == 4  # role header, two words, generation prompt
    assert second["prompt_eval_duration"] < first["prompt_eval_duration"] / 5
    assert first["prompt_eval_duration"] >= 0.18e9
    assert (box.stats.cache_hits, box.stats.cache_misses) == (1, 2)


async def test_generate_context_continues_the_cached_prefix(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    body = {"model": "llama3.2", "prompt": "tell me a long story please", "stream": False}
    first = (await http.post("/api/generate", json=body)).json()
    body.update(prompt="more", context=first["context"])
    second = (await http.post("/api/generate", json=body)).json()
    assert second["prompt_eval_count"] == 1 and box.stats.cache_hits == 1


async def test_eviction_clears_the_cache() -> None:
    config = SimConfig(models=["a", "b"], max_loaded=1)
    async with SimBox(config) as box, connect(box.url) as http:
        body = {"model": "a", "prompt": "the same prompt twice", "stream": False}
        await http.post("/api/generate", json=body)
        await http.post("/api/generate", json={**body, "model": "b"})
        again = (await http.post("/api/generate", json=body)).json()
    assert again["prompt_eval_count"] == 4 and box.stats.cache_hits == 0


async def test_decode_rate_paces_tokens() -> None:
    config = SimConfig(tokens_per_s=100, default_tokens=10)
    async with SimBox(config) as box, connect(box.url) as http:
        started = time.perf_counter()
        final = lines(await http.post("/api/chat", json=chat()))[-1]
        elapsed = time.perf_counter() - started
    assert 0.09 <= elapsed < 0.5
    assert 0.09e9 <= final["eval_duration"] < 0.5e9


async def test_keep_alive_in_a_request_overrides_the_default(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    await http.post("/api/chat", json=chat(stream=False, keep_alive=0))
    assert box.loaded_models() == [] and box.stats.unloads == 1
    await http.post("/api/chat", json=chat(stream=False, keep_alive="50ms"))
    assert box.loaded_models() == ["llama3.2:latest"]
    await wait_until(lambda: box.loaded_models() == [], timeout=1)
    await http.post("/api/chat", json=chat(stream=False, keep_alive=-1))
    (entry,) = (await http.get("/api/ps")).json()["models"]
    assert datetime.fromisoformat(entry["expires_at"]).year > datetime.now().year + 50


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("300", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("-1", -1.0),
        ("-1m", -60.0),
    ],
)
def test_parse_keep_alive(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "", True, [1], "inf", float("nan")])
def test_parse_keep_alive_refuses_nonsense(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)


# -- faults -------------------------------------------------------------------------


async def test_busy_503_answers_the_next_n_inference_requests(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    box.faults.busy_503 = 2
    first = await http.post("/api/chat", json=chat())
    second = await http.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"})
    assert [first.status_code, second.status_code] == [503, 503]
    assert first.json() == {"error": BUSY}
    assert (await http.get("/api/tags")).status_code == 200  # metadata is not inference
    assert (await http.post("/api/chat", json=chat())).status_code == 200
    assert box.faults.busy_503 == 0


async def test_error_status_answers_every_inference_request(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    box.faults.error_status = 500
    r = await http.post("/api/generate", json={"model": "llama3.2", "prompt": "x"})
    assert (r.status_code, r.json()) == (500, {"error": "simulated failure"})
    box.faults.error_status = None
    assert (await http.post("/api/generate", json={"model": "llama3.2", "prompt": "x"})).is_success


async def test_tags_fail_and_ps_fail(box: SimBox, http: httpx.AsyncClient) -> None:
    box.faults.tags_fail = True
    box.faults.ps_fail = True
    assert (await http.get("/api/tags")).status_code == 500
    assert (await http.get("/api/ps")).status_code == 500
    assert (await http.post("/api/chat", json=chat())).status_code == 200
    box.faults.tags_fail = box.faults.ps_fail = False
    assert (await http.get("/api/ps")).json()["models"][0]["name"] == "llama3.2:latest"


async def test_hang_before_first_byte_until_the_switch_clears(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    box.faults.hang_before_first_byte = True
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/api/chat", json=chat(), timeout=0.1)
    pending = asyncio.create_task(http.post("/api/chat", json=chat(stream=False)))
    await asyncio.sleep(0.05)
    assert not pending.done()
    box.faults.hang_before_first_byte = False
    assert (await pending).status_code == 200


async def test_hang_after_chunks_stalls_the_stream(box: SimBox, http: httpx.AsyncClient) -> None:
    box.faults.hang_after_chunks = 2
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async with http.stream("POST", "/api/chat", json=chat()) as r:
            got.extend([orjson.loads(line) async for line in r.aiter_lines()])

    reader = asyncio.create_task(read())
    await wait_until(lambda: box.stats.active == 1)
    await asyncio.sleep(0.1)
    assert not reader.done() and box.stats.active == 1  # stalled, still holding its slot
    box.faults.hang_after_chunks = None
    await reader
    assert len(got) == 9 and got[-1]["done"] is True


async def test_kill_after_chunks_aborts_the_connection(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    box.faults.kill_after_chunks = 3
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream("POST", "/api/chat", json=chat()) as r:
            async for line in r.aiter_lines():
                got.append(line)
    assert len(got) == 3 and all(not orjson.loads(line)["done"] for line in got)
    await wait_until(lambda: box.stats.active == 0)
    box.faults.kill_after_chunks = None
    assert lines(await http.post("/api/chat", json=chat()))[-1]["done"] is True


# -- clients that leave, restarts ----------------------------------------------------


@pytest.mark.parametrize("tokens_per_s", [20.0, 0.0])
async def test_a_client_leaving_mid_stream_frees_its_slot(tokens_per_s: float) -> None:
    # 20 tok/s: the handler is asleep between tokens when the client goes (cancellation).
    # 0 tok/s with a huge answer: it is writing when the client goes (the write fails).
    config = SimConfig(num_parallel=1, tokens_per_s=tokens_per_s)
    body = chat(options={"num_predict": 100 if tokens_per_s else 200_000})
    async with SimBox(config) as box, connect(box.url) as http:
        async with http.stream("POST", "/api/chat", json=body) as r:
            received = r.aiter_lines()
            await anext(received)
            await anext(received)
        await wait_until(lambda: box.stats.active == 0)
        started = time.perf_counter()
        follow = await http.post("/api/chat", json=chat(stream=False, options={"num_predict": 1}))
        assert follow.status_code == 200 and time.perf_counter() - started < 0.5
    assert box.stats.max_active_per_model == {"llama3.2:latest": 1}


async def test_a_failed_write_frees_the_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    # The other way aiohttp reports a client that left: the next write raises.
    real_write = web.StreamResponse.write
    writes = 0

    async def failing_write(self: web.StreamResponse, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise ConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", failing_write)
    async with SimBox(SimConfig(num_parallel=1)) as box, connect(box.url) as http:
        assert len(lines(await http.post("/api/chat", json=chat()))) == 3
        assert box.stats.active == 0
        monkeypatch.undo()
        assert lines(await http.post("/api/chat", json=chat()))[-1]["done"] is True


async def test_a_client_leaving_while_queued_or_waiting_frees_everything() -> None:
    config = SimConfig(num_parallel=1, tokens_per_s=100, default_tokens=20)
    async with SimBox(config) as box, connect(box.url) as http:
        first = asyncio.create_task(http.post("/api/chat", json=chat(stream=False)))
        await wait_until(lambda: box.stats.active == 1)
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/api/chat", json=chat(stream=False), timeout=0.05)
        await wait_until(lambda: box.stats.waiting == 0)
        first.cancel()  # a non-streaming client that leaves mid-generation
        with pytest.raises(asyncio.CancelledError):
            await first
        await wait_until(lambda: box.stats.active == 0)
        assert (await http.post("/api/chat", json=chat(stream=False))).status_code == 200


async def test_restart_on_the_same_port() -> None:
    box = SimBox(SimConfig(preloaded=["llama3.2"]))
    async with box, connect() as http:
        port = box.port
        await box.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{box.url}/")
        assert await box.start(port=port) == f"http://127.0.0.1:{port}"
        assert (await http.get(f"{box.url}/")).text == "Ollama is running"
        assert box.loaded_models() == ["llama3.2:latest"]  # preloaded again
        assert box.stats.loads == 0  # preloading is not an on-demand load


async def test_stop_ends_streams_in_flight() -> None:
    box = SimBox(SimConfig(tokens_per_s=20, default_tokens=100))
    async with (
        connect(await box.start()) as http,
        http.stream("POST", "/api/chat", json=chat()) as r,
    ):
        received = r.aiter_lines()
        await anext(received)
        await box.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            async for _ in received:
                pass
    assert box.stats.active == 0


async def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await SimBox(SimConfig()).start(host="0.0.0.0")


async def test_sim_stats_over_http(box: SimBox, http: httpx.AsyncClient) -> None:
    await http.post("/api/chat", json=chat())
    stats = (await http.get("/sim/stats")).json()
    assert stats["requests"] == 1 and stats["loads"] == 1
    assert stats["served_by_model"] == {"llama3.2:latest": 1}
    assert stats["loaded"] == ["llama3.2:latest"]
    assert stats == {**box.stats.as_dict(), "loaded": box.loaded_models()}


async def test_command_line_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ollamux.backends.sim.ollama", "--port", "0", "--name", "gpu-a"),
        *("--models", "llama3.2,qwen2.5:7b", "--preload", "llama3.2", "--num-parallel", "3"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("simulated box gpu-a listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with connect(url) as http:
            tags = (await http.get("/api/tags")).json()["models"]
            assert [m["name"] for m in tags] == ["llama3.2:latest", "qwen2.5:7b"]
            assert (await http.get("/api/ps")).json()["models"][0]["name"] == "llama3.2:latest"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


# -- the model store: pull, push, create, blobs, copy, delete -------------------------


async def test_pull_streams_each_layers_progress_then_has_the_model(
    box: SimBox, http: httpx.AsyncClient
) -> None:
    got = lines(await http.post("/api/pull", json={"model": "tiny:1b"}))
    assert got[0] == {"status": "pulling manifest"}
    assert got[-4:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "removing any unused layers"},
        {"status": "success"},
    ]
    for digest, size in layers("tiny:1b"):
        mine = [g for g in got if g.get("digest") == digest]
        assert mine[0] == {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size}
        done = [g["completed"] for g in mine[1:]]
        assert done == sorted(done) and done[-1] == size and all(g["total"] == size for g in mine)
    tags = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
    assert "tiny:1b" in tags
    again = await http.post("/api/pull", json={"model": "tiny:1b", "stream": False})
    assert again.json() == {"status": "success"}


async def test_pull_error_fails_after_the_first_layer(box: SimBox, http: httpx.AsyncClient) -> None:
    box.faults.pull_error = "pull model manifest: file does not exist"
    got = lines(await http.post("/api/pull", json={"model": "tiny:1b"}))
    assert got[-1] == {"error": "pull model manifest: file does not exist"}
    assert {g["digest"] for g in got if "digest" in g} == {layers("tiny:1b")[0][0]}
    whole = await http.post("/api/pull", json={"model": "tiny:1b", "stream": False})
    assert whole.status_code == 500 and "does not exist" in whole.json()["error"]
    assert "tiny:1b" not in box.store.models


async def test_blobs_then_create_copy_delete_and_push_with_the_official_client(
    box: SimBox, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    data = b"GGUF" + os.urandom(10_000)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert (await http.head(f"/api/blobs/{digest}")).status_code == 404
    bad = await http.post(f"/api/blobs/sha256:{'1' * 64}", content=data)
    assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]
    assert (await http.post("/api/blobs/nonsense", content=data)).status_code == 400
    assert (await http.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    assert (await http.post(f"/api/blobs/{digest}", content=data)).status_code == 200
    assert (await http.head(f"/api/blobs/{digest}")).status_code == 200
    assert box.store.blobs == {digest: len(data)}

    refused = [
        ({"model": "m", "files": {"x.gguf": f"sha256:{'2' * 64}"}}, 400),
        ({"model": "m", "from": "nope"}, 404),
        ({"model": "m"}, 400),
    ]
    for body, status in refused:
        assert (await http.post("/api/create", json=body)).status_code == status
    path = tmp_path / "other.gguf"
    path.write_bytes(b"GGUF" + os.urandom(5_000))
    async with ollama.AsyncClient(host=box.url) as client:
        other = await client.create_blob(path)
        parts = [
            p.status
            async for p in await client.create(
                model="mine", files={"a.gguf": digest, "b.gguf": other}, stream=True
            )
        ]
        assert parts == [
            "parsing GGUF",
            f"using existing layer {digest}",
            f"using existing layer {other}",
            "writing manifest",
            "success",
        ]
        assert (await client.create(model="kid", from_="mine", system="hi")).status == "success"
        assert (await client.copy("kid", "kid2")).status == "success"
        await client.chat(model="kid2", messages=[{"role": "user", "content": "hi"}])
        assert box.loaded_models() == ["kid2:latest"]
        assert (await client.delete("kid2")).status == "success"
        assert box.loaded_models() == []  # deleting a loaded model unloads it
        for call in (client.delete("kid2"), client.copy("kid2", "x"), client.push("kid2")):
            with pytest.raises(ollama.ResponseError) as err:
                await call
            assert err.value.status_code == 404
        pushed = [p async for p in await client.push("mine", stream=True)]
        assert pushed[0].status == "retrieving manifest" and pushed[-1].status == "success"
        assert {p.digest for p in pushed if p.digest} == {d for d, _ in layers("mine:latest")}
    names = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
    assert {"mine:latest", "kid:latest"} <= names and "kid2:latest" not in names
    assert box.store.pushed == ["mine:latest"]
