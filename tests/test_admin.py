"""Fleet operations without a restart: drain/resume, preload, refresh, config hot reload."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import load_settings
from tests.conftest import serve_app

M = "llama3.2"


def gen(prompt: str, tokens: int = 2, stream: bool = False) -> dict[str, Any]:
    return {"model": M, "prompt": prompt, "stream": stream, "options": {"num_predict": tokens}}


async def test_drain_lets_streams_finish_and_sends_new_work_elsewhere(cluster: Any) -> None:
    cfg = {"preloaded": [M], "tokens_per_s": 50.0}
    async with cluster(
        SimConfig(name="a", **cfg), SimConfig(name="b", **cfg), priority_routing=True
    ) as c:
        async with c.http.stream("POST", "/api/generate", json=gen("long", 25, True)) as resp:
            assert resp.headers["x-ollamux-endpoint"] == "a"
            drained = await c.http.post("/router/boxes/a/drain")
            assert drained.json() == {"box": "a", "draining": True, "in_flight": 1}
            other = await c.http.post("/api/generate", json=gen("new"))
            assert other.headers["x-ollamux-endpoint"] == "b"
            body = await resp.aread()
        assert json.loads(body.splitlines()[-1])["done"] is True  # the stream finished
        status = await c.status()
        assert [e["draining"] for e in status["endpoints"]] == [True, False]
        await c.http.post("/router/boxes/a/resume")
        back = await c.http.post("/api/generate", json=gen("again"))
        assert back.headers["x-ollamux-endpoint"] == "a"
        missing = await c.http.post("/router/boxes/zz/drain")
        assert missing.status_code == 404 and "zz" in missing.json()["error"]


async def test_preload_loads_on_the_cheapest_boxes(cluster: Any) -> None:
    boxes = [SimConfig(name=n, models=[M, "qwen2.5:7b"]) for n in ("a", "b", "c")]
    async with cluster(*boxes) as c:
        resp = await c.http.post("/router/preload", json={"model": M, "boxes": 2})
        assert resp.status_code == 200, resp.text
        loaded = [name for name, r in resp.json()["boxes"].items() if r == "loaded"]
        assert len(loaded) == 2
        assert sorted(
            n for n in ("a", "b", "c") if M + ":latest" in c.box(n).loaded_models()
        ) == sorted(loaded)

        async def seen() -> bool:
            status = await c.status()
            return sum(m["loaded"] for e in status["endpoints"] for m in e["models"]) == 2

        await c.wait_for(seen)
        named = await c.http.post("/router/preload", json={"model": "qwen2.5:7b", "boxes": ["c"]})
        assert named.json()["boxes"] == {"c": "loaded"}
        bad = await c.http.post("/router/preload", json={"model": M, "boxes": ["nope"]})
        assert bad.status_code == 400 and "nope" in bad.json()["error"]
        zero = await c.http.post("/router/preload", json={"model": M, "boxes": 0})
        assert zero.status_code == 400


async def test_refresh_probes_now(cluster: Any) -> None:
    async with cluster(SimConfig(name="a"), probe={"tags": 3600}) as c:
        c.box("a").add_model("fresh:1b")
        status = (await c.http.post("/router/refresh")).json()
        assert "fresh:1b" in {m["name"] for m in status["endpoints"][0]["models"]}


def write_config(path: Path, boxes: list[SimBox], **extra: Any) -> None:
    endpoints = [{"url": b.url, "name": b.config.name} for b in boxes]
    probe = {"ps": 0.2, "timeout": 2.0, "max_backoff": 0.5}
    path.write_text(json.dumps({"endpoints": endpoints, "probe": probe, **extra}))


async def test_hot_reload_adds_and_removes_boxes_under_load(tmp_path: Path) -> None:
    cfg = {"preloaded": [M], "tokens_per_s": 200.0, "num_parallel": 4}
    async with AsyncExitStack() as stack:
        a, b, c = [
            await stack.enter_async_context(SimBox(SimConfig(name=n, **cfg)))
            for n in ("a", "b", "c")
        ]
        path = tmp_path / "ollamux.yaml"
        write_config(path, [a, b])
        app = create_app(load_settings(path), path)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        failures: list[str] = []
        served: set[str] = set()
        stop = asyncio.Event()

        async def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                resp = await http.post("/api/generate", json=gen(f"c{n} {i}", 8, stream=True))
                lines = resp.content.splitlines()
                if resp.status_code != 200 or "error" in json.loads(lines[-1]):
                    failures.append(resp.text)
                served.add(resp.headers.get("x-ollamux-endpoint", "?"))
                i += 1

        clients = [asyncio.create_task(client(n)) for n in range(8)]
        await asyncio.sleep(0.3)
        write_config(path, [b, c])  # a removed, c added

        async def reloaded() -> bool:
            names = [e["name"] for e in (await http.get("/router/status")).json()["endpoints"]]
            return names == ["b", "c"]

        for _ in range(100):
            if await reloaded():
                break
            await asyncio.sleep(0.05)
        assert await reloaded()
        served.clear()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert served <= {"b", "c"} and "c" in served
        assert app.state.reloader.reloads >= 1


async def test_an_invalid_new_config_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        box = await stack.enter_async_context(SimBox(SimConfig(name="a", preloaded=[M])))
        path = tmp_path / "ollamux.yaml"
        write_config(path, [box])
        app = create_app(load_settings(path), path)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        path.write_text("endpoints: [http://127.0.0.1:1]\nmax_concurrent_connections: many\n")
        refused = await http.post("/router/reload")
        assert refused.status_code == 400 and "refused" in refused.json()["error"]
        assert app.state.reloader.refused >= 1
        resp = await http.post("/api/generate", json=gen("still"))
        assert resp.status_code == 200 and resp.headers["x-ollamux-endpoint"] == "a"
