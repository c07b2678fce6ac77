"""The Redis slot store against a real redis-server: two stores are two replicas."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from ollamux.backends.shared_state import RedisSlots
from tests.shared.conftest import RedisServer

BOX = ("gpu-a", "llama3.2:latest", 2)


@asynccontextmanager
async def stores(server: RedisServer, n: int, **kw: Any) -> AsyncIterator[list[RedisSlots]]:
    async with AsyncExitStack() as stack:
        out = []
        for i in range(n):
            store = RedisSlots(server.url, f"replica-{i}", f"127.0.0.1:{9000 + i}", **kw)
            await store.start()
            stack.push_async_callback(store.stop)
            out.append(store)
        yield out


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def redis_count(server: RedisServer, box: str, model: str) -> int:
    client = aioredis.Redis.from_url(server.url)
    try:
        now = float((await client.time())[0]) * 1000
        key = f"ollamux:slots:{box}\t{model}"
        return int(await client.zcount(key, f"({now:.0f}", "+inf"))
    finally:
        await client.aclose()


def kill(store: RedisSlots) -> None:
    """What kill -9 does to a replica, as Redis sees it: no release, no heartbeat."""
    store._stopping = True
    for task in store._tasks:
        task.cancel()


async def test_two_replicas_never_exceed_the_slots(redis_server: RedisServer) -> None:
    async with stores(redis_server, 2) as (a, b):
        held_now, peak, served = 0, 0, 0
        rng = random.Random(7)

        async def client(store: RedisSlots) -> None:
            nonlocal held_now, peak, served
            for _ in range(15):
                while (got := await store.reserve([BOX])) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.002)  # polls on purpose: contention, not waiting
                held_now += 1
                peak = max(peak, held_now)
                await asyncio.sleep(rng.random() * 0.004)
                held_now -= 1
                store.release(got[1])
                served += 1

        await asyncio.gather(*(client(s) for s in [a, b] * 6))
        assert served == 12 * 15
        assert peak == 2
        await until(lambda: not a.usage and not b.usage)
        assert await redis_count(redis_server, "gpu-a", "llama3.2:latest") == 0


async def test_the_first_ranked_candidate_with_room_is_taken(redis_server: RedisServer) -> None:
    full, other = ("gpu-a", "m:latest", 1), ("gpu-b", "m:latest", 1)
    async with stores(redis_server, 2) as (a, b):
        first = await a.reserve([full, other])
        assert first is not None and first[0] == 0 and first[1].box == "gpu-a"
        second = await b.reserve([full, other])
        assert second is not None and second[0] == 1 and second[1].box == "gpu-b"
        assert await a.reserve([full, other]) is None
        # The script's answer carries the true counts: both replicas see the fleet full.
        assert dict(b.usage) == {("gpu-a", "m:latest"): 1, ("gpu-b", "m:latest"): 1}
        await until(lambda: dict(a.usage) == dict(b.usage))


async def test_release_is_idempotent_and_wakes_other_replicas(redis_server: RedisServer) -> None:
    async with stores(redis_server, 2) as (a, b):
        woken = asyncio.Event()
        b.on_freed = woken.set
        got = await a.reserve([BOX])
        assert got is not None
        await until(lambda: b.usage.get(BOX[:2]) == 1)
        a.release(got[1])
        a.release(got[1])
        await asyncio.wait_for(woken.wait(), 2)
        await until(lambda: BOX[:2] not in b.usage)
        assert await redis_count(redis_server, *BOX[:2]) == 0
        assert a.in_flight() == 0


async def test_a_dead_replicas_slots_expire(redis_server: RedisServer) -> None:
    one = ("gpu-a", "m:latest", 1)
    async with stores(redis_server, 2, ttl=1.0, sweep_every=0.2) as (a, b):
        assert await a.reserve([one]) is not None
        kill(a)
        woken = asyncio.Event()
        b.on_freed = woken.set
        assert await b.reserve([one]) is None
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(woken.wait(), 3)  # the sweep found the lease expired
        got = await b.reserve([one])
        assert got is not None
        assert asyncio.get_running_loop().time() - started < 2.5


async def test_keepalive_holds_a_long_lease(redis_server: RedisServer) -> None:
    one = ("gpu-a", "m:latest", 1)
    async with stores(redis_server, 2, ttl=0.6, sweep_every=0.1) as (a, b):
        got = await a.reserve([one])
        assert got is not None
        for _ in range(12):  # 2.4 s: four times the lease's expiry
            await asyncio.sleep(0.2)
            assert await b.reserve([one]) is None
        a.release(got[1])
        await until(lambda: one[:2] not in b.usage)
        assert await b.reserve([one]) is not None


async def test_registry_lists_replicas_and_their_leases(redis_server: RedisServer) -> None:
    async with stores(redis_server, 2, ttl=0.5) as (a, b):
        await a.reserve([BOX])
        await until(lambda: [r["leases"] for r in b.replicas()] == [1, 0])
        names = [(r["name"], r["address"]) for r in b.replicas()]
        assert names == [("replica-0", "127.0.0.1:9000"), ("replica-1", "127.0.0.1:9001")]
        assert all(r["last_seen"] < 1.0 for r in b.replicas())


async def test_redis_down_falls_back_to_a_share_and_converges(redis_server: RedisServer) -> None:
    four = ("gpu-a", "m:latest", 4)
    async with stores(redis_server, 2, ttl=1.0, timeout=0.2) as (a, b):
        await until(lambda: a._live_replicas == 2)
        early = await a.reserve([four])
        assert early is not None
        redis_server.stop()
        # Degraded: this replica keeps serving, on its share (4 slots // 2 replicas).
        held = [await a.reserve([four]) for _ in range(3)]
        assert a.degraded
        assert held[0] is not None and held[1] is None and held[2] is None
        assert a.status() == {"backend": "redis", "healthy": False, "replica": "replica-0"}
        a.release(early[1])  # ends while Redis is away
        assert await a.reserve([four]) is not None  # its share frees locally
        redis_server.start()  # empty: the restart lost every lease
        await until(lambda: not a.degraded, within=6)
        # Its live leases are registered again; the one that ended is not counted.
        assert await redis_count(redis_server, *four[:2]) == 2
        await until(lambda: not b.degraded, within=6)
        assert (await b.reserve([four])) is not None
        assert await redis_count(redis_server, *four[:2]) == 3


ONE = ("gpu-a", "m:latest", 1)


async def test_a_waiting_ticket_anywhere_goes_before_a_newcomer(redis_server: RedisServer) -> None:
    async with stores(redis_server, 3) as (a, b, c):
        held = await c.reserve([ONE])
        assert held is not None
        place = await a.enqueue("m:latest", priority=1, service=0)
        c.release(held[1])
        await until(lambda: ONE[:2] not in b.usage)
        # Same priority, same service, later: the ticket on replica a comes first.
        assert await b.reserve([ONE]) is None
        got = await a.reserve([ONE], place)
        assert got is not None and got[1].box == "gpu-a"
        a.release(got[1])
        await until(lambda: not a._pending)  # the release reached Redis
        assert await b.reserve([ONE]) is not None  # the room is empty again


async def test_priority_then_fair_share_order_the_fleet_room(redis_server: RedisServer) -> None:
    two = ("gpu-a", "m:latest", 2)
    async with stores(redis_server, 2) as (a, b):
        first, second = await a.reserve([two]), await a.reserve([two])
        assert first is not None and second is not None
        flood = [await a.enqueue("m:latest", priority=1, service=5000) for _ in range(5)]
        await b.sweep()
        assert b.waiting() == {"m:latest": 5}
        a.release(first[1])
        await until(lambda: b.usage.get(two[:2]) == 1)
        # A user served little lately goes before the flood's tickets, wherever they wait.
        quiet = await b.reserve([two], priority=1, service=10)
        assert quiet is not None
        a.release(second[1])
        await until(lambda: b.usage.get(two[:2]) == 1)
        # A high-priority request goes before every normal one.
        assert await b.reserve([two], priority=0, service=1e9) is not None
        assert await a.reserve([two], flood[0]) is None  # full again
        for place in flood:
            a.leave(place)
        await until(lambda: not a._pending)
        await b.sweep()
        assert b.waiting() == {}


async def test_a_dead_replicas_tickets_expire(redis_server: RedisServer) -> None:
    async with stores(redis_server, 2, ttl=1.0, sweep_every=0.2) as (a, b):
        await a.enqueue("m:latest", priority=1, service=0)
        kill(a)
        assert await b.reserve([ONE]) is None  # a ticket waits ahead
        await b.sweep()
        assert b.waiting() == {"m:latest": 1}
        await until(lambda: b.waiting() == {}, within=3)
        assert await b.reserve([ONE]) is not None


async def test_a_replica_that_stops_gives_its_slots_back_at_once(redis_server: RedisServer) -> None:
    async with stores(redis_server, 1, ttl=60) as (b,):
        a = RedisSlots(redis_server.url, "leaving", ttl=60)
        await a.start()
        assert await a.reserve([ONE]) is not None
        await a.enqueue("m:latest", priority=1, service=0)
        await a.stop()  # a graceful stop, not a crash: no 60 s wait for the expiry
        assert await redis_count(redis_server, *ONE[:2]) == 0
        assert await b.reserve([ONE]) is not None
