"""The pooled HTTP client that talks to boxes: aiohttp, behind this one small module.

aiohttp was chosen by measurement (``bench/clients.py``, README "Performance"): as cheap
per request as any client measured (pyreqwest within a few percent), 5-30 times cheaper
than httpx and httpx2. Its errors are translated here, at one boundary, into
``routing.errors``; nothing else in the project imports aiohttp's client.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from ollamux.routing.errors import UpstreamBadAnswer, UpstreamError, UpstreamTimeout
from ollamux.routing.settings import Timeouts

# Headers that describe one hop, not the message: never forwarded either way.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "date",
        "server",
    }
)
# The relay frames bodies itself (chunked streams, its own length for whole bodies).
_HOP_BYTES = frozenset(h.encode() for h in _HOP) | {b"content-length"}
# Client credentials are for ollamux; a box gets its own key from the config.
_NOT_TO_BOX = _HOP | {"content-length", "authorization", "x-api-key", "cookie", "accept-encoding"}
_BIG_BODY = 2**20
_STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


def request_headers(client: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    headers = {k: v for k, v in client.items() if k not in _NOT_TO_BOX}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class Response:
    """An upstream response whose body has not been read yet."""

    __slots__ = ("_resp", "box", "content_type", "headers", "status", "streaming")

    def __init__(self, resp: aiohttp.ClientResponse, box: str, idle: float) -> None:
        self._resp = resp
        self.box = box
        self.status = resp.status
        self.content_type = resp.headers.get("content-type", "")
        # Streams are relayed chunk by chunk; anything else is small and read whole.
        self.streaming = self.content_type.startswith(_STREAM_TYPES)
        self.headers = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _HOP_BYTES]
        # From here on the box may be silent ``idle`` seconds between two reads. aiohttp's
        # own read timer (re-armed on every read anyway) enforces it: no second timer.
        protocol = resp.connection.protocol if resp.connection is not None else None
        if protocol is not None:
            protocol.read_timeout = idle
            protocol.start_timeout()

    def header(self, name: str) -> str | None:
        return self._resp.headers.get(name)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the box sent it, chunk by chunk; an idle box times out."""
        content = self._resp.content
        try:
            while chunk := await content.readany():
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(f"box {self.box} went quiet mid-response", box=self.box) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"box {self.box} broke off the response: {exc}", box=self.box
            ) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"box {self.box} went quiet mid-response", box=self.box) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"box {self.box} broke off the response: {exc}", box=self.box
            ) from exc

    def close(self) -> None:
        """Drop the connection: a box streaming to nobody stops generating."""
        if not self._resp.closed:
            self._resp.close()

    def release(self) -> None:
        """Return a fully read connection to the pool."""
        self._resp.release()


class Upstream:
    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None
        self._timeout_cache: dict[float, aiohttp.ClientTimeout] = {}

    def retime(self, timeouts: Timeouts) -> None:
        """New time-outs (a config reload) for the requests sent from now on."""
        self._timeouts = timeouts
        self._timeout_cache.clear()

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes through: the client decodes what the box encoded
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            # Set-Cookie from one box must never reach another client's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeout(None),
        )

    def _timeout(self, first_byte: float | None) -> aiohttp.ClientTimeout:
        """Connect within ``connect`` s, answer within ``first_byte`` s of the request
        being sent (no total: a stream lasts as long as it lasts)."""
        first_byte = first_byte or self._timeouts.first_byte
        timeout = self._timeout_cache.get(first_byte)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeouts.connect, sock_read=first_byte
            )
            self._timeout_cache[first_byte] = timeout
        return timeout

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        box: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        first_byte: float | None = None,
    ) -> Response:
        """Send a request; return once the box has answered with its status line."""
        assert self._session is not None, "Upstream.open() was not awaited"
        try:
            resp = await self._session.request(
                method, url, data=_payload(body), headers=headers, timeout=self._timeout(first_byte)
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"box {box} did not answer in time", box=box) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"box {box} is unreachable: {_reason(exc)}", box=box) from exc
        return Response(resp, box, self._timeouts.idle)

    async def get_json(self, box: str, url: str, headers: Mapping[str, str], timeout: float) -> Any:
        """A small GET whose JSON body is wanted (probes); raises UpstreamError on non-2xx."""
        resp = await self.send(box, "GET", url, headers=headers, first_byte=timeout)
        try:
            async with asyncio.timeout(timeout):
                body = await resp._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            resp.close()
            raise UpstreamError(f"box {box}: {url} broke off: {_reason(exc)}", box=box) from exc
        if resp.status >= 300:
            raise UpstreamBadAnswer(
                f"box {box}: {url} answered {resp.status}", box=box, status=resp.status
            )
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadAnswer(
                f"box {box}: {url} answered with invalid JSON", box=box
            ) from exc


def _payload(body: bytes | None) -> bytes | io.BytesIO | None:
    """A big body (images) is written in chunks, as the box takes them, not in one go
    (aiohttp warns about raw bytes over 1 MiB: the write would hold the event loop)."""
    if body is not None and len(body) > _BIG_BODY:
        return io.BytesIO(body)  # shares the bytes: no copy
    return body


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    return str(exc) or type(exc).__name__
