"""Smaller holes: malformed HTTP gets the API's error shape (with the server ollamux
runs), and an open breaker's 503 says so rather than just "no healthy box"."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ollamux.backends.sim.ollama import SimConfig
from tests.test_slowloris import guarded

M = "llama3.2"


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, Any], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(
        (k.strip().lower().decode(), v.strip().decode())
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    return status, headers, body


@pytest.mark.parametrize(
    ("request_bytes", "shape"),
    [
        (b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "ollama"),
        (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", "ollama"),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "openai"),
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", "anthropic"),
    ],
)
async def test_malformed_http_gets_the_apis_error_shape(request_bytes: bytes, shape: str) -> None:
    async with guarded({}) as (_url, port, _config):
        status, headers, body = await _raw(port, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json"
    doc = orjson.loads(body)
    if shape == "ollama":
        assert isinstance(doc["error"], str) and "malformed" in doc["error"]
    elif shape == "openai":
        assert "malformed" in doc["error"]["message"]
    else:
        assert doc["type"] == "error" and "malformed" in doc["error"]["message"]


async def test_an_open_breakers_503_names_the_breaker(cluster: Any) -> None:
    async with cluster(
        SimConfig(name="a", preloaded=[M]),
        failover={"breaker_failures": 1, "breaker_backoff": 60, "breaker_max_backoff": 60},
    ) as c:
        c.box("a").faults.error_status = 502
        first = await c.http.post(
            "/api/generate", json={"model": M, "prompt": "x", "stream": False}
        )
        assert first.status_code == 502
        resp = await c.http.post("/api/generate", json={"model": M, "prompt": "x", "stream": False})
        status = (await c.status())["endpoints"][0]
    print(
        f"\nwhile a's breaker is open: {resp.status_code} {resp.json()}; status {status['health']}"
    )
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert "breaker open" in resp.json()["error"] and "a" in resp.json()["error"]
