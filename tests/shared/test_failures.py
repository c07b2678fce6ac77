"""When a replica or Redis dies: slots come back, requests keep being served."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app
from tests.shared.conftest import RedisServer
from tests.shared.test_replicas import (
    MODEL,
    Replica,
    _fleet_in_use_is,
    box_config,
    chat,
    fleet,
    wait_until,
)

pytestmark = pytest.mark.replicas


async def test_redis_down_mid_load_fails_no_request_and_counts_converge(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server) as f:
        a = f.replicas[0]
        first = [
            asyncio.create_task(chat(f.replicas[i % 3], user=f"u{i}", options={"num_predict": 40}))
            for i in range(30)
        ]
        await asyncio.sleep(0.3)
        redis_server.stop()
        await wait_until(lambda: _health_is(a, "degraded"), within=5)
        during = [
            asyncio.create_task(chat(f.replicas[i % 3], user=f"v{i}", options={"num_predict": 8}))
            for i in range(15)
        ]
        await asyncio.sleep(0.5)
        redis_server.start()  # empty: it lost every lease and ticket
        answers = await asyncio.gather(*first, *during)
        assert all(a[-1]["done"] for a in answers)  # no request failed
        for r in f.replicas:
            await wait_until(lambda r=r: _health_is(r, "ok"), within=6)
            await wait_until(lambda r=r: _fleet_in_use_is(r, 0))
        assert await _slots_in_redis(redis_server) == 0
        # No slot was lost: the fleet serves at full width again, and only that wide.
        for box in f.boxes:
            box.stats.max_held_per_model.clear()
        again = await asyncio.gather(*(chat(f.replicas[i % 3], user=f"w{i}") for i in range(24)))
        assert all(a[-1]["done"] for a in again)
        assert [b.stats.max_held_per_model[MODEL] for b in f.boxes] == [2, 2]


async def _health_is(replica: Replica, status: str) -> bool:
    resp = await replica.http.get("/router/health")
    assert resp.status_code == 200  # Redis trouble is not an outage
    return bool(resp.json()["status"] == status)


async def _slots_in_redis(server: RedisServer) -> int:
    client = aioredis.Redis.from_url(server.url)
    try:
        now = float((await client.time())[0]) * 1000
        total = 0
        for key in await client.keys("ollamux:slots:*"):
            total += int(await client.zcount(key, f"({now:.0f}", "+inf"))
        return total
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def replica_process(
    config: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, httpx.AsyncClient]]:
    """A replica in its own process (``python -m ollamux.app``), so it can be killed."""
    path = tmp_path / "replica.yaml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "ollamux.app", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(500):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/router/health")).status_code == 200:
                        break
                assert proc.returncode is None, "the replica process exited"
                await asyncio.sleep(0.02)
            yield proc, http
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_killed_replicas_slots_come_back_and_waiters_elsewhere_are_served(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with SimBox(box_config("gpu-0", tokens_per_s=20)) as box:
        settings = {
            "endpoints": [{"url": box.url, "name": "gpu-0", "max_concurrent": 2}],
            "probe": {"ps": 0.2, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5},
            "shared_state": {"redis": redis_server.url, "lease_ttl": 2, "replica": "doomed"},
        }
        async with replica_process(settings, tmp_path) as (proc, doomed):
            mine = {**settings, "shared_state": {**settings["shared_state"], "replica": "alive"}}
            app = create_app(parse_settings(mine))
            async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                survivor = Replica(url, app.state.services, http)
                streams = [asyncio.create_task(_long_stream(doomed)) for _ in range(2)]
                await wait_until(lambda: _fleet_in_use_is(survivor, 2), within=10)
                waiting = asyncio.create_task(chat(survivor, options={"num_predict": 4}))
                await wait_until(lambda: _queue_is(survivor, 1), within=5)
                proc.kill()  # kill -9: no release, no goodbye
                await proc.wait()
                answer = await asyncio.wait_for(waiting, 15)
                assert answer[-1]["done"]
                # The dead replica's leases expired: the fleet holds what the living hold.
                await wait_until(lambda: _fleet_in_use_is(survivor, 0), within=5)
                for stream in streams:
                    stream.cancel()
                await asyncio.gather(*streams, return_exceptions=True)


async def _long_stream(http: httpx.AsyncClient) -> None:
    doc = {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}]}
    doc["options"] = {"num_predict": 2000}
    async with http.stream("POST", "/api/chat", json=doc) as resp:
        async for line in resp.aiter_lines():
            orjson.loads(line)


async def _queue_is(replica: Replica, n: int) -> bool:
    return int((await replica.status())["queue"]["waiting"]) >= n
