"""The live feed, GET /router/events, over a real socket."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from tests.conftest import Cluster, cluster_settings


@dataclass
class Event:
    name: str | None  # None: a comment line (heartbeat)
    data: Any
    id: int | None = None


async def read_events(resp: httpx.Response) -> AsyncIterator[Event]:
    fields: dict[str, str] = {}
    async for line in resp.aiter_lines():
        if line.startswith(":"):
            yield Event(None, line[1:].strip())
        elif line:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
        elif fields:
            ident = int(fields["id"]) if "id" in fields else None
            yield Event(fields.get("event"), orjson.loads(fields["data"]), ident)
            fields = {}


@asynccontextmanager
async def feed(c: Cluster) -> AsyncIterator[AsyncIterator[Event]]:
    async with c.http.stream("GET", "/router/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-accel-buffering"] == "no"
        yield read_events(resp)


async def next_snapshot(events: AsyncIterator[Event], within: float = 5.0) -> Event:
    async with asyncio.timeout(within):
        async for event in events:
            if event.name == "snapshot":
                return event
    raise AssertionError("the feed ended")


async def snapshot_where(events: AsyncIterator[Event], check: Any, within: float = 5.0) -> Event:
    async with asyncio.timeout(within):
        while True:
            event = await next_snapshot(events, within)
            if check(event.data):
                return event


def in_use(snapshot: dict[str, Any]) -> int:
    return sum(m["in_use"] for ep in snapshot["endpoints"] for m in ep["models"])


async def test_first_snapshot_on_connect_is_the_status_contract(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=["llama3.2"]), SimConfig(name="b")) as c:
        status = await c.status()
        async with feed(c) as events:
            first = await anext(events)
            assert first.name == "snapshot"
            snap = first.data
            assert [ep["name"] for ep in snap["endpoints"]] == ["a", "b"]
            assert snap["endpoints"] == status["endpoints"]
            model = snap["endpoints"][0]["models"][0]
            assert model["name"] == "llama3.2:latest" and model["loaded"] is True
            assert (model["in_use"], model["max"]) == (0, 2)
            assert snap["queue"]["waiting"] == 0
            assert snap["totals"]["requests"] == 0 and snap["totals"]["in_flight"] == 0
            second = await anext(events)
            assert second.name == "stats"
            assert {"totals", "boxes", "series", "recent", "tuning"} <= second.data.keys()


async def test_updates_when_a_request_starts_and_ends(cluster: Any) -> None:
    slow = SimConfig(name="a", preloaded=["llama3.2"], tokens_per_s=40.0, default_tokens=12)
    async with cluster(slow) as c, feed(c) as events:
        first = await next_snapshot(events)
        assert in_use(first.data) == 0
        request = asyncio.create_task(
            c.http.post("/api/generate", json={"model": "llama3.2", "prompt": "x"})
        )
        started = await snapshot_where(events, lambda s: in_use(s) == 1)
        assert started.data["totals"]["in_flight"] == 1
        assert started.id is not None and first.id is not None and started.id > first.id
        assert not request.done()  # seen while it runs, not after
        ended = await snapshot_where(events, lambda s: s["totals"]["requests"] == 1)
        assert in_use(ended.data) == 0 and ended.data["totals"]["in_flight"] == 0
        assert (await request).status_code == 200


async def test_heartbeats_keep_a_quiet_stream_open(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        c.services.feed.heartbeat = 0.2
        async with feed(c) as events:
            beats = 0
            async with asyncio.timeout(3):
                async for event in events:
                    beats += event.name is None
                    if beats == 3:
                        break
            assert beats == 3


async def test_changes_are_coalesced(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=["llama3.2"])) as c, feed(c) as events:
        await next_snapshot(events)
        feed_ = c.services.feed
        version = c.services.board.version
        t0 = time.monotonic()
        for i in range(30):
            await c.http.post(
                "/api/generate", json={"model": "llama3.2", "prompt": str(i), "stream": False}
            )
        last = await snapshot_where(events, lambda s: s["totals"]["requests"] == 30)
        elapsed = time.monotonic() - t0
        changes = c.services.board.version - version
        assert changes >= 60  # a slot taken and freed per request
        assert last.id is not None and last.id - version == changes
        sent = feed_.subscribers[0].sent
        assert sent <= 2 + 2 * (elapsed / feed_.min_gap + 2)  # snapshots and stats


async def test_a_stalled_subscriber_does_not_slow_requests(cluster: Any) -> None:
    """A subscriber that stops reading holds up no request: measured against no
    subscriber at all; and when it reads again it gets the newest snapshot, not the
    backlog."""
    big = SimConfig(name="a", models=["llama3.2", *(f"m{i}:7b" for i in range(400))])
    async with small_send_buffers_cluster(big) as c:
        c.services.feed.min_gap = 0.02
        baseline = await _timed_requests(c, 15)

        reader, writer = await _stalled_subscriber(c.url)
        try:
            sub = await _wait_for_stall(c)
            stalled = await _timed_requests(c, 15)
            assert c.services.feed.subscribers[0].sent == sub  # it stayed stalled
            assert stalled < 2 * baseline + 0.25, (stalled, baseline)

            latest = c.services.feed.version("snapshot")
            ids = await _snapshot_ids_until(reader, latest)
            # The newest snapshot when it read again (or a newer one, if the fleet moved
            # meanwhile) came right after the last one it had before it stalled.
            newest = next(i for i in ids if i >= latest)
            before = ids[ids.index(newest) - 1]
            assert newest - before > 10  # the backlog was dropped: only the newest came
        finally:
            writer.close()
            await writer.wait_closed()


@asynccontextmanager
async def small_send_buffers_cluster(config: SimConfig) -> AsyncIterator[Cluster]:
    """Like ``run_cluster``, but the proxy's sockets get a small kernel send buffer, so a
    subscriber that stops reading stalls the server after a few events, not megabytes."""
    async with AsyncExitStack() as stack:
        box = await stack.enter_async_context(SimBox(config))
        app = create_app(cluster_settings([box]))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted ones inherit it
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not task.done()
                await asyncio.sleep(0.005)
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            yield Cluster(url, [box], app, http)
        finally:
            server.should_exit = True
            await task
            sock.close()


async def _timed_requests(c: Cluster, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        resp = await c.http.post(
            "/api/generate", json={"model": "llama3.2", "prompt": str(i), "stream": False}
        )
        assert resp.status_code == 200
    return time.perf_counter() - t0


async def _stalled_subscriber(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET /router/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _wait_for_stall(c: Cluster) -> int:
    """Make changes until the server can hand the subscriber nothing more."""
    feed_ = c.services.feed
    async with asyncio.timeout(10):
        while not feed_.subscribers:  # noqa: ASYNC110 (the server accepts it in its own time)
            await asyncio.sleep(0.01)
        sub = feed_.subscribers[0]
        while True:
            before, version = sub.sent, feed_.version("snapshot")
            await _timed_requests(c, 5)
            await asyncio.sleep(0.1)
            if sub.sent == before and feed_.version("snapshot") > version:
                return sub.sent


async def _snapshot_ids_until(reader: asyncio.StreamReader, latest: int) -> list[int]:
    """Read the raw stream again until snapshot ``latest`` (or a newer one) arrives; every
    snapshot id received, in order (each event is one HTTP chunk, so never split)."""
    pattern = re.compile(rb"id: (\d+)\r\nevent: snapshot")
    ids: list[int] = []
    buffer = b""
    async with asyncio.timeout(10):
        while not ids or ids[-1] < latest:
            chunk = await reader.read(1 << 16)
            assert chunk, "the feed ended"
            buffer += chunk
            end = 0
            for match in pattern.finditer(buffer):
                ids.append(int(match.group(1)))
                end = match.end()
            buffer = buffer[end:][-64:]  # what may be the start of a header cut in two
    return ids
