"""What ollamux says when boxes are down: one rule, in every API's shape.

A model no box (up or down) has ever advertised is a 404; a model whose boxes are all
down, or any model while no box is reachable, is a 503 with Retry-After whose message
names the boxes and why they are down. Real sockets: boxes on closed loopback ports,
simulated boxes stopped mid-test, and one box of the wrong kind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import ollama
import openai
import pytest

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

PROBE = {"ps": 0.1, "tags": 30.0, "timeout": 1.0, "max_backoff": 0.2}
M = "llama3.2"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def proxy(endpoints: list[dict[str, Any]], **extra: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = parse_settings({"endpoints": endpoints, "probe": PROBE, **extra})
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve_app(create_app(settings)))
        yield await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))


def chat(model: str = M) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}


def unavailable(resp: httpx.Response, *names: str) -> str:
    """A 503 with Retry-After whose message names every box in ``names``."""
    assert resp.status_code == 503, (resp.status_code, resp.text)
    assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    for name in names:
        assert name in message, message
    return str(message)


async def test_boxes_unreachable_since_start_answer_503_saying_why_in_every_api() -> None:
    down = [
        {"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu-a"},
        {"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu-b"},
    ]
    async with proxy(down) as http:
        message = unavailable(await http.post("/api/chat", json=chat()), "gpu-a", "gpu-b")
        assert "refused" in message or "unreachable" in message, message
        unavailable(await http.post("/api/generate", json={"model": M, "prompt": "x"}), "gpu-a")
        unavailable(await http.post("/api/show", json={"model": M}), "gpu-a", "gpu-b")
        unavailable(await http.get("/api/version"), "gpu-a", "gpu-b")
        messages = [{"role": "user", "content": "x"}]
        resp = await http.post("/v1/chat/completions", json={"model": M, "messages": messages})
        unavailable(resp, "gpu-a", "gpu-b")
        assert resp.json()["error"]["type"] == "no_capacity"
        unavailable(await http.get(f"/v1/models/{M}"), "gpu-a")
        tags = await http.get("/api/tags")
        assert tags.status_code == 200 and tags.json() == {"models": []}
        assert (await http.get("/router/health")).status_code == 503


async def test_real_clients_see_the_503_and_its_reason() -> None:
    down = [{"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu-a"}]
    async with proxy(down) as http:
        base = str(http.base_url)
        async with ollama.AsyncClient(host=base) as client:
            with pytest.raises(ollama.ResponseError) as err:
                await client.chat(model=M, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503 and "gpu-a" in str(err.value)
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as oai:
            with pytest.raises(openai.APIStatusError) as oerr:
                await oai.chat.completions.create(
                    model=M, messages=[{"role": "user", "content": "hi"}]
                )
        assert oerr.value.status_code == 503 and "gpu-a" in oerr.value.message


async def test_a_box_stopped_mid_test_keeps_its_models_known_and_answers_503() -> None:
    async with (
        SimBox(SimConfig(name="a", models=[f"{M}:latest"])) as a,
        SimBox(SimConfig(name="b", models=["qwen3:latest"])) as b,
    ):
        endpoints = [{"url": a.url, "name": "a"}, {"url": b.url, "name": "b"}]
        async with proxy(endpoints) as http:
            assert (await http.post("/api/chat", json=chat())).status_code == 200
            await a.stop()
            # At once (the prober has not noticed yet) and after it has: the same answer.
            for _ in range(2):
                message = unavailable(await http.post("/api/chat", json=chat()), "a")
                assert "box b" not in message, message
                await _until_down(http, "a")
            tags = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
            assert f"{M}:latest" in tags  # learned from a, which is down: still known
            status = (await http.get("/router/status")).json()
            a_state = next(e for e in status["endpoints"] if e["name"] == "a")
            assert a_state["health"] == "down"
            known = next(m for m in a_state["models"] if m["name"] == f"{M}:latest")
            assert known["available"] is False  # known, marked unavailable while down
            # A model nobody ever advertised is still a 404 while some box is up.
            resp = await http.post("/api/chat", json=chat("never-heard-of"))
            assert resp.status_code == 404, resp.text
            assert (await http.get("/api/version")).status_code == 200  # b answers
            await b.stop()
            await _until_down(http, "b")
            # Nothing reachable: even an unknown model may be on a box that is down.
            unavailable(await http.post("/api/chat", json=chat("never-heard-of")), "a", "b")
            unavailable(await http.get("/api/version"), "a", "b")
            await a.start(port=a.port)
            await _until(http, "a", "healthy")
            assert (await http.post("/api/chat", json=chat())).status_code == 200


async def test_404_names_a_box_that_has_never_answered() -> None:
    async with SimBox(SimConfig(name="a")) as a:
        endpoints = [
            {"url": a.url, "name": "a"},
            {"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu-z"},
        ]
        async with proxy(endpoints) as http:
            resp = await http.post("/api/chat", json=chat("elsewhere"))
            assert resp.status_code == 404
            assert "gpu-z" in resp.json()["error"], resp.text


async def test_a_box_that_answers_its_probes_with_404_is_not_healthy() -> None:
    # An "ollama" box that is really a llama-server: every Ollama probe gets 404.
    async with (
        SimLlama(LlamaConfig(name="wrong")) as wrong,
        proxy([{"url": wrong.url, "name": "wrong"}]) as http,
    ):
        health = await http.get("/router/health")
        assert health.status_code == 503, health.text
        status = (await http.get("/router/status")).json()
        box = status["endpoints"][0]
        assert box["health"] == "down" and "404" in box["error"], box
        unavailable(await http.post("/api/chat", json=chat()), "wrong")


async def _until(http: httpx.AsyncClient, name: str, health: str) -> None:
    for _ in range(200):
        status = (await http.get("/router/status")).json()
        if next(e for e in status["endpoints"] if e["name"] == name)["health"] == health:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never became {health}")


async def _until_down(http: httpx.AsyncClient, name: str) -> None:
    await _until(http, name, "down")


async def test_down_is_one_warning_and_back_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ollamux.prober")
    async with SimBox(SimConfig(name="a")) as a, proxy([{"url": a.url, "name": "a"}]) as http:
        await a.stop()
        await _until_down(http, "a")
        await asyncio.sleep(0.6)  # several more failing probes (backoff tops at 0.2 s)
        await a.start(port=a.port)
        await _until(http, "a", "healthy")
        await asyncio.sleep(0.3)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "ollamux.prober"]
    down = [line for line in lines if "is down" in line[1]]
    back = [line for line in lines if "is up" in line[1]]
    assert [level for level, _ in down] == ["WARNING"], lines
    assert [level for level, _ in back] == ["INFO", "INFO"], lines  # at start, and back
    assert len(lines) <= 4, lines  # start, maybe degraded, down, back: not one per probe
