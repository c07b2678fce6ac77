"""The config watcher reacts to the config file alone, and a reload says what it did.

The most common layout puts the log file (or ``stats.path``) next to the config: a
watcher that logs every change in that folder feeds itself, a line a change, forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import load_settings
from tests.conftest import serve_app


def write_config(path: Path, urls: list[str], **extra: object) -> None:
    endpoints = [{"url": u, "name": f"box{i}"} for i, u in enumerate(urls)]
    probe = {"ps": 0.2, "timeout": 2.0, "max_backoff": 0.5}
    path.write_text(json.dumps({"endpoints": endpoints, "probe": probe, **extra}))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_other_files_in_the_config_folder_are_ignored_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with AsyncExitStack() as stack:
        box = await stack.enter_async_context(SimBox(SimConfig(name="a")))
        path = tmp_path / "ollamux.yaml"
        write_config(path, [box.url])
        app = create_app(load_settings(path), path)
        await stack.enter_async_context(serve_app(app))
        await asyncio.sleep(0.3)  # the watcher is up
        caplog.clear()
        log = tmp_path / "ollamux.log"
        for i in range(10):
            with log.open("a") as f:
                f.write(f"line {i}\n")
            (tmp_path / "ollamux.sqlite3").write_bytes(os.urandom(64))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # past the watcher's debounce
        noise = [r.getMessage() for r in caplog.records if r.name.startswith("watchfiles")]
        assert noise == []
        assert app.state.reloader.reloads == 0
        write_config(path, [box.url], max_concurrent_connections=3)
        for _ in range(100):
            if app.state.reloader.reloads:
                break
            await asyncio.sleep(0.05)
        assert app.state.reloader.reloads == 1


def test_the_log_next_to_the_config_does_not_feed_the_watcher(tmp_path: Path) -> None:
    """The issue's own reproduction: ``ollamux --config ollamux.yaml > ollamux.log 2>&1``."""
    path = tmp_path / "ollamux.yaml"
    write_config(path, [f"http://127.0.0.1:{closed_port()}"])
    log = tmp_path / "ollamux.log"
    port = closed_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollamux.app", "--config", "ollamux.yaml", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"Uvicorn running" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        before = log.read_bytes().count(b"\n")
        time.sleep(2.0)
        after = log.read_bytes().count(b"\n")
    finally:
        proc.terminate()
        proc.wait(10)
    assert after == before, log.read_text()
    assert b"changes detected" not in log.read_bytes()


async def test_reload_answers_what_changed_or_why_it_was_refused(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(SimBox(SimConfig(name="a")))
        b = await stack.enter_async_context(SimBox(SimConfig(name="b")))
        path = tmp_path / "ollamux.yaml"
        write_config(path, [a.url])
        app = create_app(load_settings(path), path)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        write_config(path, [a.url, b.url])
        resp = await http.post("/router/reload")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["added"] == ["box1"] and body["removed"] == [] and body["changed"] == []
        assert body["config"] == str(path.resolve())
        path.write_text("endpoints: [http://127.0.0.1:1]\nmax_concurrent_connections: many\n")
        refused = await http.post("/router/reload")
        assert refused.status_code == 400
        assert "max_concurrent_connections has value 'many'" in refused.json()["error"]
        assert "see the log" not in refused.json()["error"]
        # Bytes that are not UTF-8: refused with a reason, and the watcher lives on.
        path.write_bytes(b"endpoints: [\xff\xfe]\n")
        bad = await http.post("/router/reload")
        assert bad.status_code == 400 and "UTF-8" in bad.json()["error"], bad.text
        await asyncio.sleep(0.5)
        before = app.state.reloader.reloads
        write_config(path, [b.url])
        for _ in range(100):
            if app.state.reloader.reloads > before:
                break
            await asyncio.sleep(0.05)
        assert app.state.reloader.reloads > before
