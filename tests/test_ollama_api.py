"""The official `ollama` client against ollamux in front of simulated boxes."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import ollama
import orjson
import pytest

from ollamux.backends.sim.ollama import SimConfig
from tests.conftest import Cluster

MSG = [{"role": "user", "content": "Why is the sky blue?"}]


async def test_official_client_sees_one_big_ollama(cluster: Any) -> None:
    async with (
        cluster(
            SimConfig(name="a", models=["llama3.2", "nomic-embed-text"], preloaded=["llama3.2"]),
            SimConfig(name="b", models=["llama3.2", "qwen2.5:7b"]),
            SimConfig(name="c", models=["mistral:7b"], preloaded=["mistral:7b"]),
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        listed = {m.model for m in (await client.list()).models}
        assert listed == {"llama3.2:latest", "nomic-embed-text:latest", "qwen2.5:7b", "mistral:7b"}
        running = [m.model for m in (await client.ps()).models]
        assert sorted(running) == ["llama3.2:latest", "mistral:7b"]
        shown = await client.show("qwen2.5:7b")
        assert shown.details is not None and shown.details.family

        reply = await client.chat(model="llama3.2", messages=MSG, stream=False)
        assert reply.done and reply.message.content and reply.eval_count
        parts = [p async for p in await client.chat(model="mistral:7b", messages=MSG, stream=True)]
        assert parts[-1].done and not any(p.done for p in parts[:-1])
        assert "".join(p.message.content or "" for p in parts).strip()

        generated = await client.generate(model="qwen2.5:7b", prompt="hello", stream=False)
        assert generated.response and generated.done
        pieces = [
            p async for p in await client.generate(model="llama3.2", prompt="hi", stream=True)
        ]
        assert pieces[-1].done and pieces[-1].eval_count == len(pieces) - 1

        embedded = await client.embed(model="nomic-embed-text", input=["a", "b", "c"])
        assert len(embedded.embeddings) == 3
        single = await client.embeddings(model="nomic-embed-text", prompt="a")
        assert list(single.embedding) == list(embedded.embeddings[0])

        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model="no-such-model", messages=MSG)
        assert err.value.status_code == 404
        assert "no-such-model" in err.value.error
        assert await c.in_use() == 0


async def test_stream_omitted_means_streaming(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        resp = await c.http.post("/api/chat", json={"model": "llama3.2", "messages": MSG})
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in resp.content.splitlines()]
        assert len(lines) > 1 and lines[-1]["done"] is True
        assert resp.headers["x-ollamux-endpoint"] == "a"


async def test_loaded_box_serves_until_full_then_spills(cluster: Any) -> None:
    slow = {"tokens_per_s": 50.0, "default_tokens": 40}
    async with cluster(
        SimConfig(name="a", preloaded=["llama3.2"], num_parallel=2, **slow),
        SimConfig(name="b", num_parallel=2, **slow),
    ) as c:

        async def first_box() -> tuple[str, httpx.Response, Any]:
            ctx = c.http.stream("POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"})
            resp = await ctx.__aenter__()
            return resp.headers["x-ollamux-endpoint"], resp, ctx

        held = [await first_box() for _ in range(3)]
        assert [box for box, _, _ in held] == ["a", "a", "b"]
        status = await c.status()
        usage = {ep["name"]: ep["models"][0]["in_use"] for ep in status["endpoints"]}
        assert usage == {"a": 2, "b": 1}
        for _, resp, ctx in held:
            await resp.aread()
            await ctx.__aexit__(None, None, None)
        assert await c.in_use() == 0


async def test_model_added_after_start_is_served(cluster: Any) -> None:
    async with cluster(SimConfig(name="a"), SimConfig(name="b")) as c:
        resp = await c.http.post("/api/generate", json={"model": "fresh:1b", "stream": False})
        assert resp.status_code == 404
        c.box("b").add_model("fresh:1b")
        body = {"model": "fresh:1b", "prompt": "hi", "stream": False}
        # Unknown-model refreshes are rate-limited (one a second): ask until it is seen,
        # long before the 30 s tags probe would have found it.
        for _ in range(50):
            resp = await c.http.post("/api/generate", json=body)
            if resp.status_code != 404:
                break
            await asyncio.sleep(0.1)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ollamux-endpoint"] == "b"


async def test_client_gone_mid_stream_stops_the_box(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", tokens_per_s=20.0, default_tokens=1000)) as c:
        async with c.http.stream(
            "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"}
        ) as resp:
            async for _ in resp.aiter_raw():
                break
            assert await c.in_use() == 1
        await c.wait_for(lambda: _zero(c))
        box = c.box("a")
        await c.wait_for(lambda: _true(box.stats.active == 0))


async def _zero(c: Cluster) -> bool:
    return await c.in_use() == 0


async def _true(value: bool) -> bool:
    return value


@pytest.mark.soak
async def test_leases_all_return_under_disconnects_and_failures(cluster: Any) -> None:
    cfg = {"tokens_per_s": 400.0, "default_tokens": 30, "num_parallel": 8}
    async with cluster(
        SimConfig(name="a", preloaded=["llama3.2"], **cfg),
        SimConfig(name="b", **cfg),
        SimConfig(name="c", **cfg),
    ) as c:
        c.box("b").faults.kill_after_chunks = 5

        async def one(i: int) -> str:
            body = {"model": "llama3.2", "prompt": f"req {i}"}
            try:
                async with c.http.stream("POST", "/api/generate", json=body) as resp:
                    async for _ in resp.aiter_raw():
                        if i % 5 == 0:
                            return "left"
                    return "done" if resp.status_code == 200 else str(resp.status_code)
            except httpx.HTTPError:
                return "broken"

        async def stop_c_midway() -> None:
            await asyncio.sleep(0.05)
            await c.box("c").stop()

        results, _ = await asyncio.gather(
            asyncio.gather(*(one(i) for i in range(200))), stop_c_midway()
        )
        assert results.count("left") == 40, Counter(results)
        assert results.count("done") == 160, Counter(results)
        await c.wait_for(lambda: _zero(c))
        status = await c.status()
        assert all(m["in_use"] == 0 for ep in status["endpoints"] for m in ep["models"])
        assert status["totals"]["in_flight"] == 0


async def test_mid_stream_failure_ends_with_an_error_line(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", default_tokens=20)) as c:
        c.box("a").faults.kill_after_chunks = 3
        resp = await c.http.post("/api/chat", json={"model": "llama3.2", "messages": MSG})
        lines = [orjson.loads(line) for line in resp.content.splitlines()]
        assert len(lines) == 4
        assert "error" in lines[-1] and "a" in lines[-1]["error"]
        assert await c.in_use() == 0


async def test_unreachable_box_is_skipped_before_the_first_byte(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=["llama3.2"]), SimConfig(name="b")) as c:
        await c.box("a").stop()  # the prober has not noticed yet
        resp = await c.http.post(
            "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}
        )
        assert resp.status_code == 200
        assert resp.headers["x-ollamux-endpoint"] == "b"
        await c.wait_for(lambda: _health(c, "a", "down"))


async def _health(c: Cluster, box: str, health: str) -> bool:
    status = await c.status()
    return any(ep["name"] == box and ep["health"] == health for ep in status["endpoints"])


async def test_no_healthy_box_answers_503_with_retry_after(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        await c.box("a").stop()
        await c.wait_for(lambda: _health(c, "a", "down"))
        resp = await c.http.post("/api/chat", json={"model": "llama3.2", "messages": MSG})
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) > 0
        assert "llama3.2" in resp.json()["error"]


async def test_upstream_errors_pass_through_with_their_status(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        c.box("a").faults.error_status = 500
        resp = await c.http.post(
            "/api/chat", json={"model": "llama3.2", "messages": MSG, "stream": False}
        )
        assert resp.status_code == 500
        assert resp.json() == {"error": "simulated failure"}
        assert resp.headers["x-ollamux-endpoint"] == "a"
        assert await c.in_use() == 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "invalid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"", 400, "missing request body"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": 7}', 400, "model must be a string"),
        (b'{"model": "llama3.2", "stream": "yes"}', 400, "stream must be a boolean"),
        (b'{"model": "llama3.2", "messages": "hi"}', 400, "messages must be an array"),
        (b'{"model": "llama3.2", "options": [1]}', 400, "options must be an object"),
        (b'{"model": "\xff\xfe"}', 400, "invalid JSON"),
    ],
)
async def test_bad_input_gets_ollama_shaped_400(
    cluster: Any, body: bytes, status: int, message: str
) -> None:
    async with cluster(SimConfig(name="a")) as c:
        resp = await c.http.post("/api/chat", content=body)
        assert resp.status_code == status
        assert message in resp.json()["error"]
        assert await c.in_use() == 0


async def test_plain_routes_and_error_shapes(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        root = await c.http.get("/")
        assert root.status_code == 200 and root.text == "Ollama is running"
        assert (await c.http.head("/")).status_code == 200
        for path in ("/api/tags", "/api/ps", "/api/version"):
            head = await c.http.head(path)
            assert head.status_code == 200 and head.content == b""
        missing = await c.http.get("/api/nothing")
        assert missing.status_code == 404 and "error" in missing.json()
        wrong = await c.http.get("/api/chat")
        assert wrong.status_code == 405 and "error" in wrong.json()
        assert (await c.http.get("/api/version")).json() == {"version": "0.12.6"}
