"""Slots shared by replicas through one Redis: exact counts, leases that expire.

Ranking stays local and pure (``routing.choose.rank`` over ``usage``, this replica's mirror
of the fleet-wide counts); ``reserve`` hands the ranked candidates to one Lua script that
re-checks their true counts and takes the first with room, in one round trip. A lease is
a member of its (box, model) sorted set scored by its expiry; a heartbeat task pushes the
expiry of every live lease forward every ``ttl / 5`` seconds, so a long stream is never
cut for being long and a replica that dies frees its slots within ``ttl``.

Redis trouble is not an outage: on a connection error or a timeout the store serves on
local accounting (its share of each box's slots: slots // live replicas, at least 1),
says so once in the log and in ``degraded``, and when Redis answers again registers its
live leases again, releases what ended meanwhile and re-reads the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ollamux.backends.shared_state import kept, scripts

log = logging.getLogger("ollamux.shared_state")
TROUBLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
SEP = "\t"  # between box and model in a slot set's name (neither contains a tab)

Key = tuple[str, str]
Candidate = tuple[str, str, int]  # box, model, slots


@dataclass(eq=False, slots=True)
class Held:
    """One slot this replica holds."""

    id: str
    box: str
    model: str


@dataclass(eq=False, slots=True)
class Place:
    """A waiting request's ticket in its model's fleet-wide waiting room."""

    room: str  # the model's waiting-room key
    member: str  # arrival, then replica and number: equal scores go in arrival order
    score: float


def score(priority: int, service: float) -> float:
    """The waiting room's order: priority class first, then the user's recent service."""
    return priority * 1e12 + min(max(0, int(service)), int(1e12) - 1)


def _noop() -> None:
    pass


class RedisSlots:
    def __init__(
        self,
        url: str,
        replica: str,
        address: str = "",
        *,
        ttl: float = 15.0,
        prefix: str = "ollamux",
        timeout: float = 0.5,
        sweep_every: float = 1.0,
        on_change: Callable[[], None] = _noop,
        on_freed: Callable[[], None] = _noop,
        on_event: Callable[[dict[str, Any]], None] = lambda _event: None,
    ) -> None:
        self.url = url
        self.replica = replica
        self.address = address
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._prefix = prefix
        self._timeout = timeout
        self._sweep_every = sweep_every
        self.on_change = on_change  # counts changed: the status board
        self.on_freed = on_freed  # a slot freed somewhere: place waiters
        self.on_event = on_event  # another replica's broadcast (affinity, fair share, ...)
        self.recall_limit = 10_000  # conversations learnt at start (affinity.max_entries)
        self.channel = f"{prefix}:events"
        self._index = f"{prefix}:slotsets"
        self._registry = f"{prefix}:replicas"
        self._tickets = f"{prefix}:tickets"
        self._rooms = f"{prefix}:rooms"
        self._ids = itertools.count()
        self._token = secrets.token_hex(4)
        # Who sent an event: unique even if two replicas were given the same name.
        self._self = f"{replica}:{self._token}"
        self._live: dict[str, Held] = {}
        self._own: dict[Key, int] = {}  # slots this replica holds
        self._fleet: dict[Key, int] = {}  # fleet-wide, as last heard from Redis
        self._own_view, self._fleet_view = (
            MappingProxyType(self._own),
            MappingProxyType(self._fleet),
        )
        self._unreleased: dict[str, Held] = {}  # ended while Redis was away
        self._places: dict[str, Place] = {}  # this replica's waiting tickets
        self._outbox: list[dict[str, Any]] = []  # broadcasts of this turn of the loop
        self._waiting: dict[str, int] = {}  # fleet-wide, per model
        self._replicas: list[dict[str, Any]] = []
        self._live_replicas = 1
        self.degraded = False
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- views ------------------------------------------------------------------------

    @property
    def usage(self) -> Mapping[Key, int]:
        """Slots in use per (box, model): fleet-wide, or this replica's own when degraded
        (then ``reserve`` holds it to its share)."""
        return self._own_view if self.degraded else self._fleet_view

    @property
    def own(self) -> Mapping[Key, int]:
        return self._own_view

    def in_flight(self) -> int:
        return len(self._live)

    def waiting(self) -> dict[str, int]:
        """Requests waiting fleet-wide, per model (as of the last sweep); nothing known
        while Redis is away (the dispatcher then counts this replica's own)."""
        return {} if self.degraded else dict(self._waiting)

    def replicas(self) -> list[dict[str, Any]]:
        if not self._replicas:
            return [self._me(None)]
        return list(self._replicas)

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "healthy": not self.degraded, "replica": self.replica}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            health_check_interval=0,
        )
        self._reserve = self._client.register_script(scripts.RESERVE)
        self._release = self._client.register_script(scripts.RELEASE)
        self._heartbeat = self._client.register_script(scripts.HEARTBEAT)
        self._sweep = self._client.register_script(scripts.SWEEP)
        self._enqueue = self._client.register_script(scripts.ENQUEUE)
        self._dequeue = self._client.register_script(scripts.DEQUEUE)
        try:
            await self._beat()
            await self.sweep()
            await self._recall()
        except TROUBLE as exc:
            self._trouble(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.ttl / 5, self._beat)),
            loop.create_task(self._every(self._sweep_every, self.sweep)),
            loop.create_task(self._listen()),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None and not self.degraded:
            # Whatever still holds a slot or waits at this point will not be served by
            # this process: give it back now rather than after the lease's expiry.
            for held in list(self._live.values()):
                self.release(held)
            for place in list(self._places.values()):
                self.leave(place)
        if self._pending:
            await asyncio.wait(self._pending, timeout=self._timeout * 2)
        if self._client is not None and not self.degraded:
            with contextlib.suppress(*TROUBLE):
                await self._client.hdel(self._registry, self.replica)
        if self._client is not None:
            await self._client.aclose()

    # -- slots ------------------------------------------------------------------------

    async def reserve(
        self,
        candidates: Sequence[Candidate],
        place: Place | None = None,
        *,
        priority: int = 1,
        service: float = 0.0,
        user: str = "anonymous",
        cost: int = 0,
    ) -> tuple[int, Held] | None:
        """Take a slot on the first candidate with room (its index and the lease), or
        None when every one is full or requests that wait anywhere come first: ``place``
        is this request's ticket if it waits, else ``priority`` and ``service`` say where
        it would stand. Candidates come ranked, best first, all of one model. Every
        replica hears of the placement (``user`` and its ``cost``: fair share)."""
        if not candidates:
            return None
        lease_id = f"{self.replica}:{self._token}:{next(self._ids)}"
        if not self.degraded:
            model = candidates[0][1]
            keys = [self._set(box, m) for box, m, _ in candidates]
            keys += [self._index, self._room(model), self._tickets]
            rank = place.score if place is not None else score(priority, service)
            args: list[Any] = [lease_id, self._ttl_ms, place.member if place else "", rank]
            args += [slots for _, _, slots in candidates]
            args += [self.channel, user, cost, self._self, *(box for box, _, _ in candidates)]
            try:
                picked, counts, _ahead = await self._reserve(keys=keys, args=args)
            except TROUBLE as exc:
                self._trouble(exc)
            else:
                for (box, m, _), n in zip(candidates, counts, strict=True):
                    self._set_count((box, m), int(n))
                if not picked:
                    self.on_change()
                    return None
                if place is not None:
                    self._places.pop(place.member, None)
                box, model, _ = candidates[int(picked) - 1]
                return int(picked) - 1, self._hold(lease_id, box, model)
        for i, (box, model, slots) in enumerate(candidates):
            if self._own.get((box, model), 0) < self.share(slots):
                if place is not None:
                    self.leave(place)
                return i, self._hold(lease_id, box, model)
        return None

    async def enqueue(self, model: str, priority: int, service: float) -> Place:
        """A ticket in the model's fleet-wide waiting room (kept alive while it waits)."""
        place = Place(
            self._room(model),
            f"{time.time_ns() // 1000:017d}:{self.replica}:{self._token}:{next(self._ids)}",
            score(priority, service),
        )
        self._places[place.member] = place
        if not self.degraded:
            try:
                await self._enqueue(
                    keys=[place.room, self._tickets, self._rooms],
                    args=[place.member, place.score, self._ttl_ms],
                )
            except TROUBLE as exc:
                self._trouble(exc)
        return place

    async def rescore(self, updates: Sequence[tuple[Place, int, float]]) -> None:
        """Move waiting tickets to their place by their user's service now (it grows as
        the user's other requests are served): one pipeline for those that moved."""
        moved = []
        for place, priority, service in updates:
            new = score(priority, service)
            if new != place.score:
                place.score = new
                moved.append(place)
        if not moved or self.degraded or self._client is None:
            return
        pipe = self._client.pipeline(transaction=False)
        for place in moved:
            pipe.zadd(place.room, {place.member: place.score}, xx=True)
        try:
            await pipe.execute()
        except TROUBLE as exc:
            self._trouble(exc)

    @staticmethod
    def order(place: Place) -> tuple[float, str]:
        """The waiting room's order, as Redis keeps it (score, then name)."""
        return (place.score, place.member)

    def leave(self, place: Place) -> None:
        """The ticket's request stops waiting without a slot (idempotent)."""
        if self._places.pop(place.member, None) is None or self.degraded:
            return
        assert self._client is not None
        self._spawn(
            self._dequeue(keys=[place.room, self._tickets], args=[place.member, self.channel])
        )

    def share(self, slots: int) -> int:
        """This replica's slots of a box while Redis is away."""
        return max(1, slots // max(1, self._live_replicas))

    def release(self, held: Held) -> None:
        """Give the slot back (idempotent); every replica's waiters hear of it."""
        if self._live.pop(held.id, None) is None:
            return
        key = (held.box, held.model)
        self._count(self._own, key, -1)
        if self.degraded:
            self._unreleased[held.id] = held
            self.on_change()
            self.on_freed()
            return
        self._count(self._fleet, key, -1)  # what the script will say; it corrects us
        self.on_change()
        self._spawn(self._release_in_redis(held))

    async def _release_in_redis(self, held: Held) -> None:
        try:
            n = await self._release(
                keys=[self._set(held.box, held.model)],
                args=[held.id, self.channel, held.box, held.model, self._self],
            )
        except TROUBLE as exc:
            self._unreleased[held.id] = held
            self._trouble(exc)
        else:
            self._set_count((held.box, held.model), int(n))
        self.on_freed()

    def _hold(self, lease_id: str, box: str, model: str) -> Held:
        held = Held(lease_id, box, model)
        self._live[lease_id] = held
        self._count(self._own, (box, model), 1)
        self.on_change()
        return held

    # -- the fleet-wide view ----------------------------------------------------------

    async def sweep(self, force: bool = False) -> None:
        """Drop expired leases everywhere and re-read every count."""
        if self.degraded and not force:
            return
        flat, rooms = await self._sweep(
            keys=[self._index, self._tickets, self._rooms], args=[self.channel]
        )
        fresh: dict[Key, int] = {}
        skip = len(self._set("", "")) - len(SEP)
        for raw, n in zip(flat[::2], flat[1::2], strict=True):
            box, _, model = raw.decode()[skip:].partition(SEP)
            if int(n):
                fresh[(box, model)] = int(n)
        skip = len(self._room(""))
        waiting = {
            raw.decode()[skip:]: int(n) for raw, n in zip(rooms[::2], rooms[1::2], strict=True)
        }
        if waiting != self._waiting:
            self._waiting = waiting
            self.on_change()
        freed = any(fresh.get(k, 0) < n for k, n in self._fleet.items())
        if fresh != self._fleet:
            self._fleet.clear()
            self._fleet.update(fresh)
            self.on_change()
        if freed or self._places:
            self.on_freed()  # also a safety net for waiters: one more look a sweep

    async def _beat(self, force: bool = False) -> None:
        """Keep every live lease alive; record this replica; read the registry."""
        if self.degraded and not force:
            return
        live = list(self._live.values())
        places = [f"{p.room}\n{p.member}" for p in self._places.values()]
        keys = [self._index, self._registry, self._tickets]
        keys += [self._set(h.box, h.model) for h in live]
        record = orjson.dumps(
            {"address": self.address, "leases": len(live), "waiting": len(places)}
        )
        args: list[Any] = [self._ttl_ms, self.replica, record, len(places), *places]
        args += [h.id for h in live]
        now, flat = await self._heartbeat(keys=keys, args=args)
        self._read_registry(int(now), flat)

    def _read_registry(self, now: int, flat: list[bytes]) -> None:
        replicas, stale = [], []
        horizon = now - 3 * self._ttl_ms
        for name, value in zip(flat[::2], flat[1::2], strict=True):
            seen, _, record = value.decode().partition(" ")
            if int(seen) < horizon:
                stale.append(name)
                continue
            info = orjson.loads(record)
            age = round((now - int(seen)) / 1000, 1)
            replicas.append({"name": name.decode(), **info, "last_seen": age})
        replicas.sort(key=lambda r: r["name"])
        self._replicas = replicas
        alive = [r for r in replicas if r["last_seen"] * 1000 <= self._ttl_ms]
        self._live_replicas = max(1, len(alive))
        if stale and self._client is not None:
            self._spawn(self._client.hdel(self._registry, *stale))

    # -- events from other replicas ---------------------------------------------------

    def broadcast(self, event: dict[str, Any]) -> None:
        """Tell every other replica (affinity, fair share, cool-downs); best effort.
        Events of one turn of the event loop go out as one message."""
        if self.degraded or self._client is None:
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(event)

    def _flush(self) -> None:
        events, self._outbox = self._outbox, []
        if events and self._client is not None and not self.degraded:
            payload = orjson.dumps({"e": "batch", "r": self._self, "events": events})
            pipe = self._client.pipeline(transaction=False)
            pipe.publish(self.channel, payload)
            for event in events:
                kept.keep(pipe, self._prefix, event)
            self._spawn(pipe.execute())

    async def _recall(self) -> None:
        """What the fleet kept from before this replica started (affinity, cool-downs)."""
        assert self._client is not None
        for event in await kept.recall(self._client, self._prefix, self.recall_limit):
            self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        try:
            self.on_event(event)
        except Exception:  # one odd message must not stop the listener
            log.exception("shared state: could not apply %r", event)

    async def _listen(self) -> None:
        while not self._stopping:
            assert self._client is not None
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._heard(orjson.loads(message["data"]))
            except TROUBLE as exc:
                self._trouble(exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(*TROUBLE):
                    await pubsub.aclose()

    def _heard(self, event: dict[str, Any]) -> None:
        kind = event.get("e")
        mine = event.get("r") == self._self
        if kind == "free":
            if not mine:  # our own release already took the script's count
                self._set_count((event["b"], event["m"]), int(event["n"]))
                self.on_change()
            self.on_freed()
        elif kind == "sweep":
            self._spawn(self._quietly(self.sweep))
        elif kind == "moved":
            self.on_freed()
        elif not mine:
            for one in event["events"] if kind == "batch" else [event]:
                self._apply(one)

    # -- Redis trouble ----------------------------------------------------------------

    def _trouble(self, exc: BaseException) -> None:
        if self.degraded or self._stopping:
            return
        self.degraded = True
        log.warning(
            "shared state: Redis unreachable (%s); serving on local accounting "
            "(this replica's share of each box's slots) until it answers again",
            exc or type(exc).__name__,
        )
        self.on_change()
        self._tasks.append(asyncio.get_running_loop().create_task(self._recover()))

    async def _recover(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            assert self._client is not None
            try:
                await self._beat(force=True)  # live leases registered again
                for held in list(self._unreleased.values()):
                    await self._release(
                        keys=[self._set(held.box, held.model)],
                        args=[held.id, self.channel, held.box, held.model, self._self],
                    )
                    self._unreleased.pop(held.id, None)
                await self.sweep(force=True)
            except TROUBLE:
                continue
            self.degraded = False
            log.warning("shared state: Redis answers again; slots are shared once more")
            self.on_change()
            self.on_freed()
            return

    # -- helpers ----------------------------------------------------------------------

    def _set(self, box: str, model: str) -> str:
        return f"{self._prefix}:slots:{box}{SEP}{model}"

    def _room(self, model: str) -> str:
        return f"{self._prefix}:waiting:{model}"

    def _set_count(self, key: Key, n: int) -> None:
        if n > 0:
            self._fleet[key] = n
        else:
            self._fleet.pop(key, None)

    @staticmethod
    def _count(counts: dict[Key, int], key: Key, delta: int) -> None:
        n = counts.get(key, 0) + delta
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)

    def _me(self, last_seen: float | None) -> dict[str, Any]:
        return {
            "name": self.replica,
            "address": self.address,
            "leases": len(self._live),
            "waiting": len(self._places),
            "last_seen": last_seen,
        }

    async def _every(self, seconds: float, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._quietly(step)

    async def _quietly(self, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await step()
        except TROUBLE as exc:
            self._trouble(exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except TROUBLE as exc:
                self._trouble(exc)

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
