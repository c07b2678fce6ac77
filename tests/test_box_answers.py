"""What a box answers is not trusted: redirects are never followed, and answers too big
(a whole body, one stream event) are refused with an error in the client's API shape.

The misbehaving boxes here are small aiohttp servers on loopback that imitate a real
Ollama box (``/api/tags``, ``/api/ps``, ``/api/version``) except for the one answer
under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from ollamux.app import create_app
from tests.conftest import serve_app

M = "llama3.2:latest"
TAG = {"name": M, "model": M, "size": 1, "digest": "d", "details": {}}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
    probe = {"ps": 0.2, "tags": 30.0, "timeout": 1.0, "max_backoff": 0.5}
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
