"""Limits (``limits.*``, ``timeouts.*``): each is answered with its own status and a
clear message in the API's shape, and a body over the limit is refused without being
read whole."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import ollama
import openai
import orjson
import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.api.client_limits import _counted, verdict
from ollamux.routing.errors import ProxyError
from ollamux.routing.settings import Limits, parse_settings
from tests.conftest import Cluster, raw_exchange, run_cluster

M = "llama3.2"
SMALL = Limits(max_body_bytes=1000, max_header_bytes=2000, max_connections=2)


@pytest.mark.parametrize(
    ("header_bytes", "length", "in_flight", "status"),
    [
        (100, None, 0, None),
        (2000, 1000, 1, None),  # at each limit: served
        (2001, None, 0, 431),
        (100, 1001, 0, 413),
        (100, 10**12, 0, 413),
        (100, None, 2, 503),
        (2001, 1001, 2, 431),  # the head is judged first
        (100, 1001, 2, 413),
    ],
)
def test_verdict(header_bytes: int, length: int | None, in_flight: int, status: int | None) -> None:
    refusal = verdict(header_bytes, length, in_flight, SMALL)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert "limits.max_" in refusal.message
    if status == 503:
        assert refusal is not None and refusal.headers["Retry-After"]


async def test_a_chunked_body_is_refused_as_it_passes_the_limit() -> None:
    messages = [{"type": "http.request", "body": b"x" * 400, "more_body": True}] * 5
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return messages[pulled - 1]

    counted = _counted(receive, 1000)
    await counted()
    await counted()
    with pytest.raises(ProxyError) as refused:
        await counted()
    assert refused.value.status == 413 and pulled == 3


def test_limits_config() -> None:
    eps = ["http://127.0.0.1:1"]
    defaults = parse_settings({"endpoints": eps})
    assert defaults.limits == Limits(64 * 1024 * 1024, 64 * 1024, 1024)
    assert defaults.shutdown.grace == 30.0
    raw = {"endpoints": eps, "limits": {"max_body_bytes": 5}, "shutdown": {"grace": 2}}
    custom = parse_settings(raw)
    assert (custom.limits.max_body_bytes, custom.shutdown.grace) == (5, 2.0)
    with pytest.raises(ValueError, match=r"limits.max_connections has value 0"):
        parse_settings({"endpoints": eps, "limits": {"max_connections": 0}})


# --- over the wire -------------------------------------------------------------------


@asynccontextmanager
async def limited(**limits: int) -> AsyncIterator[Cluster]:
    box = SimConfig(name="a", preloaded=[M], num_parallel=4, tokens_per_s=50)
    async with run_cluster(box, limits=limits, max_concurrent_connections=4) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "shape"), [("/api/chat", "ollama"), ("/v1/chat/completions", "openai")]
)
async def test_a_body_too_large_is_refused_from_its_length_before_it_is_sent(
    path: str, shape: str
) -> None:
    async with limited(max_body_bytes=1024) as c:
        # Headers only: a server that waited for the 1 TB body would never answer.
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        status, headers, body = await raw_exchange(
            c.url, (head + f"Content-Length: {10**12}\r\n\r\n").encode()
        )
        assert status == 413 and headers["connection"] == "close"
        error = orjson.loads(body)["error"]
        message = error if shape == "ollama" else error["message"]
        assert "over the limit of 1024 bytes (limits.max_body_bytes)" in message
        if shape == "openai":
            assert error["type"] == "payload_too_large"


async def test_a_chunked_body_too_large_is_refused_before_it_ends() -> None:
    async with limited(max_body_bytes=1024) as c:
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        head = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        # Two chunks and never the last: the answer cannot wait for the end of the body.
        status, _, body = await raw_exchange(c.url, head + chunk * 2)
        assert status == 413
        assert "limits.max_body_bytes" in orjson.loads(body)["error"]
        assert (await c.http.get("/api/tags")).status_code == 200  # and nothing is stuck


async def test_images_under_the_limit_pass_and_over_it_are_refused() -> None:
    async with limited(max_body_bytes=16 * 1024) as c, ollama.AsyncClient(host=c.url) as client:
        small = base64.b64encode(b"\x89PNG" + b"\0" * 4000).decode()
        reply = await client.generate(model=M, prompt="what is it?", images=[small])
        assert reply.done
        big = base64.b64encode(b"\x89PNG" + b"\0" * 20_000).decode()
        with pytest.raises(ollama.ResponseError) as refused:
            await client.generate(model=M, prompt="what is it?", images=[big])
        assert refused.value.status_code == 413
        assert "limits.max_body_bytes" in refused.value.error


async def test_headers_too_large_get_431() -> None:
    async with limited(max_header_bytes=4096) as c:
        resp = await c.http.get("/api/tags", headers={"x-padding": "p" * 5000})
        assert resp.status_code == 431
        assert "limits.max_header_bytes" in resp.json()["error"]
        assert (await c.http.get("/api/tags", headers={"x-padding": "p" * 3000})).is_success


async def test_requests_beyond_max_connections_get_503_until_one_ends() -> None:
    async with limited(max_connections=2) as c:
        body = {"model": M, "prompt": "a long one", "options": {"num_predict": 100_000}}
        async with c.http.stream("POST", "/api/generate", json=body) as one:
            first = one.aiter_lines()  # kept: a dropped line iterator closes its response
            await anext(first)
            async with c.http.stream("POST", "/api/generate", json=body) as two:
                second = two.aiter_lines()
                await anext(second)
                full = await c.http.get("/api/tags")
                assert full.status_code == 503
                assert int(full.headers["retry-after"]) >= 1
                assert (
                    "limit of 2 requests at once (limits.max_connections)" in (full.json()["error"])
                )
                v1 = await c.http.get("/v1/models")
                assert v1.status_code == 503 and v1.json()["error"]["type"] == "no_capacity"
        # Both streams hung up: their places are free again.
        await c.wait_for(lambda: _served(c))


async def _served(c: Cluster) -> bool:
    return (await c.http.get("/api/tags")).status_code == 200


# --- time-outs towards the boxes (timeouts.*) ------------------------------------------

QUICK = {"connect": 0.3, "first_byte": 0.3, "idle": 0.3}


async def test_first_byte_timeout_is_504_with_a_message() -> None:
    async with run_cluster(SimConfig(name="a", preloaded=[M]), timeouts=QUICK) as c:
        c.box("a").faults.hang_before_first_byte = True
        async with ollama.AsyncClient(host=c.url) as client:
            with pytest.raises(ollama.ResponseError) as late:
                await client.generate(model=M, prompt="hi", stream=False)
        assert late.value.status_code == 504
        assert late.value.error == "box a did not answer in time"


async def test_idle_timeout_ends_the_stream_with_an_error_event() -> None:
    async with run_cluster(SimConfig(name="a", preloaded=[M]), timeouts=QUICK) as c:
        c.box("a").faults.hang_after_chunks = 2
        async with openai.AsyncOpenAI(base_url=f"{c.url}/v1", api_key="-", max_retries=0) as oai:
            stream = await oai.chat.completions.create(
                model=M, messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
            )
            chunks = 0
            with pytest.raises(openai.APIError) as quiet:
                async for _ in stream:
                    chunks += 1
        assert chunks >= 1  # it had started: the status was 200, the error comes in-stream
        assert quiet.value.message == "box a went quiet mid-response"


async def test_connect_timeout_is_504_with_a_message() -> None:
    never = {"ps": 3600, "tags": 3600, "timeout": 2, "max_backoff": 60}
    async with run_cluster(SimConfig(name="a", preloaded=[M]), timeouts=QUICK, probe=never) as c:
        port = c.box("a").port
        await c.box("a").stop()
        # The box's port now takes no new connections: its accept queue is full.
        with socket.socket() as listener, socket.socket() as held:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(0)
            held.connect(("127.0.0.1", port))
            resp = await c.http.post("/api/generate", json={"model": M, "prompt": "hi"})
        assert resp.status_code == 504
        assert resp.json() == {"error": "box a did not answer in time"}
