"""The rest of a current Ollama's surface through ollamux: the routes it does not serve
answer 501 naming the route in the API's own shape (never a bare 404), and cloud models
(listed by an Ollama box with ``remote_host``) are routed to their box without taking
one of its local slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import openai
import orjson
import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.api.surface import UNSERVED
from tests.conftest import Cluster, run_cluster

CLOUD = "gpt-oss:120b-cloud"


@pytest.mark.parametrize(("method", "path", "why"), UNSERVED)
async def test_each_unserved_ollama_route_is_a_501_naming_it(
    method: str, path: str, why: str
) -> None:
    async with run_cluster(SimConfig()) as c:
        url = path.replace("{key}", "abc")
        resp = await c.http.request(method, url, json={"model": "llama3.2"})
        assert resp.status_code == 501
        body = resp.json()
        if url.startswith("/v1/"):
            error = body["error"]
            assert error["type"] == "not_implemented" and error["code"] == 501
            message = error["message"]
        else:
            message = body["error"]
        assert f"{method} {path}" in message and why in message


async def test_the_openai_sdk_sees_a_501_as_an_api_error() -> None:
    async with run_cluster(SimConfig()) as c:
        sdk = openai.AsyncOpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0)
        async with sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.images.generate(model="x/z-image-turbo", prompt="a robot")
        assert caught.value.status_code == 501
        assert "/v1/images/generations" in caught.value.message


async def test_an_unknown_route_is_still_a_404() -> None:
    async with run_cluster(SimConfig()) as c:
        resp = await c.http.get("/api/nothing-here")
        assert resp.status_code == 404 and "no route" in resp.json()["error"]


async def _first_line(
    c: Cluster, stack: AsyncExitStack, model: str
) -> tuple[httpx.Response, AsyncIterator[str]]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    resp = await stack.enter_async_context(c.http.stream("POST", "/api/chat", json=body))
    assert resp.status_code == 200
    lines = resp.aiter_lines()
    await anext(lines)  # generating now
    return resp, lines


async def test_a_cloud_model_takes_no_local_slot() -> None:
    config = SimConfig(
        name="cloudy",
        models=["llama3.2", CLOUD],
        remote=[CLOUD],
        num_parallel=1,
        tokens_per_s=20,
        default_tokens=40,
    )
    extra = {"endpoint_extra": {"cloudy": {"max_concurrent": 1}}}
    async with run_cluster(config, **extra) as c:
        tags = (await c.http.get("/api/tags")).json()["models"]
        cloud = next(t for t in tags if t["name"] == CLOUD)
        assert cloud["remote_host"] and cloud["remote_model"] == "gpt-oss:120b"
        models = {m["name"]: m for m in (await c.status())["endpoints"][0]["models"]}
        assert models[CLOUD]["remote"] is True and "remote" not in models["llama3.2:latest"]
        async with AsyncExitStack() as stack:
            # Three at once on a box with one slot: all generate, none waits, none counted.
            streams = await asyncio.gather(*(_first_line(c, stack, CLOUD) for _ in range(3)))
            assert c.box("cloudy").stats.active == 3
            assert not any(c.services.ledger.usage.values())
            assert await c.in_use() == 0
            assert all(r.headers["x-ollamux-endpoint"] == "cloudy" for r, _ in streams)
            # A local model on the same box still holds its slot while it generates.
            local = await _first_line(c, stack, "llama3.2")
            assert c.services.ledger.usage.get(("cloudy", "llama3.2:latest")) == 1
            for _, lines in [*streams, local]:
                rest = [line async for line in lines]
                assert orjson.loads(rest[-1])["done"] is True
        await c.wait_for(lambda: _idle(c))


async def _idle(c: Cluster) -> bool:
    return not any(c.services.ledger.usage.values())


AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)  # what the box hears is not checked
HEARS = SimConfig(name="hears", models=["gemma4:e4b"], version="0.20.0")
DEAF = SimConfig(name="deaf", models=["gemma4:e4b"], version="0.19.2")


async def test_transcriptions_go_to_an_ollama_box_that_serves_them() -> None:
    async with run_cluster(DEAF, HEARS) as c:
        sdk = openai.AsyncOpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0)
        async with sdk:
            for _ in range(3):  # never the older box, whichever has a free slot
                raw = await sdk.audio.transcriptions.with_raw_response.create(
                    model="gemma4:e4b", file=("hello.wav", AUDIO), language="en"
                )
                assert raw.headers["x-ollamux-endpoint"] == "hears"
                assert raw.parse().text.strip()
            text = await sdk.audio.transcriptions.create(
                model="gemma4:e4b", file=("hello.wav", AUDIO), response_format="text"
            )
            assert isinstance(text, str) and text.strip()
        assert c.box("deaf").stats.requests == 0 and c.box("hears").stats.requests == 4
        await c.wait_for(lambda: _idle(c))


async def test_transcriptions_no_box_serves_are_a_501_naming_the_route() -> None:
    async with run_cluster(DEAF) as c:
        sdk = openai.AsyncOpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0)
        async with sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.audio.transcriptions.create(model="gemma4:e4b", file=("a.wav", AUDIO))
            assert caught.value.status_code == 501
            assert "/v1/audio/transcriptions" in caught.value.message
            assert "0.20.0" in caught.value.message
            with pytest.raises(openai.NotFoundError):  # a model no box has: 404, as ever
                await sdk.audio.transcriptions.create(model="nope:1b", file=("a.wav", AUDIO))
        resp = await c.http.post("/v1/audio/transcriptions", files={"file": ("a.wav", AUDIO)})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"
        assert c.box("deaf").stats.requests == 0
