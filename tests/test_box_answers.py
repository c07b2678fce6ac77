"""What a box answers is not trusted: redirects are never followed, and answers too big
(a whole body, one stream event) are refused with an error in the client's API shape.

The misbehaving boxes here are small aiohttp servers on loopback that imitate a real
Ollama box (``/api/tags``, ``/api/ps``, ``/api/version``) except for the one answer
under test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
from aiohttp import web

from ollamux.app import create_app
from tests.conftest import rss_mb, serve_app

M = "llama3.2:latest"
TAG = {"name": M, "model": M, "size": 1, "digest": "d", "details": {}}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def aiohttp_box(routes: dict[tuple[str, str], Handler]) -> AsyncIterator[str]:
    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [TAG]})

    async def ps(_: web.Request) -> web.Response:
        return web.json_response({"models": [TAG]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    app = web.Application()
    defaults = {
        ("GET", "/api/tags"): tags,
        ("GET", "/api/ps"): ps,
        ("GET", "/api/version"): version,
    }
    for (method, path), handler in {**defaults, **routes}.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def proxy(
    *boxes: tuple[str, str], **extra: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    from ollamux.routing.settings import parse_settings

    endpoints = [{"url": url, "name": name, **extra.pop(f"box_{name}", {})} for name, url in boxes]
    probe = extra.pop("probe", {"ps": 0.2, "tags": 30.0, "timeout": 1.0, "max_backoff": 0.5})
    settings = parse_settings({"endpoints": endpoints, "probe": probe, **extra})
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield http, app


async def test_a_box_redirect_is_its_error_never_followed() -> None:
    elsewhere: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        elsewhere.append(await request.read())
        return web.json_response({"model": M, "response": "from elsewhere", "done": True})

    async with aiohttp_box({("POST", "/api/generate"): record}) as other:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(other + "/api/generate")

        async def found(request: web.Request) -> web.Response:
            raise web.HTTPFound(other + "/api/tags")

        async with (
            aiohttp_box({("POST", "/api/generate"): redirect}) as box,
            aiohttp_box({("GET", "/api/tags"): found, ("GET", "/api/ps"): found}) as probed,
            proxy(("a", box), ("p", probed)) as (http, _app),
        ):
            resp = await http.post(
                "/api/generate", json={"model": M, "prompt": "secret prompt", "stream": False}
            )
            status = (await http.get("/router/status")).json()
    print(f"\nredirecting box answered {resp.status_code}: {resp.text}")
    assert elsewhere == []  # the prompt never went to the other URL
    assert resp.status_code == 502
    assert "redirect" in resp.json()["error"] and "307" in resp.json()["error"]
    p = next(ep for ep in status["endpoints"] if ep["name"] == "p")
    assert p["health"] != "healthy" and "redirect" in (p["error"] or "")


async def test_a_box_answer_over_the_body_limit_is_refused_not_read_whole() -> None:
    big = b'{"model": "' + M.encode() + b'", "response": "' + b"x" * (4 * 2**20) + b'"}'

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)  # chunked: no length to refuse up front
        for i in range(0, len(big), 65536):
            await resp.write(big[i : i + 65536])
        await resp.write_eof()
        return resp

    async with (
        aiohttp_box({("POST", "/api/generate"): huge, ("POST", "/api/chat"): huge}) as box,
        proxy(("a", box), limits={"max_box_body_bytes": 2**20}) as (http, _app),
    ):
        ollama = await http.post("/api/generate", json={"model": M, "prompt": "x", "stream": False})
        openai = await http.post(
            "/v1/chat/completions",
            json={"model": M, "messages": [{"role": "user", "content": "x"}]},
        )
    print(f"\nbox answer over 1 MiB: {ollama.status_code} {ollama.text}; {openai.text}")
    assert ollama.status_code == 502 and "limits.max_box_body_bytes" in ollama.json()["error"]
    assert openai.status_code == 502
    assert "limits.max_box_body_bytes" in openai.json()["error"]["message"]


async def test_an_event_stream_without_blank_lines_ends_with_an_error_line() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        piece = b'data: {"choices":[{"delta":{"content":"' + b"z" * 1000 + b'"}}]}\n'
        with contextlib.suppress(ConnectionError):
            for _ in range(4000):  # 4 MB of one event that never ends
                await resp.write(piece)
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": M, "object": "model"}]})

    async with (
        aiohttp_box(
            {("POST", "/v1/chat/completions"): endless, ("GET", "/v1/models"): models}
        ) as box,
        proxy(("a", box), box_a={"kind": "openai"}, limits={"max_box_event_bytes": 2**20}) as (
            http,
            _app,
        ),
    ):
        rss0 = rss_mb()
        resp = await http.post(
            "/api/chat", json={"model": M, "messages": [{"role": "user", "content": "x"}]}
        )
        version = await http.get("/api/version")
        rss1 = rss_mb()
    lines = [orjson.loads(x) for x in resp.content.splitlines() if x.strip()]
    print(
        f"\nendless event: {resp.status_code}, last line {lines[-1]}; "
        f"RSS {rss0:.0f} -> {rss1:.0f} MB"
    )
    assert resp.status_code == 200 and version.status_code == 200
    assert "limits.max_box_event_bytes" in lines[-1]["error"]


@asynccontextmanager
async def trickling_box(hang: asyncio.Event) -> AsyncIterator[str]:
    """An Ollama-like box on a raw socket whose /api/tags, once ``hang`` is set, sends its
    response head a byte at a time, forever: no read is ever idle for long, yet the
    answer never comes."""
    ok = orjson.dumps({"models": [TAG]})
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                body = ok if path in (b"/api/tags", b"/api/ps") else b'{"version": "0.12.0"}'
                answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                answer += b"content-length: %d\r\n\r\n" % len(body) + body
                if path == b"/api/tags" and hang.is_set():
                    for byte in answer * 1000:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.05)
                writer.write(answer)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:  # the trickling handler ends on its next write
            writer.close()
        await asyncio.sleep(0.1)


async def test_a_hanging_model_list_makes_the_box_not_healthy_with_an_error() -> None:
    hang = asyncio.Event()
    async with (
        trickling_box(hang) as box,
        proxy(("a", box), probe={"ps": 0.1, "tags": 0.2, "timeout": 0.5, "max_backoff": 0.5}) as (
            http,
            _app,
        ),
    ):
        first = (await http.get("/router/status")).json()["endpoints"][0]
        assert first["health"] == "healthy"
        hang.set()
        seen = first
        for _ in range(60):
            await asyncio.sleep(0.05)
            seen = (await http.get("/router/status")).json()["endpoints"][0]
            if seen["health"] != "healthy":
                break
    print(f"\nhanging /api/tags: health {seen['health']}, error {seen['error']!r}")
    assert seen["health"] != "healthy" and seen["error"]
