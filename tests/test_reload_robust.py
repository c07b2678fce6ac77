"""Hot reload survives a config file that is not UTF-8 (refused, logged, the watcher
keeps watching), and changed breaker settings reach the boxes already running."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import yaml

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import load_settings
from tests.conftest import serve_app

M = "llama3.2"


def write(path: Path, boxes: list[SimBox], **extra: object) -> None:
    doc = {
        "endpoints": [{"url": b.url, "name": b.config.name} for b in boxes],
        "probe": {"ps": 0.2, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5},
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))


async def test_a_non_utf8_config_is_refused_and_the_watcher_survives(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(SimBox(SimConfig(name="a", preloaded=[M])))
        b = await stack.enter_async_context(SimBox(SimConfig(name="b", preloaded=[M])))
        path = tmp_path / "ollamux.yaml"
        write(path, [a])
        app = create_app(load_settings(path), path)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        path.write_bytes(b"endpoints: [http://127.0.0.1:1]\n# caf\xe9 in Latin-1\n")
        refused = await http.post("/router/reload")
        assert refused.status_code == 400 and "refused" in refused.json()["error"]
        await asyncio.sleep(0.5)  # the watcher saw it too, and must still be watching
        write(path, [a, b])

        async def names() -> list[str]:
            return [e["name"] for e in (await http.get("/router/status")).json()["endpoints"]]

        for _ in range(100):
            if await names() == ["a", "b"]:
                break
            await asyncio.sleep(0.05)
        assert await names() == ["a", "b"]


async def test_changed_breaker_settings_apply_to_existing_boxes(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(SimBox(SimConfig(name="a", preloaded=[M])))
        path = tmp_path / "ollamux.yaml"
        write(path, [a], failover={"breaker_failures": 3, "breaker_backoff": 60})
        app = create_app(load_settings(path), path)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        write(
            path,
            [a],
            failover={"breaker_failures": 1, "breaker_backoff": 0.2, "breaker_max_backoff": 0.2},
        )
        assert (await http.post("/router/reload")).status_code == 200
        a.faults.error_status = 502
        first = await http.post("/api/generate", json={"model": M, "prompt": "x", "stream": False})
        assert first.status_code == 502

        async def breaker() -> str:
            return str((await http.get("/router/status")).json()["endpoints"][0]["breaker"])

        assert await breaker() == "open"  # one failure is now enough
        a.faults.error_status = None
        for _ in range(100):  # and 0.2 s later it lets a trial through, not 60 s
            if await breaker() != "open":
                break
            await asyncio.sleep(0.05)
        assert await breaker() == "half_open"


def test_a_non_utf8_config_is_a_config_error_naming_the_byte(tmp_path: Path) -> None:
    import pytest

    from ollamux.routing.settings import ConfigError

    path = tmp_path / "ollamux.yaml"
    path.write_bytes(b"endpoints: [http://127.0.0.1:1]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 37\)"):
        load_settings(path)
