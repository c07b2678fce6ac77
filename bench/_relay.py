"""Minimal relays, written only to find the ceiling of each upstream client and server.

A Starlette app with one route that forwards the body to one box and relays the answer
(whole, or chunk by chunk for streams) with a pooled client made once, in the lifespan.
No routing, no slots, no error handling: what ollamux does on top of this is its cost.

    python bench/_relay.py --client aiohttp --server uvicorn --box URL --port P
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class RelayClient(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def relay(self, url: str, body: bytes) -> Response: ...


STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


class AiohttpClient:
    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self.session.close()

    async def relay(self, url: str, body: bytes) -> Response:
        resp = await self.session.post(url, data=body, headers={"content-type": "application/json"})
        kind = resp.headers.get("content-type", "")
        if kind.startswith(STREAM_TYPES):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    while chunk := await resp.content.readany():
                        yield chunk
                finally:
                    resp.close()

            return StreamingResponse(chunks(), resp.status, media_type=kind)
        data = await resp.read()
        return Response(data, resp.status, media_type=kind)


class HttpxClient:
    """httpx 0.28, or httpx2 (its successor, same API) with ``module="httpx2"``."""

    def __init__(self, module: str) -> None:
        self.module = module

    async def open(self) -> None:
        httpx: Any = __import__(self.module)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.client = httpx.AsyncClient(limits=limits, timeout=None)

    async def close(self) -> None:
        await self.client.aclose()

    async def relay(self, url: str, body: bytes) -> Response:
        req = self.client.build_request(
            "POST", url, content=body, headers={"content-type": "application/json"}
        )
        resp = await self.client.send(req, stream=True)
        kind = resp.headers.get("content-type", "")
        if kind.startswith(STREAM_TYPES):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(chunks(), resp.status_code, media_type=kind)
        data = await resp.aread()
        await resp.aclose()
        return Response(data, resp.status_code, media_type=kind)


class AiosonicClient:
    async def open(self) -> None:
        import aiosonic
        from aiosonic.pools import PoolConfig

        pools = {":default": PoolConfig(size=1024, max_conn_requests=None)}
        self.client = aiosonic.HTTPClient(aiosonic.TCPConnector(pool_configs=pools))

    async def close(self) -> None:
        await self.client.aclose()

    async def relay(self, url: str, body: bytes) -> Response:
        resp = await self.client.post(url, data=body, headers={"content-type": "application/json"})
        kind = resp.headers.get("content-type", "")
        if kind.startswith(STREAM_TYPES):

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in resp.read_chunks():
                    yield chunk

            return StreamingResponse(chunks(), resp.status_code, media_type=kind)
        return Response(await resp.content(), resp.status_code, media_type=kind)


class PyreqwestClient:
    """Rust's reqwest (hyper) on its own Tokio thread."""

    async def open(self) -> None:
        from pyreqwest.client import ClientBuilder

        self.client = ClientBuilder().gzip(False).build()

    async def close(self) -> None:
        await self.client.close()

    async def relay(self, url: str, body: bytes) -> Response:
        request = (
            self.client.post(url)
            .header("content-type", "application/json")
            .body_bytes(body)
            .build_streamed()
        )
        resp = await request.__aenter__()
        kind = resp.headers.get("content-type", "")
        if kind.startswith(STREAM_TYPES):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    while (chunk := await resp.body_reader.read_chunk()) is not None:
                        yield chunk.to_bytes()
                finally:
                    await request.__aexit__(None, None, None)

            return StreamingResponse(chunks(), resp.status, media_type=kind)
        data = (await resp.body_reader.bytes()).to_bytes()
        await request.__aexit__(None, None, None)
        return Response(data, resp.status, media_type=kind)


class CurlClient:
    """libcurl through curl_cffi's asyncio session."""

    async def open(self) -> None:
        from curl_cffi.requests import AsyncSession

        self.session: Any = AsyncSession(max_clients=256)

    async def close(self) -> None:
        await self.session.close()

    async def relay(self, url: str, body: bytes) -> Response:
        resp = await self.session.post(
            url, data=body, headers={"content-type": "application/json"}, stream=True
        )
        kind = resp.headers.get("content-type", "")
        if kind.startswith(STREAM_TYPES):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_content():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(chunks(), resp.status_code, media_type=kind)
        data = await resp.acontent()
        await resp.aclose()
        return Response(data, resp.status_code, media_type=kind)


CLIENTS: dict[str, Callable[[], RelayClient]] = {
    "aiohttp": AiohttpClient,
    "httpx": lambda: HttpxClient("httpx"),
    "httpx2": lambda: HttpxClient("httpx2"),
    "aiosonic": AiosonicClient,
    "pyreqwest": PyreqwestClient,
    "curl_cffi": CurlClient,
}


def make_app(client_name: str, box: str) -> Starlette:
    client = CLIENTS[client_name]()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await client.open()
        yield
        await client.close()

    async def relay(request: Request) -> Response:
        return await client.relay(box + request.scope["path"], await request.body())

    return Starlette(routes=[Route("/api/chat", relay, methods=["POST"])], lifespan=lifespan)


async def serve(app: Starlette, port: int, server: str) -> None:
    from ollamux.routing.api.server import serve as serve_app  # the same servers as ollamux's

    await serve_app(app, "127.0.0.1", port, "warning", server)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--box", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(make_app(args.client, args.box), args.port, args.server))


if __name__ == "__main__":
    main()
