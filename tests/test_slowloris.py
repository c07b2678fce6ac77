"""Slow and greedy clients, against the server as ollamux runs it (``server.uvicorn_config``):
bounded storms on loopback, with the figures printed (served requests, refused and timed
out connections, RSS). No timed assertions: what is asserted is that every legitimate
request was served, that the server ended the slow connections itself, that a huge head
or login body was refused before it was sent whole, and that memory stayed bounded.

The attacker connects from 127.0.0.2 (a loopback address that is not a trusted proxy);
legitimate clients from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.api import server
from tests.conftest import cluster_settings, rss_mb

M = "llama3.2"
ATTACKER = "127.0.0.2"


@asynccontextmanager
async def guarded(limits: dict[str, Any]) -> AsyncIterator[tuple[str, int, Any]]:
    """One simulated box and ollamux in front of it, served as the product serves it."""
    async with AsyncExitStack() as stack:
        box = await stack.enter_async_context(SimBox(SimConfig(name="a", preloaded=[M])))
        app = create_app(cluster_settings([box], limits=limits, max_concurrent_connections=64))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = server.uvicorn_config(app, lambda: app.state.services.settings.limits)
        config.lifespan = "on"
        srv = uvicorn.Server(config)
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        while not srv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}", port, config
        finally:
            srv.should_exit = True
            await task
            sock.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))


async def slow_client(
    port: int, trickle: bytes, tally: dict[str, int], stop: asyncio.Event
) -> None:
    """Opens connections and trickles ``trickle`` a byte at a time, again and again."""
    while not stop.is_set():
        try:
            reader, writer = await _connect(port)
        except OSError:
            tally["connect_failed"] += 1
            await asyncio.sleep(0.1)
            continue
        tally["opened"] += 1
        try:
            for i in range(len(trickle)):
                if stop.is_set() or reader.at_eof():
                    break
                writer.write(trickle[i : i + 1])
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(200), 0.2)
                    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
                    tally[f"server_closed_{status.decode() or 'silently'}"] += 1
                    break
            else:
                tally["finished_trickling"] += 1
        except (ConnectionError, OSError):
            tally["server_closed_reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.1)  # and tries again: a bounded storm, not a busy loop


@pytest.mark.soak
async def test_a_slowloris_storm_does_not_starve_legitimate_clients() -> None:
    limits = {
        "max_connections": 40,  # the server's cap on open connections is twice this
        "max_connections_per_client": 16,
        "head_timeout": 1.0,
        "body_timeout": 1.5,
    }
    head = b"GET /api/version HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    body = (
        b"POST /router/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n" + b'{"key": "' + b"k" * 480
    )
    tally: Counter[str] = Counter()
    async with guarded(limits) as (url, port, _config):
        rss0 = rss_mb()
        stop = asyncio.Event()
        storm = [
            asyncio.create_task(slow_client(port, head if i % 2 else body, tally, stop))
            for i in range(120)  # three times what the server would hold at once
        ]
        await asyncio.sleep(0.5)
        served = failed = 0
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for round_ in range(20):
                answers = await asyncio.gather(
                    *(
                        http.post(
                            "/api/generate",
                            json={
                                "model": M,
                                "prompt": f"p{round_}.{i}",
                                "stream": False,
                                "options": {"num_predict": 2},
                            },
                        )
                        for i in range(4)
                    ),
                    http.get("/api/version"),
                    return_exceptions=True,
                )
                for a in answers:
                    ok = isinstance(a, httpx.Response) and a.status_code == 200
                    served, failed = served + ok, failed + (not ok)
                await asyncio.sleep(0.15)
        stop.set()
        await asyncio.gather(*storm)
        rss1 = rss_mb()
    print(
        f"\nslowloris: legitimate served {served}, failed {failed}; storm {dict(tally)}; "
        f"RSS {rss0:.0f} -> {rss1:.0f} MB"
    )
    assert failed == 0 and served == 100
    # The server ended slow connections itself (deadline or per-address cap), never the
    # storm running out of bytes to trickle.
    assert tally["finished_trickling"] == 0
    assert tally["server_closed_408"] > 0 and tally["server_closed_503"] > 0


async def test_requests_in_flight_are_capped_per_client_address() -> None:
    limits = {"max_requests_per_client": 3}
    async with (
        guarded(limits) as (url, _port, _config),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):

        def slow(who: str) -> Any:
            return http.post(
                "/api/generate",
                headers={"X-Forwarded-For": who},  # from loopback: a trusted proxy
                json={
                    "model": M,
                    "prompt": "x",
                    "stream": False,
                    "options": {"num_predict": 20},
                },
            )

        answers = await asyncio.gather(
            *(slow("203.0.113.9") for _ in range(5)), slow("203.0.113.10")
        )
    codes = sorted(a.status_code for a in answers[:5])
    print(
        f"\nper-client cap 3: one address sent 5 at once: {codes}; "
        f"another: {answers[5].status_code}"
    )
    assert codes == [200, 200, 200, 503, 503]
    assert any("limits.max_requests_per_client" in a.text for a in answers[:5])
    assert answers[5].status_code == 200


async def _send_until_answered(
    port: int, head: bytes, chunk: bytes, total: int
) -> tuple[int, bytes]:
    """Send ``head`` then ``chunk`` until ``total`` bytes or the server answers/closes;
    return the bytes sent and the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    answer = b""
    try:
        writer.write(head)
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(4096), 0.001)
                if answer or reader.at_eof():
                    break
        if not answer:
            answer = await asyncio.wait_for(reader.read(4096), 5)
    except (ConnectionError, OSError):
        with contextlib.suppress(Exception):
            answer = answer or await asyncio.wait_for(reader.read(4096), 1)
    finally:
        writer.close()
    return sent, answer


async def test_huge_heads_and_login_bodies_are_refused_while_reading() -> None:
    async with guarded({}) as (_url, port, _config):
        rss0 = rss_mb()
        total = 40 * 2**20
        heads = await asyncio.gather(
            *(
                _send_until_answered(
                    port,
                    b"GET /api/tags HTTP/1.1\r\nHost: x\r\n",
                    b"X-Big: " + b"h" * 65_000 + b"\r\n",
                    total,
                )
                for _ in range(4)
            )
        )
        login_head = (
            b"POST /router/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"%x\r\n%s\r\n" % (65_000, b"k" * 65_000)
        logins = await asyncio.gather(
            *(_send_until_answered(port, login_head, piece, total) for _ in range(8))
        )
        rss1 = rss_mb()
    print(
        f"\nhuge heads: sent {[s // 1024 for s, _ in heads]} KiB before the answer "
        f"{[a.split(b' ', 2)[1:2] for _, a in heads]}; login bodies: sent "
        f"{[s // 1024 for s, _ in logins]} KiB, "
        f"answers {[a.split(b' ', 2)[1:2] for _, a in logins]}; "
        f"RSS {rss0:.0f} -> {rss1:.0f} MB"
    )
    for sent, answer in heads:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"error"' in answer  # the API's shape, not the server's plain text
        assert sent < total
    for sent, answer in logins:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < total
    assert rss1 - rss0 < 60
