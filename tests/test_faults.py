"""Faults, with simulated boxes misbehaving on purpose (``SimBox.faults``): every client
gets a complete answer or a clear error, no slot leaks, and each box's health in
/router/status follows what the box does and comes back when the box does.

Time-outs are small (first byte and idle 0.5 s, probes every 0.2 s, breaker backoff
0.2 s) so each fault shows, and heals, in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import Cluster, serve_app

M = "llama3.2"
FAST = {
    "timeouts": {"first_byte": 0.5, "idle": 0.5},
    "failover": {"breaker_backoff": 0.2, "breaker_max_backoff": 0.4},
    "max_concurrent_connections": 1,
}


def boxes(**fault_free: Any) -> tuple[SimConfig, SimConfig]:
    """Box a, which the tests make misbehave, has the model loaded (so it is chosen
    first); box b is healthy and takes over."""
    a = SimConfig(name="a", preloaded=[M], **fault_free)
    return a, SimConfig(name="b", **fault_free)


def gen(tokens: int = 6, **extra: Any) -> dict[str, Any]:
    return {"model": M, "prompt": "hi", "options": {"num_predict": tokens}, **extra}


def verdict(resp: httpx.Response) -> str:
    """``complete``, ``error`` (a clear error: an error status with an Ollama error body,
    or a stream whose last line is an error), or ``bad`` (anything else)."""
    if resp.status_code != 200:
        with contextlib.suppress(ValueError):
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
                return "error"
        return "bad"
    try:
        lines = [orjson.loads(line) for line in resp.content.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        return "bad"
    if not lines or any("error" in line for line in lines[:-1]):
        return "bad"
    if lines[-1].get("done") is True:
        return "complete"
    return "error" if isinstance(lines[-1].get("error"), str) else "bad"


async def endpoint(c: Cluster, name: str) -> dict[str, Any]:
    return next(ep for ep in (await c.status())["endpoints"] if ep["name"] == name)


async def until(c: Cluster, check: Callable[[dict[str, Any]], bool], within: float = 5.0) -> None:
    async def probe() -> bool:
        return check(await c.status())

    await c.wait_for(probe, within)


def box_is(name: str, **want: object) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        ep = next(ep for ep in status["endpoints"] if ep["name"] == name)
        return all(ep[key] == value for key, value in want.items())

    return check


def idle(status: dict[str, Any]) -> bool:
    in_use = sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])
    return in_use == 0 and status["queue"]["waiting"] == 0 and status["totals"]["in_flight"] == 0


async def burst(c: Cluster, n: int, body: dict[str, Any] | None = None) -> list[httpx.Response]:
    return list(
        await asyncio.gather(*(c.http.post("/api/generate", json=body or gen()) for _ in range(n)))
    )


async def both_serve(c: Cluster) -> None:
    """With one slot per box, two overlapping streams need both boxes: proof that a box
    is routable and serving again (and a success that closes its breaker)."""
    served: list[str] = []
    for _ in range(50):
        results = await burst(c, 2, gen(tokens=10))
        assert all(verdict(r) in ("complete", "error") for r in results), results
        if all(verdict(r) == "complete" for r in results):
            served = sorted(r.headers["x-ollamux-endpoint"] for r in results)
            if served == ["a", "b"]:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"both boxes did not serve again: {served}")


async def recovered(c: Cluster) -> None:
    await until(c, box_is("a", breaker="closed", health="healthy"))
    await until(c, idle)


async def serves_again(c: Cluster) -> None:
    """A lone box whose fault was switched off answers again (once its breaker lets a
    trial through); meanwhile every answer is a clear error."""
    for _ in range(100):
        resp = await c.http.post("/api/generate", json=gen(stream=False))
        if resp.status_code == 200:
            break
        assert verdict(resp) == "error", resp.text
        await asyncio.sleep(0.05)
    assert resp.status_code == 200 and resp.json()["done"] is True
    await recovered(c)


SLOW = {"tokens_per_s": 100.0}  # 10 tokens: 0.1 s, so two requests overlap


async def test_killed_mid_stream_ends_with_an_error_line_and_heals(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        c.box("a").faults.kill_after_chunks = 2
        results = await burst(c, 6)
        kinds = Counter(verdict(r) for r in results)
        assert set(kinds) <= {"complete", "error"} and kinds["error"] >= 1, kinds
        for r in results:
            if verdict(r) == "error":  # the break after the first byte is not retried
                assert r.headers["x-ollamux-endpoint"] == "a"
                assert "box a" in orjson.loads(r.content.splitlines()[-1])["error"]
                assert len(r.content.splitlines()) == 3
        await until(c, idle)
        assert (await endpoint(c, "a"))["health"] == "healthy"  # it still answers probes
        c.box("a").faults.kill_after_chunks = None
        await both_serve(c)
        await recovered(c)
        await c.wait_for(lambda: _true(c.box("a").stats.active == 0))


async def test_a_broken_stream_counts_once_towards_the_breaker(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=[M]), **FAST) as c:
        c.box("a").faults.kill_after_chunks = 2
        for _ in range(2):  # breaker_failures is 3: two failures leave it closed
            resp = await c.http.post("/api/generate", json=gen())
            assert verdict(resp) == "error"
        await until(c, idle)
        assert (await endpoint(c, "a"))["breaker"] == "closed"


async def test_hanging_before_the_first_byte_fails_over_then_heals(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        c.box("a").faults.hang_before_first_byte = True
        results = await burst(c, 4)
        assert [verdict(r) for r in results] == ["complete"] * 4
        assert {r.headers["x-ollamux-endpoint"] for r in results} == {"b"}
        await until(c, box_is("a", health="healthy"))  # probes still answer
        c.box("a").faults.hang_before_first_byte = False
        await both_serve(c)
        await recovered(c)


async def test_a_lone_hanging_box_answers_504_then_503_while_its_breaker_is_open(
    cluster: Any,
) -> None:
    async with cluster(SimConfig(name="a"), **FAST) as c:
        c.box("a").faults.hang_before_first_byte = True
        resp = await c.http.post("/api/generate", json=gen(stream=False))
        assert resp.status_code == 504
        assert "did not answer in time" in resp.json()["error"]
        for _ in range(2):  # breaker_failures is 3
            v1 = await c.http.post("/v1/completions", json={"model": M, "prompt": "hi"})
            assert v1.status_code == 504
            assert set(v1.json()["error"]) == {"message", "type", "code"}
        assert (await endpoint(c, "a"))["breaker"] == "open"
        refused = await c.http.post("/api/generate", json=gen(stream=False))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "circuit breaker open" in refused.json()["error"]
        await until(c, idle)
        await c.wait_for(lambda: _true(c.box("a").stats.active == 0))  # it was told to stop
        c.box("a").faults.hang_before_first_byte = False
        await serves_again(c)


async def test_hanging_mid_stream_times_out_with_an_error_line(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        c.box("a").faults.hang_after_chunks = 2
        results = await burst(c, 4)
        kinds = Counter(verdict(r) for r in results)
        assert set(kinds) <= {"complete", "error"} and kinds["error"] >= 1, kinds
        quiet = [r for r in results if verdict(r) == "error"]
        assert all("went quiet" in r.content.splitlines()[-1].decode() for r in quiet)
        await until(c, idle)
        await c.wait_for(lambda: _true(c.box("a").stats.active == 0))
        c.box("a").faults.hang_after_chunks = None
        await both_serve(c)
        await recovered(c)


async def test_refused_connections_fail_over_and_health_follows(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        a = c.box("a")
        await a.stop()
        results = await burst(c, 4)
        assert [verdict(r) for r in results] == ["complete"] * 4
        assert {r.headers["x-ollamux-endpoint"] for r in results} == {"b"}
        await until(c, box_is("a", health="down"))
        assert (await endpoint(c, "a"))["error"]
        await a.start(port=a.port)
        await until(c, box_is("a", health="healthy"))
        await both_serve(c)
        await recovered(c)


async def test_busy_503_bursts_are_retried_on_another_box(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        for _ in range(3):
            c.box("a").faults.busy_503 = 3
            results = await burst(c, 6)
            assert [verdict(r) for r in results] == ["complete"] * 6
        await until(c, idle)
        c.box("a").faults.busy_503 = 0
        await both_serve(c)
        await recovered(c)


async def test_a_lone_busy_box_passes_its_503_through(cluster: Any) -> None:
    async with cluster(SimConfig(name="a"), **FAST) as c:
        c.box("a").faults.busy_503 = 2
        first = await c.http.post("/api/generate", json=gen(stream=False))
        assert first.status_code == 503 and "server busy" in first.json()["error"]
        assert first.headers["x-ollamux-endpoint"] == "a"
        await until(c, idle)
        await serves_again(c)  # the burst ends: the box serves again


async def test_flapping_box_loses_no_request(cluster: Any) -> None:
    async with cluster(*boxes(), **FAST) as c:
        a = c.box("a")
        stop = asyncio.Event()

        async def client() -> list[str]:
            seen = []
            while not stop.is_set():
                resp = await c.http.post("/api/generate", json=gen())
                seen.append(verdict(resp))
            return seen

        async def flap() -> None:
            for _ in range(4):
                await a.stop()
                await asyncio.sleep(0.15)
                await a.start(port=a.port)
                await asyncio.sleep(0.15)
            stop.set()

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await flap()
        seen = Counter(v for result in await asyncio.gather(*clients) for v in result)
        assert seen["complete"] > 0 and set(seen) == {"complete"}, seen
        await until(c, box_is("a", health="healthy"))
        c.box("a").config.tokens_per_s = c.box("b").config.tokens_per_s = 100.0
        await both_serve(c)
        await recovered(c)


async def test_ps_failing_degrades_health_while_inference_works(cluster: Any) -> None:
    async with cluster(*boxes(**SLOW), **FAST) as c:
        c.box("a").faults.ps_fail = True
        await until(c, box_is("a", health="degraded"))
        assert "/api/ps" in (await endpoint(c, "a"))["error"]
        await both_serve(c)  # a degraded box still serves
        running = (await c.http.get("/api/ps")).json()["models"]
        assert [m["name"] for m in running].count("llama3.2:latest") >= 1  # last good list
        c.box("a").faults.ps_fail = False
        await until(c, box_is("a", health="healthy", error=None))
        await until(c, idle)


async def _true(value: bool) -> bool:
    return value


# --- slow-reading clients ----------------------------------------------------------

LINE = orjson.dumps({"model": "big", "response": "x" * 65_000, "done": False}) + b"\n"
DONE = orjson.dumps({"model": "big", "response": "", "done": True}) + b"\n"


def _sysctl_max(name: str) -> int:
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[-1])


class BigBox:
    """An Ollama-like box whose streams are large: a slow reader must hold it back."""

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.written = 0
        self.active = 0

    def app(self) -> web.Application:
        model = {"name": "big:latest", "model": "big:latest"}

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"models": [model]})

        async def version(request: web.Request) -> web.Response:
            return web.json_response({"version": "0.12.6"})

        app = web.Application()
        app.add_routes(
            [
                web.get("/api/tags", models),
                web.get("/api/ps", models),
                web.get("/api/version", version),
                web.post("/api/generate", self.generate),
            ]
        )
        return app

    async def generate(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.active += 1
        try:
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:  # a small send buffer: what is not sent stays here
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            for _ in range(self.lines):
                await resp.write(LINE)  # waits while the proxy does not take more
                self.written += len(LINE)
            await resp.write(DONE)
            return resp
        finally:
            self.active -= 1


@contextlib.asynccontextmanager
async def big_cluster(box: BigBox) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    runner = web.AppRunner(box.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        settings = parse_settings(
            {"endpoints": [{"url": f"http://127.0.0.1:{port}", "name": "big"}], **FAST}
        )
        async with (
            serve_app(create_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            yield url, http
    finally:
        await runner.cleanup()


async def _raw_request(url: str, path: str, body: bytes) -> tuple[Any, Any]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # a client that holds back
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    return reader, writer


async def _steady(read: Callable[[], int], polls: int = 4) -> int:
    """Wait until ``read()`` stops changing (backpressure reached the box); return it."""
    last, same = -1, 0
    for _ in range(200):
        now = read()
        same = same + 1 if now == last else 0
        if same >= polls:
            return now
        last = now
        await asyncio.sleep(0.05)
    return read()


async def _in_use(http: httpx.AsyncClient) -> int:
    status = (await http.get("/router/status")).json()
    return sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])


async def test_a_slow_reader_holds_the_box_back_and_still_gets_everything() -> None:
    # Kernel socket buffers on the two hops may hold this much; the proxy itself a little.
    bound = _sysctl_max("tcp_rmem") + _sysctl_max("tcp_wmem") + 8 * 2**20
    box = BigBox(lines=(bound + 32 * 2**20) // len(LINE))
    async with big_cluster(box) as (url, http):
        reader, writer = await _raw_request(url, "/api/generate", b'{"model":"big"}')
        try:
            got = len(await reader.readuntil(b"\r\n\r\n"))
            ahead = await _steady(lambda: box.written)
            assert ahead < bound, f"the box sent {ahead} bytes to a client that read {got}"
            assert await _in_use(http) == 1
            await asyncio.sleep(0.6)  # quiet for longer than timeouts.idle: the box is not
            body = bytearray()
            while chunk := await reader.read(2**20):
                body += chunk
                if body.endswith(b"0\r\n\r\n"):
                    break
        finally:
            writer.close()
            await writer.wait_closed()
        lines = [line for line in bytes(body).split(b"\n") if line.startswith(b"{")]
        assert len(lines) == box.lines + 1, "the stream was cut short"
        assert orjson.loads(lines[-1])["done"] is True
        assert await _in_use(http) == 0


async def test_a_slow_reader_that_hangs_up_frees_its_slot_and_the_box() -> None:
    box = BigBox(lines=10_000)
    async with big_cluster(box) as (url, http):
        reader, writer = await _raw_request(url, "/api/generate", b'{"model":"big"}')
        await reader.readuntil(b"\r\n\r\n")
        await _steady(lambda: box.written)
        assert box.active == 1 and await _in_use(http) == 1
        writer.close()
        await writer.wait_closed()

        async def gone() -> bool:
            return box.active == 0 and await _in_use(http) == 0

        deadline = asyncio.get_running_loop().time() + 5
        while not await gone():
            assert asyncio.get_running_loop().time() < deadline, "slot or box still held"
            await asyncio.sleep(0.02)
        assert box.written < box.lines * len(LINE)


async def test_many_slow_readers_all_finish(cluster: Any) -> None:
    cfg = SimConfig(name="a", preloaded=[M], num_parallel=8, default_tokens=30)
    async with cluster(cfg, **{**FAST, "max_concurrent_connections": 8}) as c:

        async def slow(i: int) -> str:
            async with c.http.stream("POST", "/api/chat", json=_chat(i)) as resp:
                body = b""
                async for chunk in resp.aiter_raw():
                    body += chunk
                    await asyncio.sleep(0.01)
                return verdict(httpx.Response(resp.status_code, content=body))

        results = await asyncio.gather(*(slow(i) for i in range(24)))
        assert results == ["complete"] * 24
        await until(c, idle)


def _chat(i: int) -> dict[str, Any]:
    return {"model": M, "messages": [{"role": "user", "content": f"question {i}"}]}
