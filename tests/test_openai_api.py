"""The official `openai` client against ollamux: over llama-server boxes (bytes through),
over an Ollama box reached through its native API (translated), and the errors in
OpenAI's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig
from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app
from tests.test_llama_server import GGUF, MSG, TOOL, mixed

CHOICE = {"type": "function", "function": {"name": "weather"}}


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_openai_client_over_llama_server_boxes() -> None:
    async with (
        mixed(llama=(LlamaConfig(name="ll", models=[GGUF], default_tokens=5),)) as m,
        client(m.url) as oa,
    ):
        assert [x.id async for x in oa.models.list()] == [GGUF]
        assert (await oa.models.retrieve(GGUF)).id == GGUF

        reply = await oa.chat.completions.create(model=GGUF, messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
        chunks = [
            c
            async for c in await oa.chat.completions.create(
                model=GGUF,
                messages=MSG,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            reply.choices[0].message.content
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

        called = await oa.chat.completions.create(
            model=GGUF,
            messages=MSG,  # type: ignore[arg-type]
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice=CHOICE,  # type: ignore[arg-type]
            n=1,
            user="someone",
            extra_body={"cache_prompt": True, "mirostat": 0},
        )
        assert called.choices[0].finish_reason == "tool_calls"
        assert called.choices[0].message.tool_calls[0].function.name == "weather"  # type: ignore[index, union-attr]
        sent = orjson.loads(m.llama["ll"].received[-1][1])
        assert sent["tool_choice"] == CHOICE and sent["user"] == "someone" and sent["n"] == 1
        assert sent["cache_prompt"] is True and sent["mirostat"] == 0  # vendor extras intact

        done = await oa.completions.create(model=GGUF, prompt="once upon", max_tokens=2)
        assert done.choices[0].finish_reason == "length" and done.choices[0].text
        vectors = await oa.embeddings.create(model=GGUF, input=["a", "b", "c"])
        assert [d.index for d in vectors.data] == [0, 1, 2]
        assert all(len(d.embedding) == 8 for d in vectors.data)

        with pytest.raises(openai.NotFoundError):
            await oa.chat.completions.create(model="no-such-model", messages=MSG)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await oa.models.retrieve("no-such-model")


async def test_openai_client_over_an_ollama_box_is_translated() -> None:
    box = SimConfig(name="ol", models=["llama3.2", "nomic-embed-text"], default_tokens=6)
    async with mixed(ollama=(box,)) as m, client(m.url) as oa:
        assert {x.id async for x in oa.models.list()} == {
            "llama3.2:latest",
            "nomic-embed-text:latest",
        }
        assert (await oa.models.retrieve("llama3.2")).id == "llama3.2"

        reply = await oa.chat.completions.create(model="llama3.2", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
        assert reply.object == "chat.completion" and reply.model == "llama3.2"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 4

        chunks = [
            c
            async for c in await oa.chat.completions.create(
                model="llama3.2",
                messages=MSG,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 6
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

        called = await oa.chat.completions.create(
            model="llama3.2",
            messages=MSG,  # type: ignore[arg-type]
            tools=[TOOL],  # type: ignore[list-item]
        )
        assert called.choices[0].finish_reason == "tool_calls"
        call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.id and call.function.name == "weather"  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == {}  # type: ignore[union-attr]

        done = await oa.completions.create(model="llama3.2", prompt="once upon")
        assert done.object == "text_completion" and done.choices[0].text
        vectors = await oa.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        floats = await oa.embeddings.create(
            model="nomic-embed-text", input=["a", "b"], encoding_format="float"
        )
        for packed, plain in zip(vectors.data, floats.data, strict=True):
            assert packed.embedding == pytest.approx(plain.embedding, rel=1e-6)  # float32
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8


CHUNKS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"h\xc3\xa9"},"finish_reason":null}],"x_vendor":1}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"del',  # split
    b'ta":{"content":"llo"},"finish_reason":null}]}\n\ndata: {"id":"c1","object":"chat'
    b'.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


class ScriptedOpenAI:
    """A generic OpenAI-compatible box that records what it got and streams fixed bytes,
    holding the rest back until ``gate`` is set."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str | None]] = []
        self.probe_keys: set[str | None] = set()
        self.gate = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.received.append((await request.read(), request.headers.get("authorization")))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, chunk in enumerate(CHUNKS):
            if i == 1:
                await self.gate.wait()
            await resp.write(chunk)
        return resp

    async def models(self, request: web.Request) -> web.Response:
        self.probe_keys.add(request.headers.get("authorization"))
        return web.json_response({"object": "list", "data": [{"id": "gpt-x", "object": "model"}]})


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedOpenAI, str]]:
    box = ScriptedOpenAI()
    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", box.chat), web.get("/v1/models", box.models)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    endpoint = {"url": url, "name": "hosted", "kind": "openai", "api_key": "box-key"}
    settings = parse_settings({"endpoints": [endpoint]})
    try:
        async with serve_app(create_app(settings)) as proxy:
            yield box, proxy
    finally:
        await runner.cleanup()


async def test_stream_to_an_openai_box_is_byte_identical_and_not_buffered(
    scripted: tuple[ScriptedOpenAI, str],
) -> None:
    box, proxy = scripted
    body = b'{"model":"gpt-x","messages":[{"role":"user","content":"hi"}],  "stream":true,"zz":[1]}'
    headers = {"content-type": "application/json", "authorization": "Bearer client-key"}
    got: list[bytes] = []
    async with (
        httpx.AsyncClient(timeout=10, trust_env=False) as http,
        http.stream("POST", f"{proxy}/v1/chat/completions", content=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["x-ollamux-endpoint"] == "hosted"
        chunks = resp.aiter_raw()
        got.append(await asyncio.wait_for(chunks.__anext__(), 5))
        box.gate.set()
        got.extend([chunk async for chunk in chunks])
    assert b"".join(got) == b"".join(CHUNKS) and got[0] == CHUNKS[0]
    # The body as sent, and the box's own key instead of the client's.
    assert box.received == [(body, "Bearer box-key")]
    assert box.probe_keys == {"Bearer box-key"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "x", "messages": "hi"}', "messages must be an array"),
        (b'{"model": "x", "messages": [], "stream": "yes"}', "stream must be a boolean"),
    ],
)
async def test_bad_input_gets_an_openai_shaped_400(body: bytes, message: str) -> None:
    async with mixed(ollama=(SimConfig(name="ol"),)) as m:
        resp = await m.http.post("/v1/chat/completions", content=body)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert message in error["message"] and set(error) == {"message", "type", "code"}


async def test_errors_keep_openai_shape_across_kinds() -> None:
    async with mixed(
        ollama=(SimConfig(name="ol", models=["llama3.2"]),),
        llama=(LlamaConfig(name="ll", models=[GGUF]),),
    ) as m:
        m.llama["ll"].faults.error_status = 500
        passed = await m.http.post("/v1/chat/completions", json={"model": GGUF, "messages": MSG})
        assert passed.status_code == 500
        assert passed.json() == {
            "error": {"code": 500, "message": "simulated failure", "type": "server_error"}
        }
        m.ollama["ol"].faults.error_status = 400
        body: dict[str, Any] = {"model": "llama3.2", "messages": MSG}
        translated = await m.http.post("/v1/chat/completions", json=body)
        assert translated.status_code == 400
        assert translated.json()["error"]["message"] == "simulated failure"
        url_image = [{"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}]
        body["messages"] = [{"role": "user", "content": url_image}]
        refused = await m.http.post("/v1/chat/completions", json=body)
        assert refused.status_code == 400 and "data: URLs" in refused.json()["error"]["message"]
        missing = await m.http.post("/v1/embeddings", json={"model": "nope", "input": "a"})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found"


async def test_an_ollama_box_that_serves_its_own_v1_gets_the_bytes() -> None:
    seen: list[tuple[str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read()))
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
        return web.json_response(answer)

    async def listing(request: web.Request) -> web.Response:
        entry = {"name": "m:latest", "model": "m:latest"}
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "m:latest"}]})
        return web.json_response({"models": [entry] if request.path == "/api/tags" else []})

    app = web.Application()
    app.add_routes(
        [web.get(p, listing) for p in ("/api/tags", "/api/ps", "/v1/models")]
        + [web.post(p, record) for p in ("/api/chat", "/v1/chat/completions")]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"n":1,"x_extra":true}'
    try:
        async with (
            serve_app(create_app(parse_settings({"endpoints": [url]}))) as proxy,
            httpx.AsyncClient(trust_env=False) as http,
        ):
            resp = await http.post(f"{proxy}/v1/chat/completions", content=body)
            assert resp.status_code == 200
    finally:
        await runner.cleanup()
    assert seen == [("/v1/chat/completions", body)]
