"""Bytes through: what a box sends reaches the client unchanged, chunk by chunk.

The box here is a scripted aiohttp server that records exactly what it wrote, with
awkward chunking (a JSON line split across writes, non-ASCII, fields no client knows),
so the comparison is byte for byte against the box's own output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from aiohttp import web

from ollamux.app import create_app
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

CHUNKS = [
    b'{"model":"m:latest","message":{"role":"assistant","content":"h\xc3\xa9"},"done":false,"x_unknown":[1,2]}\n',
    b'{"model":"m:latest","message":{"role":"assistant","content":" wo',  # split mid-line
    b'rld"},"done":false}\n',
    b'{"model":"m:latest","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","eval_count":3,"prompt_eval_count":2}\n',
]


class ScriptedBox:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.gate = asyncio.Event()  # the second chunk waits for this
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.received.append(await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i, chunk in enumerate(CHUNKS):
            if i == 1:
                await self.gate.wait()
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "m:latest", "model": "m:latest"}]})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedBox, str]]:
    box = ScriptedBox()
    app = web.Application()
    app.add_routes(
        [
            web.post("/api/chat", box.chat),
            web.get("/api/tags", box.tags),
            web.get("/api/ps", box.ps),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    box.url = f"http://127.0.0.1:{port}"
    settings = parse_settings({"endpoints": [{"url": box.url, "name": "scripted"}]})
    try:
        async with serve_app(create_app(settings)) as proxy:
            yield box, proxy
    finally:
        await runner.cleanup()


async def test_stream_is_byte_identical_and_not_buffered(scripted: tuple[ScriptedBox, str]) -> None:
    box, proxy = scripted
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"vendor_extra":{"a":1}}'
    got: list[bytes] = []
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST", f"{proxy}/api/chat", content=body, headers={"content-type": "application/json"}
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        assert resp.headers["x-ollamux-endpoint"] == "scripted"
        chunks = resp.aiter_raw()
        # The first chunk arrives while the box is still holding back the rest.
        got.append(await asyncio.wait_for(chunks.__anext__(), 5))
        box.gate.set()
        got.extend([chunk async for chunk in chunks])
    assert b"".join(got) == b"".join(CHUNKS)
    assert got[0] == CHUNKS[0]
    # The request body reached the box exactly as sent, unknown fields included.
    assert box.received == [body]
    final = orjson.loads(b"".join(got).splitlines()[-1])
    assert final["done"] is True and final["eval_count"] == 3
