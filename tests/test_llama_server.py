"""llama-server boxes next to Ollama boxes: probing (/health, /v1/models, /props, /slots),
one model across both kinds when the config says so, and the official `ollama` client
using a model only a llama-server box has (translated both ways, streams included)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import orjson
from aiohttp import web
from starlette.applications import Starlette

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

GGUF = "bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M"
ONLY_LLAMA = "org/Qwen3-0.6B-GGUF:Q8_0"
MSG = [{"role": "user", "content": "what is the weather in Paris"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@dataclass
class Mixed:
    url: str
    app: Starlette
    http: httpx.AsyncClient = field(repr=False)
    ollama: dict[str, SimBox]
    llama: dict[str, SimLlama]

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.http.get("/router/status")).json()
        return result

    async def endpoint(self, name: str) -> dict[str, Any]:
        return next(ep for ep in (await self.status())["endpoints"] if ep["name"] == name)

    async def wait_for(self, check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def mixed(
    ollama: tuple[SimConfig, ...] = (), llama: tuple[LlamaConfig, ...] = (), **extra: Any
) -> AsyncIterator[Mixed]:
    """Simulated Ollama and llama-server boxes, ollamux in front, and a client of it."""
    async with AsyncExitStack() as stack:
        oboxes = [await stack.enter_async_context(SimBox(c)) for c in ollama]
        lboxes = [await stack.enter_async_context(SimLlama(c)) for c in llama]
        endpoints = [{"url": b.url, "name": b.config.name} for b in oboxes]
        endpoints += [{"url": b.url, "name": b.config.name, "kind": "llama-server"} for b in lboxes]
        probe = {"ps": 0.1, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.2}
        app = create_app(parse_settings({"endpoints": endpoints, "probe": probe, **extra}))
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url, timeout=10, trust_env=False)
        )
        yield Mixed(
            url,
            app,
            http,
            {b.config.name: b for b in oboxes},
            {b.config.name: b for b in lboxes},
        )


def _models(endpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in endpoint["models"]}


async def test_slots_come_from_props_and_router_statuses_from_the_model_list() -> None:
    single = LlamaConfig(name="one", models=[ONLY_LLAMA], n_parallel=3)
    router = LlamaConfig(name="many", models=[GGUF, ONLY_LLAMA], router=True, n_parallel=5)
    router.preloaded = [GGUF]
    async with mixed(llama=(single, router)) as m:
        one = await m.endpoint("one")
        assert one["health"] == "healthy" and one["kind"] == "llama-server"
        assert _models(one)[ONLY_LLAMA] == {**_models(one)[ONLY_LLAMA], "loaded": True, "max": 3}
        many = _models(await m.endpoint("many"))
        assert many[GGUF]["loaded"] and many[GGUF]["max"] == 5  # /props?model= of a loaded one
        assert not many[ONLY_LLAMA]["loaded"]
        listed = (await m.http.get("/api/tags")).json()["models"]
        assert {t["name"] for t in listed} == {GGUF, ONLY_LLAMA}
        running = (await m.http.get("/api/ps")).json()["models"]
        assert sorted(r["name"] for r in running) == [GGUF, ONLY_LLAMA]


async def test_slots_fall_back_to_the_slots_list() -> None:
    async def props(request: web.Request) -> web.Response:
        return web.json_response({"build_info": "b1000"})  # an older server: no total_slots

    async def slots(request: web.Request) -> web.Response:
        return web.json_response([{"id": i} for i in range(6)])

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "old.gguf", "object": "model"}]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.add_routes(
        [
            web.get("/props", props),
            web.get("/slots", slots),
            web.get("/v1/models", models),
            web.get("/health", health),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    settings = parse_settings({"endpoints": [{"url": url, "name": "old", "kind": "llama-server"}]})
    try:
        async with (
            serve_app(create_app(settings)) as proxy,
            httpx.AsyncClient(base_url=proxy, trust_env=False) as http,
        ):
            ep = (await http.get("/router/status")).json()["endpoints"][0]
            assert ep["models"][0]["max"] == 6 and ep["version"] == "b1000"
            # An id without a tag is addressable as listed, and as Ollama would write it.
            assert (await http.get("/v1/models/old.gguf")).json()["id"] == "old.gguf"
    finally:
        await runner.cleanup()


async def test_a_loading_box_is_degraded_until_its_model_is_loaded() -> None:
    async with mixed(llama=(LlamaConfig(name="slow", models=[GGUF], load_time=0.5),)) as m:
        first = await m.endpoint("slow")
        assert first["health"] in ("degraded", "down") and "Loading model" in first["error"]

        async def healthy() -> bool:
            ep = await m.endpoint("slow")
            return ep["health"] == "healthy" and bool(ep["models"]) and ep["models"][0]["loaded"]

        await m.wait_for(healthy)


async def test_one_model_on_both_kinds_when_the_config_says_so() -> None:
    slow = {"tokens_per_s": 40.0, "default_tokens": 12}
    async with mixed(
        ollama=(SimConfig(name="ol", models=["llama3.2"], preloaded=["llama3.2"], **slow),),
        llama=(LlamaConfig(name="ll", models=[GGUF], n_parallel=2, **slow),),
        aliases={GGUF: "llama3.2"},
    ) as m:
        tags = (await m.http.get("/api/tags")).json()["models"]
        assert [t["name"] for t in tags] == ["llama3.2:latest"]
        ll = _models(await m.endpoint("ll"))
        assert list(ll) == ["llama3.2:latest"] and ll["llama3.2:latest"]["max"] == 2

        contexts = [
            m.http.stream("POST", "/api/chat", json={"model": "llama3.2", "messages": MSG})
            for _ in range(4)
        ]
        responses = [await ctx.__aenter__() for ctx in contexts]
        boxes = sorted(r.headers["x-ollamux-endpoint"] for r in responses)
        assert boxes == ["ll", "ll", "ol", "ol"]  # two slots each, both kinds used
        for resp, ctx in zip(responses, contexts, strict=True):
            lines = [orjson.loads(x) for x in (await resp.aread()).splitlines()]
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] > 0
            assert "".join(x["message"]["content"] for x in lines).strip()
            await ctx.__aexit__(None, None, None)
        sent = [orjson.loads(body) for path, body in m.llama["ll"].received]
        assert {s["model"] for s in sent} == {GGUF}  # the box's own id, not the alias
        # Asking by the box's own id reaches the same model.
        reply = await m.http.post(
            "/api/chat", json={"model": GGUF, "messages": MSG, "stream": False}
        )
        assert reply.status_code == 200
        own = {"ll": GGUF, "ol": "llama3.2:latest"}  # each box is sent its own name
        assert reply.json()["model"] == own[reply.headers["x-ollamux-endpoint"]]


async def test_ollama_client_uses_a_model_only_llama_server_has() -> None:
    async with (
        mixed(
            ollama=(SimConfig(name="ol", models=["llama3.2"]),),
            llama=(LlamaConfig(name="ll", models=[ONLY_LLAMA], default_tokens=6),),
        ) as m,
        ollama.AsyncClient(host=m.url) as client,
    ):
        assert ONLY_LLAMA in {x.model for x in (await client.list()).models}
        assert (await client.show(ONLY_LLAMA)).details is not None

        reply = await client.chat(model=ONLY_LLAMA, messages=MSG, stream=False)
        assert reply.done and reply.done_reason == "stop" and reply.model == ONLY_LLAMA
        assert len(reply.message.content.split()) == 6  # type: ignore[union-attr]
        assert reply.eval_count == 6 and reply.prompt_eval_count

        parts = [p async for p in await client.chat(model=ONLY_LLAMA, messages=MSG, stream=True)]
        assert parts[-1].done and not any(p.done for p in parts[:-1])
        streamed = "".join(p.message.content or "" for p in parts)
        assert streamed == reply.message.content and parts[-1].eval_count == 6

        called = await client.chat(model=ONLY_LLAMA, messages=MSG, tools=[TOOL], stream=False)
        call = called.message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "weather" and set(call.function.arguments) == {"city"}
        pieces = [
            p
            async for p in await client.chat(
                model=ONLY_LLAMA, messages=MSG, tools=[TOOL], stream=True
            )
        ]
        calls = [c for p in pieces for c in p.message.tool_calls or []]
        assert [c.function.name for c in calls] == ["weather"]
        assert calls[0].function.arguments == call.function.arguments
        assert pieces[-1].done and pieces[-1].done_reason == "stop"

        # The tool's answer goes back with the call; the box sees it matched by id.
        follow = [
            *MSG,
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_name": "weather", "content": "sunny"},
        ]
        final = await client.chat(model=ONLY_LLAMA, messages=follow, tools=[TOOL], stream=False)
        assert final.message.content and not final.message.tool_calls
        sent = orjson.loads(m.llama["ll"].received[-1][1])
        assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"]

        generated = await client.generate(model=ONLY_LLAMA, prompt="once upon", stream=False)
        assert generated.response and generated.done
        pieces = [
            p async for p in await client.generate(model=ONLY_LLAMA, prompt="hi", stream=True)
        ]
        assert "".join(p.response or "" for p in pieces) and pieces[-1].done

        embedded = await client.embed(model=ONLY_LLAMA, input=["a", "b", "c"])
        assert len(embedded.embeddings) == 3 and len(embedded.embeddings[0]) == 8
        single = await client.embeddings(model=ONLY_LLAMA, prompt="b")
        assert list(single.embedding) == list(embedded.embeddings[1])


async def test_a_llama_server_error_reaches_an_ollama_client_in_ollama_shape() -> None:
    async with mixed(llama=(LlamaConfig(name="ll", models=[ONLY_LLAMA]),)) as m:
        m.llama["ll"].faults.error_status = 400
        resp = await m.http.post("/api/chat", json={"model": ONLY_LLAMA, "messages": MSG})
        assert resp.status_code == 400
        assert resp.json() == {"error": "simulated failure"}
        assert resp.headers["content-type"] == "application/json"
