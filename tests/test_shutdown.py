"""Graceful shutdown: on SIGTERM ollamux stops accepting, lets the streams in flight go
on for ``shutdown.grace`` seconds, then ends them with an error line (NDJSON) or error
event (SSE), frees their slots, and exits 0. With each server it supports."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from ollamux.backends.sim.ollama import SimBox, SimConfig
from tests.conftest import Cluster, run_cluster

M = "llama3.2"
APP = Path(__file__).resolve().parent.parent / "app.py"
LONG = {"model": M, "prompt": "a long one", "options": {"num_predict": 100_000}}


async def idle(c: Cluster) -> bool:
    status = await c.status()
    return status["totals"]["in_flight"] == 0 and await c.in_use() == 0


async def test_closing_cuts_streams_with_an_error_line_and_refuses_waiters() -> None:
    box = SimConfig(name="a", preloaded=[M], tokens_per_s=50)
    async with run_cluster(box, max_concurrent_connections=1) as c:
        async with c.http.stream("POST", "/api/generate", json=LONG) as stream:
            lines = stream.aiter_lines()
            await anext(lines)
            waiter = asyncio.create_task(c.http.post("/api/generate", json=LONG))
            await c.wait_for(lambda: _waiting(c, 1))
            assert c.app.state.exchanges.close_all("going down") == 2
            rest = [line async for line in lines]
        assert orjson.loads(rest[-1]) == {"error": "going down"}
        assert all(orjson.loads(line)["done"] is False for line in rest[:-1])
        refused = await waiter
        assert refused.status_code == 503 and refused.json() == {"error": "going down"}
        assert "retry-after" in refused.headers
        await c.wait_for(lambda: idle(c))
        await c.wait_for(lambda: _true(c.box("a").stats.active == 0))  # the box was let go
        # Nothing else is held: the next request is served.
        after = await c.http.post("/api/generate", json={"model": M, "prompt": "hi"})
        assert after.status_code == 200


async def test_closing_ends_an_sse_stream_with_an_error_event() -> None:
    async with run_cluster(SimConfig(name="a", preloaded=[M], tokens_per_s=50)) as c:
        async with openai.AsyncOpenAI(base_url=f"{c.url}/v1", api_key="-", max_retries=0) as oai:
            stream = await oai.chat.completions.create(
                model=M, messages=[{"role": "user", "content": "hi"}], max_tokens=10**5, stream=True
            )
            with pytest.raises(openai.APIError) as cut:
                async for _ in stream:
                    c.app.state.exchanges.close_all("going down")
        assert cut.value.message == "going down"
        await c.wait_for(lambda: idle(c))


async def _waiting(c: Cluster, n: int) -> bool:
    return bool((await c.status())["queue"]["waiting"] == n)


async def _true(value: bool) -> bool:
    return value


# --- the real thing: a subprocess and SIGTERM ------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _started(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(30):
        while True:
            assert proc.returncode is None, await _output(proc)
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/router/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


async def _refusing(url: str) -> None:
    """Wait until a new connection is refused (guarded: it must come, and soon)."""
    async with asyncio.timeout(10):
        while True:
            try:
                async with httpx.AsyncClient(timeout=1) as http:
                    await http.get(f"{url}/")
            except httpx.ConnectError:
                return
            await asyncio.sleep(0.05)


async def _output(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await proc.stdout.read()).decode(errors="replace")


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_sigterm_lets_streams_finish_then_cuts_them(tmp_path: Path, server: str) -> None:
    if server == "granian":
        pytest.importorskip("granian")
    config = SimConfig(name="a", preloaded=[M], tokens_per_s=20, num_parallel=4)
    async with SimBox(config) as box:
        path = tmp_path / "ollamux.yaml"
        path.write_text(
            f"endpoints:\n  - url: {box.url}\n    name: a\n    max_concurrent: 4\n"
            "shutdown:\n  grace: 3\n"
        )
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APP),
            *("--config", str(path), "--port", str(port), "--server", server),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await _started(url, proc)
            await _shutdown_with_streams_in_flight(url, proc)
            async with asyncio.timeout(30):
                code = await proc.wait()
            output = await _output(proc)
            assert code == 0, output
            assert "cut 2 request(s) still in flight after 3 s" in output
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for _ in range(250):  # the box was told to stop generating
            if not box.stats.active:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the box is still generating for a process that is gone")


async def _shutdown_with_streams_in_flight(url: str, proc: asyncio.subprocess.Process) -> None:
    stopped = asyncio.Event()
    started = [asyncio.Event() for _ in range(3)]

    async def ndjson(http: httpx.AsyncClient) -> tuple[list[dict[str, Any]], int]:
        lines: list[dict[str, Any]] = []
        after = 0
        async with http.stream("POST", "/api/generate", json=LONG) as resp:
            async for line in resp.aiter_lines():
                lines.append(orjson.loads(line))
                started[0].set()
                after += stopped.is_set()
        return lines, after

    async def sse(oai: openai.AsyncOpenAI) -> str:
        stream = await oai.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "hi"}], max_tokens=10**5, stream=True
        )
        try:
            async for _ in stream:
                started[1].set()
        except openai.APIError as exc:
            return exc.message
        return "ended without an error"

    async def short(client: ollama.AsyncClient) -> bool:
        done = False
        parts = await client.generate(
            model=M, prompt="short", options={"num_predict": 10}, stream=True
        )
        async for part in parts:
            started[2].set()
            done = bool(part.done)
        return done

    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as oai,
        ollama.AsyncClient(host=url, timeout=60) as client,
    ):
        long_lines = asyncio.create_task(ndjson(http))
        long_events = asyncio.create_task(sse(oai))
        await started[0].wait()
        await started[1].wait()
        finishing = asyncio.create_task(short(client))
        await started[2].wait()
        proc.send_signal(signal.SIGTERM)
        stopped.set()
        await _refusing(url)  # no new connections, while the streams go on
        assert await finishing, "a stream that could finish within the grace period did"
        lines, after_sigterm = await long_lines
        assert after_sigterm > 1  # it went on after SIGTERM...
        last = lines[-1]["error"]  # ...and was then cut, saying why
        assert "ollamux is shutting down" in last and "(shutdown.grace)" in last
        assert "ollamux is shutting down" in await long_events
