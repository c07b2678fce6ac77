"""Scheduling end to end: the waiting room, conversation affinity, priority, failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import orjson

from ollamux.backends.sim.ollama import SimConfig
from tests.conftest import Cluster

M = "llama3.2"


def gen(prompt: str = "x", tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": M, "prompt": prompt, **extra}
    if tokens is not None:
        body["options"] = {"num_predict": tokens}
    return body


async def hold(
    c: Cluster, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[str, asyncio.Task[bytes]]:
    """Start a streamed request; return its box once it is placed, and the task reading it."""
    placed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run() -> bytes:
        async with c.http.stream("POST", "/api/generate", json=body, headers=headers) as resp:
            placed.set_result(resp.headers.get("x-ollamux-endpoint", str(resp.status_code)))
            return await resp.aread()

    task = asyncio.create_task(run())
    return await asyncio.wait_for(placed, 5), task


async def waiting(c: Cluster) -> int:
    return int((await c.status())["queue"]["waiting"])


async def until(c: Cluster, n: int) -> None:
    async def check() -> bool:
        return await waiting(c) == n

    await c.wait_for(check)


async def test_late_binding_starts_on_whichever_box_frees_first(cluster: Any) -> None:
    slow = {"tokens_per_s": 100.0, "num_parallel": 1, "preloaded": [M]}
    async with cluster(
        SimConfig(name="a", **slow), SimConfig(name="b", **slow), max_concurrent_connections=1
    ) as c:
        first, long_task = await hold(c, gen(tokens=300))  # ~3 s
        second, short_task = await hold(c, gen(tokens=30))  # ~0.3 s
        assert {first, second} == {"a", "b"}
        short_box = second
        started = time.monotonic()
        box, queued = await hold(c, gen(tokens=2))
        waited = time.monotonic() - started
        assert box == short_box  # bound late, to the box that freed first
        assert waited < 2.0
        await asyncio.gather(long_task, short_task, queued)
        assert await c.in_use() == 0


async def test_queue_bounds_and_timeouts_answer_503(cluster: Any) -> None:
    cfg = SimConfig(name="a", tokens_per_s=50.0, num_parallel=1, preloaded=[M])
    async with cluster(
        cfg, max_concurrent_connections=1, queue={"max_waiting": 1, "timeout": 0.4}
    ) as c:
        _, busy = await hold(c, gen(tokens=100))  # ~2 s
        waiter = asyncio.create_task(c.http.post("/api/generate", json=gen(tokens=1, stream=False)))
        await until(c, 1)
        full = await c.http.post("/api/generate", json=gen(stream=False))
        assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
        assert "too many requests waiting" in full.json()["error"]
        timed_out = await waiter
        assert timed_out.status_code == 503 and "within 0.4 s" in timed_out.json()["error"]
        assert "retry-after" in timed_out.headers
        assert await waiting(c) == 0
        busy.cancel()


async def test_a_client_that_leaves_leaves_the_queue(cluster: Any) -> None:
    cfg = SimConfig(name="a", tokens_per_s=50.0, num_parallel=1, preloaded=[M])
    async with cluster(cfg, max_concurrent_connections=1) as c:
        _, busy = await hold(c, gen(tokens=100))
        async with httpx.AsyncClient(base_url=c.url) as other:
            leaving = asyncio.create_task(other.post("/api/generate", json=gen(stream=False)))
            await until(c, 1)
            leaving.cancel()
        await until(c, 0)
        busy.cancel()
        await c.wait_for(lambda: _in_use_is(c, 0))
        assert c.box("a").stats.requests == 1  # the one that left never reached the box


async def _in_use_is(c: Cluster, n: int) -> bool:
    return await c.in_use() == n


async def test_with_the_queue_off_the_least_saturated_box_takes_it(cluster: Any) -> None:
    cfg = SimConfig(name="a", tokens_per_s=50.0, num_parallel=4, preloaded=[M])
    async with cluster(cfg, max_concurrent_connections=1, queue={"enabled": False}) as c:
        _, busy = await hold(c, gen(tokens=50))
        box, second = await hold(c, gen(tokens=1))
        assert box == "a" and await waiting(c) == 0
        await asyncio.gather(busy, second)


async def test_priority_classes_order_the_waiting_room(cluster: Any) -> None:
    cfg = SimConfig(name="a", tokens_per_s=100.0, num_parallel=1, preloaded=[M])
    async with cluster(cfg, max_concurrent_connections=1) as c:
        _, busy = await hold(c, gen(tokens=100))  # ~1 s
        order: list[str] = []

        async def send(name: str, priority: str) -> None:
            resp = await c.http.post(
                "/api/generate",
                json=gen(name, tokens=1, stream=False),
                headers={"X-Priority": priority},
            )
            assert resp.status_code == 200
            order.append(name)

        tasks = []
        for n, (name, priority) in enumerate(
            [("normal", "normal"), ("low", "low"), ("high", "high")]
        ):
            tasks.append(asyncio.create_task(send(name, priority)))
            await until(c, n + 1)
        await asyncio.gather(busy, *tasks)
        assert order == ["high", "normal", "low"]
        bad = await c.http.post("/api/generate", json=gen(), headers={"X-Priority": "urgent"})
        assert bad.status_code == 400 and "X-Priority" in bad.json()["error"]


def chat(turns: int, session: str = "") -> dict[str, Any]:
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} {session}"})
        if i < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return {"model": M, "messages": messages, "stream": False, "options": {"num_predict": 4}}


async def test_a_conversation_stays_on_its_box(cluster: Any) -> None:
    boxes = [SimConfig(name=n, preloaded=[M], num_parallel=2) for n in ("a", "b", "c")]
    async with cluster(*boxes) as c:
        served = []
        for turns in range(1, 7):
            resp = await c.http.post("/api/chat", json=chat(turns, "conv-1"))
            assert resp.status_code == 200
            served.append(resp.headers["x-ollamux-endpoint"])
        assert len(set(served)) == 1, served
        home = c.box(served[0]).stats
        assert home.cache_hits >= 5  # every later turn found its prefix cached


async def test_session_header_is_the_key_when_present(cluster: Any) -> None:
    boxes = [SimConfig(name=n, preloaded=[M]) for n in ("a", "b", "c")]
    async with cluster(*boxes) as c:
        served = {
            (
                await c.http.post(
                    "/api/generate",
                    json=gen(f"unrelated {i}", 2, stream=False),
                    headers={"X-Session-Id": "s-1"},
                )
            ).headers["x-ollamux-endpoint"]
            for i in range(6)
        }
        assert len(served) == 1


async def test_a_conversation_moves_when_its_box_is_far_busier_or_down(cluster: Any) -> None:
    cfg = {"preloaded": [M], "num_parallel": 2, "tokens_per_s": 50.0}
    session = {"X-Session-Id": "conv"}
    async with cluster(SimConfig(name="a", **cfg), SimConfig(name="b", **cfg)) as c:
        first = await c.http.post("/api/chat", json=chat(1), headers=session)
        home = first.headers["x-ollamux-endpoint"]
        other = "b" if home == "a" else "a"
        # The same conversation's parallel requests stick to its box until it is full.
        held = [await hold(c, gen(tokens=100), session) for _ in range(2)]
        assert [box for box, _ in held] == [home, home]
        started = time.monotonic()
        moved = await c.http.post("/api/chat", json=chat(2), headers=session)
        assert moved.headers["x-ollamux-endpoint"] == other
        assert time.monotonic() - started < 0.5  # far busier: moved at once, no wait
        for _, task in held:
            task.cancel()
        await c.box(other).stop()  # the conversation's new box goes down
        back = await c.http.post("/api/chat", json=chat(3), headers=session)
        assert back.status_code == 200 and back.headers["x-ollamux-endpoint"] == home


async def test_a_busy_conversation_box_is_worth_a_short_wait(cluster: Any) -> None:
    cfg = {"preloaded": [M], "num_parallel": 2, "tokens_per_s": 100.0}
    session = {"X-Session-Id": "conv"}
    async with cluster(
        SimConfig(name="a", **cfg), SimConfig(name="b", **cfg), affinity={"max_wait": 2.0}
    ) as c:
        first = await c.http.post("/api/chat", json=chat(1), headers=session)
        home = first.headers["x-ollamux-endpoint"]
        fillers = [await hold(c, gen(tokens=20), session) for _ in range(2)]  # ~0.2 s each
        assert [box for box, _ in fillers] == [home, home]
        elsewhere, long_task = await hold(c, gen(tokens=300), {"X-Session-Id": "other"})
        assert elsewhere != home  # the other box is now half busy
        started = time.monotonic()
        again = await c.http.post("/api/chat", json=chat(2), headers=session)
        assert again.headers["x-ollamux-endpoint"] == home  # waited for its cache
        assert time.monotonic() - started < 1.5
        long_task.cancel()
        await asyncio.gather(*(t for _, t in fillers))


async def test_a_model_loads_once_until_one_box_cannot_cover_the_demand(cluster: Any) -> None:
    cfg = {"models": [M], "num_parallel": 2, "load_time": 0.3, "tokens_per_s": 50.0}
    async with cluster(SimConfig(name="a", **cfg), SimConfig(name="b", **cfg)) as c:
        first = [await hold(c, gen(tokens=30)) for _ in range(2)]
        assert len({box for box, _ in first}) == 1  # the second joined the first's load
        third = await hold(c, gen(tokens=30))
        assert third[0] != first[0][0]  # demand beyond one box's slots: a second load
        await asyncio.gather(*(t for _, t in [*first, third]))
        loads = c.box("a").stats.loads + c.box("b").stats.loads
        assert loads == 2


async def test_a_new_model_loads_where_it_costs_least(cluster: Any) -> None:
    cfg = {"models": [M, "qwen2.5:7b"], "num_parallel": 2, "tokens_per_s": 50.0}
    async with cluster(
        SimConfig(name="a", preloaded=["qwen2.5:7b"], **cfg),
        SimConfig(name="b", preloaded=["qwen2.5:7b"], **cfg),
    ) as c:
        busy_box, busy = await hold(
            c, {"model": "qwen2.5:7b", "prompt": "x", "options": {"num_predict": 50}}
        )
        box, task = await hold(c, gen(tokens=1))
        assert box != busy_box  # the idle box loads it; the busy one keeps serving
        await asyncio.gather(busy, task)


async def test_after_a_load_the_fleet_shows_what_the_box_evicted_without_waiting(
    cluster: Any,
) -> None:
    # Probes of /api/ps every 30 s; the box holds one model. A request for qwen makes it
    # evict llama3.2: the status says so as soon as the answer ends, not 30 s later.
    cfg = {"models": [M, "qwen2.5:7b"], "max_loaded": 1, "load_time": 0.05}
    probe = {"ps": 30.0, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5}
    async with cluster(SimConfig(name="a", preloaded=[M], **cfg), probe=probe) as c:

        async def loaded() -> list[str]:
            models = (await c.status())["endpoints"][0]["models"]
            return [m["name"] for m in models if m["loaded"]]

        await c.wait_for(lambda: _is(loaded(), ["llama3.2:latest"]))
        resp = await c.http.post(
            "/api/generate", json={"model": "qwen2.5:7b", "prompt": "x", "stream": False}
        )
        assert resp.status_code == 200 and resp.json()["load_duration"] > 0
        await c.wait_for(lambda: _is(loaded(), ["qwen2.5:7b"]), within=2.0)


async def _is(value: Awaitable[list[str]], expected: list[str]) -> bool:
    return await value == expected


async def test_failover_before_the_first_byte(cluster: Any) -> None:
    async with cluster(
        SimConfig(name="a", preloaded=[M]),
        SimConfig(name="b", preloaded=[M]),
        priority_routing=True,  # a first whenever it can serve: the failures land there
        timeouts={"first_byte": 0.5},
        failover={"breaker_failures": 3, "breaker_backoff": 0.5},
    ) as c:
        a = c.box("a")
        for n, fault in enumerate(("busy_503", "hang_before_first_byte", "error_status")):
            setattr(a.faults, fault, {"busy_503": 1, "error_status": 500}.get(fault, True))
            resp = await c.http.post("/api/generate", json=gen(f"p{n}", tokens=2, stream=False))
            assert resp.status_code == 200, (fault, resp.text)
            assert resp.headers["x-ollamux-endpoint"] == "b", fault
            a.faults.hang_before_first_byte = False
            a.faults.error_status = None
        # Three failures in a row opened a's breaker: traffic avoids it without trying.
        assert await _breaker(c, "a", "open")
        served = await c.http.post("/api/generate", json=gen("p3", tokens=1, stream=False))
        assert served.headers["x-ollamux-endpoint"] == "b"
        assert a.stats.requests == 3
        # After the backoff the next request is the trial; it succeeds and closes it.
        await c.wait_for(lambda: _breaker(c, "a", "half_open"))
        trial = await c.http.post("/api/generate", json=gen("p4", tokens=1, stream=False))
        assert trial.headers["x-ollamux-endpoint"] == "a"
        assert await _breaker(c, "a", "closed")
        assert await c.in_use() == 0


async def _breaker(c: Cluster, box: str, *states: str) -> bool:
    status = await c.status()
    return any(ep["name"] == box and ep["breaker"] in states for ep in status["endpoints"])


async def test_a_lone_failing_box_passes_its_error_through(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        c.box("a").faults.busy_503 = 1
        resp = await c.http.post("/api/generate", json=gen(stream=False))
        assert resp.status_code == 503 and "server busy" in resp.json()["error"]
        assert await c.in_use() == 0


async def test_a_mid_stream_break_is_never_retried(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=[M]), SimConfig(name="b")) as c:
        c.box("a").faults.kill_after_chunks = 2
        resp = await c.http.post("/api/generate", json=gen(tokens=10))
        lines = [orjson.loads(x) for x in resp.content.splitlines()]
        assert resp.headers["x-ollamux-endpoint"] == "a"
        assert len(lines) == 3 and "error" in lines[-1]
        assert c.box("b").stats.requests == 0
        assert await c.in_use() == 0
