"""Several ollamux replicas, one Redis, the same simulated boxes: real sockets throughout.

Each replica is an independent ``create_app`` with the same config, served on its own
port; the simulated boxes count how many requests of a model they held at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import orjson
import pytest

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.affinity import conversation_key
from ollamux.routing.api.services import Services
from tests.conftest import cluster_settings, serve_app
from tests.shared.conftest import RedisServer

# Several apps, a real Redis and real sockets each: run by .ci/run, or with -m replicas.
pytestmark = pytest.mark.replicas

MODEL = "llama3.2:latest"


@dataclass
class Replica:
    url: str
    services: Services
    http: httpx.AsyncClient

    async def status(self) -> dict[str, Any]:
        resp = await self.http.get("/router/status")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result


@dataclass
class Fleet:
    boxes: list[SimBox]
    replicas: list[Replica]

    def held_at_once(self) -> dict[str, int]:
        return {b.config.name: b.stats.max_held_per_model.get(MODEL, 0) for b in self.boxes}


def box_config(name: str, **kw: Any) -> SimConfig:
    knobs: dict[str, Any] = {"num_parallel": 2, "tokens_per_s": 400, "default_tokens": 16}
    return SimConfig(name=name, preloaded=[MODEL], **{**knobs, **kw})


@asynccontextmanager
async def fleet(
    redis: RedisServer | None, replicas: int = 3, boxes: int = 2, **extra: Any
) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(SimBox(box_config(f"gpu-{i}"))) for i in range(boxes)
        ]
        shared = {"shared_state": {"redis": redis.url, "lease_ttl": 2}} if redis else {}
        running = []
        for i in range(replicas):
            settings = cluster_settings(sims, max_concurrent_connections=2, **shared, **extra)
            if redis is not None:
                settings = _named(settings, f"replica-{i}")
            app = create_app(settings)
            url = await stack.enter_async_context(serve_app(app))
            svc: Services = app.state.services
            if svc.shared is not None:
                svc.shared.address = url.removeprefix("http://")
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            running.append(Replica(url, svc, http))
        for replica in running:
            await until_healthy(replica, boxes)
        yield Fleet(sims, running)


def _named(settings: Any, name: str) -> Any:
    from dataclasses import replace

    return replace(settings, shared_state=replace(settings.shared_state, replica=name))


async def until_healthy(replica: Replica, boxes: int) -> None:
    for _ in range(250):
        status = await replica.status()
        if sum(ep["health"] == "healthy" for ep in status["endpoints"]) == boxes:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the boxes never became healthy")


async def chat(replica: Replica, user: str = "anonymous", **body: Any) -> list[dict[str, Any]]:
    doc = {"model": MODEL, "messages": [{"role": "user", "content": f"hi from {user}"}], **body}
    async with replica.http.stream(
        "POST", "/api/chat", json=doc, headers={"X-User-Id": user}
    ) as resp:
        assert resp.status_code == 200, await resp.aread()
        return [orjson.loads(line) async for line in resp.aiter_lines() if line]


async def forty_clients(f: Fleet) -> list[list[dict[str, Any]]]:
    return await asyncio.gather(
        *(chat(f.replicas[i % len(f.replicas)], user=f"u{i}") for i in range(40))
    )


async def test_three_replicas_never_send_a_box_more_than_its_slots(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server) as f:
        answers = await forty_clients(f)
        assert all(a[-1]["done"] for a in answers)
        held = f.held_at_once()
        assert max(held.values()) <= 2, held
        assert sum(b.stats.served_by_model[MODEL] for b in f.boxes) == 40
        # Every replica took part, and every slot came back.
        assert all(r.services.stats.lifetime_requests()[0] > 0 for r in f.replicas)
        for r in f.replicas:
            await wait_until(lambda r=r: _fleet_in_use_is(r, 0))


async def test_without_shared_state_the_replicas_oversubscribe() -> None:
    async with fleet(None) as f:
        answers = await forty_clients(f)
        assert all(a[-1]["done"] for a in answers)
        held = f.held_at_once()
        assert max(held.values()) > 2, held  # each replica counted only its own


async def fleet_in_use(replica: Replica) -> int:
    status = await replica.status()
    return sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])


async def wait_until(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_status_shows_the_fleet_and_its_replicas(redis_server: RedisServer) -> None:
    async with fleet(redis_server) as f:
        a, b, _c = f.replicas
        slow = [asyncio.create_task(chat(a, options={"num_predict": 400})) for _ in range(3)]
        await wait_until(lambda: _fleet_in_use_is(b, 3))
        status = await b.status()
        shared = {"backend": "redis", "healthy": True, "replica": "replica-1"}
        assert status["shared_state"] == shared
        await wait_until(lambda: _leases_listed(b, {"replica-0": 3}))
        names = [(r["name"], r["address"]) for r in (await b.status())["replicas"]]
        addresses = [r.url.removeprefix("http://") for r in f.replicas]
        assert names == [(f"replica-{i}", address) for i, address in enumerate(addresses)]
        metrics = (await b.http.get("/metrics")).text
        assert "ollamux_shared_state_healthy 1.0" in metrics
        assert 'ollamux_replica_leases{replica="replica-0"} 3.0' in metrics
        assert "ollamux_in_flight 3.0" in metrics  # fleet-wide, though b holds none
        health = (await b.http.get("/router/health")).json()
        assert health["status"] == "ok" and health["shared_state"]["healthy"] is True
        await asyncio.gather(*slow)


async def _fleet_in_use_is(replica: Replica, n: int) -> bool:
    return await fleet_in_use(replica) == n


async def _leases_listed(replica: Replica, expected: dict[str, int]) -> bool:
    status = await replica.status()
    leases = {r["name"]: r["leases"] for r in status["replicas"] if r["leases"]}
    return leases == expected


async def test_a_conversation_keeps_its_box_across_replicas(redis_server: RedisServer) -> None:
    async with fleet(redis_server) as f:
        for n in range(4):
            session = f"conversation-{n}"
            first, *others = f.replicas[n % 3 :] + f.replicas[: n % 3]
            box = await turn(first, session)
            for replica in others * 2:
                # The next turn may reach any replica once the first one has answered.
                await wait_until(partial(_knows, replica, session, box), within=3)
                assert await turn(replica, session) == box


async def turn(replica: Replica, session: str) -> str:
    doc = {"model": MODEL, "messages": [{"role": "user", "content": session}], "stream": False}
    resp = await replica.http.post("/api/chat", json=doc, headers={"X-Session-Id": session})
    assert resp.status_code == 200
    return resp.headers["x-ollamux-endpoint"]


async def _knows(replica: Replica, session: str, box: str) -> bool:
    """The replica has heard which box serves the conversation (the broadcast arrived)."""
    key = conversation_key(MODEL, {}, session)
    table = replica.services.dispatcher.affinity
    return table.get(key, asyncio.get_running_loop().time()) == box


async def test_a_flood_through_one_replica_does_not_starve_a_user_on_another(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server, replicas=2, boxes=1) as f:
        a, b = f.replicas
        for box in f.boxes:
            box.config.tokens_per_s = 40  # 24 tokens: 0.6 s a request, two at a time
        order: list[str] = []

        async def one(replica: Replica, user: str) -> None:
            await chat(replica, user=user, options={"num_predict": 24})
            order.append(user)

        flood = [asyncio.create_task(one(a, "batch")) for _ in range(14)]
        await wait_until(lambda: _waiting_is_at_least(b, 6))
        arrived = len(order)
        alice = [asyncio.create_task(one(b, "alice")) for _ in range(2)]
        await asyncio.gather(*alice, *flood)
        after = order[arrived:]
        # Alice's two requests overtake the flood's queued ones: at most the flood's
        # requests already holding the box's two slots finish before hers.
        last_alice = max(i for i, u in enumerate(after) if u == "alice")
        assert after[: last_alice + 1].count("batch") <= 2, after


async def _waiting_is_at_least(replica: Replica, n: int) -> bool:
    return int((await replica.status())["queue"]["waiting"]) >= n


async def test_errors_keep_their_shape_with_shared_state(redis_server: RedisServer) -> None:
    async with fleet(redis_server, replicas=1, boxes=1) as f:
        (a,) = f.replicas
        doc = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
        missing = await a.http.post("/api/chat", json=doc)
        assert missing.status_code == 404
        assert "no-such-model" in missing.json()["error"]
        await f.boxes[0].stop()
        await wait_until(lambda: _box_down(a))
        down = await a.http.post("/api/chat", json={**doc, "model": MODEL})
        assert down.status_code == 503 and down.headers["retry-after"]
        assert "error" in down.json()
        assert await _slots_in_use(a) == 0  # nothing leaked


async def _box_down(replica: Replica) -> bool:
    status = await replica.status()
    return all(ep["health"] == "down" for ep in status["endpoints"])


async def _slots_in_use(replica: Replica) -> int:
    status = await replica.status()
    return int(status["totals"]["in_flight"])


async def test_a_429_rests_the_box_for_every_replica_even_one_started_later(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server, replicas=2) as f:
        a, b = f.replicas
        box = await turn(a, "before-the-late-replica")
        f.boxes[0].faults.error_status = 429  # no Retry-After: routing.cooldown (30 s)
        before = f.boxes[0].stats.requests
        while f.boxes[0].stats.requests == before:
            await turn(a, f"probe-{f.boxes[1].stats.requests}")  # failover serves them
        await wait_until(lambda: _resting(b, "gpu-0"), within=3)
        late_settings = _named(
            cluster_settings(
                f.boxes,
                max_concurrent_connections=2,
                shared_state={"redis": redis_server.url, "lease_ttl": 2},
            ),
            "replica-late",
        )
        app = create_app(late_settings)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            late = Replica(url, app.state.services, http)
            await until_healthy(late, 2)
            assert await _resting(late, "gpu-0")  # learnt from Redis, not from an event
            assert await _knows(late, "before-the-late-replica", box)


async def _resting(replica: Replica, box: str) -> bool:
    resp = await replica.http.get("/router/explain", params={"model": MODEL})
    entry = next(e for e in resp.json()["boxes"] if e["box"] == box)
    return bool(entry.get("excluded") == "resting after a 429")


async def test_a_stream_longer_than_its_lease_keeps_its_slot(redis_server: RedisServer) -> None:
    async with fleet(redis_server, replicas=2, boxes=1) as f:
        a, b = f.replicas
        f.boxes[0].config.tokens_per_s = 200
        long = asyncio.create_task(chat(a, options={"num_predict": 1200}))  # 6 s: 3 leases
        await wait_until(lambda: _fleet_in_use_is(b, 1))
        seen = []
        while not long.done():
            seen.append(await fleet_in_use(b))  # the other replica counts it all along
            await asyncio.sleep(0.25)
        answer = await long
        assert answer[-1]["done"] and answer[-1]["eval_count"] == 1200
        assert len(seen) > 16 and set(seen[:-2]) == {1}, seen


async def test_fair_share_moves_a_waiting_flood_back_as_it_is_served(
    redis_server: RedisServer,
) -> None:
    """Tickets taken while their user had no service yet move back once that user's
    first requests are served: a later user on another replica goes before the rest."""
    async with fleet(redis_server, replicas=2, boxes=1) as f:
        a, b = f.replicas
        f.boxes[0].config.tokens_per_s = 40
        order: list[str] = []

        async def one(replica: Replica, user: str, tokens: int) -> None:
            await chat(replica, user=user, options={"num_predict": tokens})
            order.append(user)

        filler = [asyncio.create_task(one(b, "filler", 120)) for _ in range(2)]  # 3 s each
        await wait_until(lambda: _fleet_in_use_is(a, 2))
        flood = [asyncio.create_task(one(a, "batch", 24)) for _ in range(10)]
        await wait_until(lambda: _waiting_is_at_least(b, 10))
        alice = asyncio.create_task(one(b, "alice", 24))  # later, and as unserved as batch was
        await asyncio.gather(alice, *flood, *filler)
        served = [u for u in order if u != "filler"]
        # Once batch's first two are placed, its waiting tickets are behind alice's.
        assert served.index("alice") <= 3, served
