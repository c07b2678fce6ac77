"""Tool calls reach the client once, whatever the API.

Ollama streams each tool call in the chunk where its parser found it and never repeats
it in the final ``done`` chunk (server/routes.go: each chunk's ``res.Message.ToolCalls``
is what that chunk parsed; only the non-streamed answer gathers them all). The simulated
box does the same, and the OpenAI translation stays right for a box that does repeat
them: no duplicate tool calls to the client either way. Real clients, real sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import ollama
import openai
import orjson
from aiohttp import web

from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.backends.translate import openai_client as to_openai_client
from tests.conftest import run_cluster

M = "llama3.2"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
MESSAGES = [{"role": "user", "content": "weather in Paris?"}]


async def test_the_simulated_box_streams_a_tool_call_once_not_again_when_done() -> None:
    async with SimBox(SimConfig(name="a")) as box, httpx.AsyncClient(base_url=box.url) as http:
        resp = await http.post("/api/chat", json={"model": M, "messages": MESSAGES, "tools": TOOLS})
        lines = [json.loads(x) for x in resp.text.splitlines()]
    with_calls = [x for x in lines if x["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"], lines
    assert "tool_calls" not in lines[-1]["message"] and lines[-1]["done"]


async def test_the_ollama_client_sees_each_tool_call_once() -> None:
    async with (
        run_cluster(SimConfig(name="a", preloaded=[M])) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        calls = []
        async for part in await client.chat(model=M, messages=MESSAGES, tools=TOOLS, stream=True):
            calls += part.message.tool_calls or []
        whole = await client.chat(model=M, messages=MESSAGES, tools=TOOLS)
    assert [call.function.name for call in calls] == ["get_weather"]
    assert [call.function.name for call in whole.message.tool_calls or []] == ["get_weather"]


async def _openai_calls(base: str) -> tuple[list[Any], list[Any]]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as oai:
        stream = await oai.chat.completions.create(
            model=M,
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,  # type: ignore[arg-type]
        )
        streamed: list[Any] = []
        async for chunk in stream:
            if chunk.choices:
                streamed += chunk.choices[0].delta.tool_calls or []
        whole = await oai.chat.completions.create(model=M, messages=MESSAGES, tools=TOOLS)  # type: ignore[arg-type]
    return streamed, whole.choices[0].message.tool_calls or []


async def test_the_openai_sdk_sees_each_tool_call_once() -> None:
    async with run_cluster(SimConfig(name="a", preloaded=[M])) as c:
        streamed, whole = await _openai_calls(c.url)
    assert [t.function.name for t in streamed if t.function and t.function.name] == ["get_weather"]
    assert [t.function.name for t in whole] == ["get_weather"]


@asynccontextmanager
async def repeating_box() -> AsyncIterator[str]:
    """An Ollama box that repeats its tool calls in the final chunk (as ollamux's simulator
    once did): the translation must not pass them on twice."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}

    def line(**fields: Any) -> bytes:
        return orjson.dumps({"model": M, "created_at": "2025-01-01T00:00:00Z", **fields}) + b"\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream") is False:
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            return web.json_response(
                {"model": M, "message": message, "done": True, "done_reason": "stop"}
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        message = {"role": "assistant", "content": ""}
        await resp.write(line(message={**message, "tool_calls": [call]}, done=False))
        final = {"message": {**message, "tool_calls": [call]}, "done": True}
        await resp.write(line(**final, done_reason="stop", prompt_eval_count=3, eval_count=1))
        return resp

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": f"{M}:latest", "model": f"{M}:latest"}]})

    async def empty(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    app = web.Application()
    app.add_routes(
        [
            web.post("/api/chat", chat),
            web.get("/api/tags", tags),
            web.get("/api/ps", empty),
            web.get("/api/version", version),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_box_that_repeats_tool_calls_when_done_gives_openai_clients_one_each() -> None:
    from ollamux.app import create_app
    from ollamux.routing.settings import parse_settings
    from tests.conftest import serve_app

    async with repeating_box() as url:
        app = create_app(parse_settings({"endpoints": [{"url": url, "name": "rep"}]}))
        async with serve_app(app) as base:
            streamed, whole = await _openai_calls(base)
    named = [t for t in streamed if t.function and t.function.name]
    assert [(t.function.name, t.id) for t in named] == [("get_weather", named[0].id)]
    assert [t.function.name for t in whole] == ["get_weather"]


def test_the_translation_drops_only_calls_the_final_chunk_repeats() -> None:
    a = {"function": {"name": "a", "arguments": {"x": 1}}}
    b = {"function": {"name": "b", "arguments": {}}}
    t = to_openai_client.OllamaToOpenAI(M, stream=True, completion=False)
    body = b"".join(
        orjson.dumps(x) + b"\n"
        for x in (
            {"message": {"role": "assistant", "content": "", "tool_calls": [a]}, "done": False},
            # done: a again (a repeat), b new (parsed at the very end): only b is news.
            {"message": {"content": "", "tool_calls": [a, b]}, "done": True},
        )
    )
    out = t.chunk(body) + t.end()
    events = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "a"), (1, "b")]
