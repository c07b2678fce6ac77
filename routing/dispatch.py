"""From a model name to a reserved slot.

``acquire`` runs ``rank()`` under the ledger's lock and reserves the best box with a free
slot. When no box has one, the request waits in the waiting room (unless the room is
switched off: then the least saturated box takes it, as the card's last step says) and
``drain`` places waiting requests whenever a slot frees or the fleet changes. A
conversation whose box is busy may wait a short, bounded time for that box (affinity);
an unknown model triggers one coalesced refresh of model lists before the 404.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from typing import Any

from backends.errors import ModelNotFound, NoCapacity
from backends.prober import Prober
from backends.settings import Settings
from backends.state import Usage
from routing.affinity import AffinityTable
from routing.choose import Candidate, NoRoute, Request, Tier, choose, no_route, rank
from routing.ledger import Lease, Ledger
from routing.waiting import PRIORITIES, Waiter, WaitingRoom


@dataclass(frozen=True, slots=True)
class Wait:
    pin: str | None  # the conversation's box, worth a short wait


class Dispatcher:
    def __init__(self, settings: Settings, ledger: Ledger, prober: Prober, rng: random.Random):
        self._settings = settings
        self._ledger = ledger
        self._prober = prober
        self._rng = rng
        self.room = WaitingRoom(settings.queue.max_waiting)
        self.affinity = AffinityTable(settings.affinity.ttl, settings.affinity.max_entries)
        ledger.on_release = self.drain

    def request(
        self,
        model: str,
        *,
        conversation: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> Request:
        affinity = None
        if conversation is not None and self._settings.conversation_affinity:
            affinity = self.affinity.get(conversation, _now())
        return Request(
            model,
            affinity=affinity,
            priority_routing=self._settings.priority_routing,
            kinds=kinds,
            load_guard=self._settings.affinity.load_guard,
        )

    def remember(self, conversation: str, box: str) -> None:
        if self._settings.conversation_affinity:
            self.affinity.put(conversation, box, _now())

    def pick(self, req: Request) -> Candidate | NoRoute:
        """The box that would serve ``req`` now, without reserving a slot."""
        return choose(self._prober.fleet, self._ledger.usage, req, self._rng.random)

    async def resolve(self, req: Request, display_name: str) -> Candidate:
        """Like ``acquire`` for requests that take no slot (``/api/show``)."""
        picked = self.pick(req)
        if picked is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            picked = self.pick(req)
        if isinstance(picked, Candidate):
            return picked
        raise no_route_error(picked, display_name)

    async def acquire(self, req: Request, display_name: str, priority: str = "normal") -> Lease:
        """Reserve a slot on the best box for ``req``, waiting for one if need be."""
        result = await self._ledger.lease(lambda usage: self._decide(req, usage))
        if result is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            result = await self._ledger.lease(lambda usage: self._decide(req, usage))
        if isinstance(result, Lease):
            return result
        if isinstance(result, NoRoute):
            raise no_route_error(result, display_name)
        assert isinstance(result, Wait)
        return await self._wait(req, display_name, PRIORITIES[priority], result.pin)

    def _decide(self, req: Request, usage: Usage) -> tuple[str, str] | NoRoute | Wait:
        ranked = rank(self._prober.fleet, usage, req, self._rng.random)
        if not ranked:
            return no_route(self._prober.fleet, req)
        best = ranked[0]
        queueing = self._settings.queue.enabled
        pin = self._pin(req, ranked) if queueing else None
        if pin is None and (best.tier is not Tier.SATURATED or not queueing):
            return (best.box.name, req.model)
        return Wait(pin)

    def _pin(self, req: Request, ranked: list[Candidate]) -> str | None:
        """The conversation's box, if it has the model loaded but no free slot and is not
        much busier than the best alternative: then a short wait for it beats a cold
        prompt cache elsewhere."""
        if req.affinity is None or ranked[0].box.name == req.affinity:
            return None
        mine = next((c for c in ranked if c.box.name == req.affinity), None)
        if mine is None or not mine.loaded or mine.tier is not Tier.SATURATED:
            return None
        return mine.box.name if mine.load - ranked[0].load <= req.load_guard else None

    async def _wait(self, req: Request, display_name: str, priority: int, pin: str | None) -> Lease:
        if self.room.full:
            raise NoCapacity(
                f'too many requests waiting; no free slot for model "{display_name}"',
                retry_after=5,
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiter = Waiter(req, priority, now, loop.create_future())
        if pin is not None:
            waiter.pin, waiter.pin_until = pin, now + self._settings.affinity.max_wait
        deadline = now + self._settings.queue.timeout
        self.room.add(waiter)
        self._ledger.changed()
        try:
            while True:
                until = min(deadline, waiter.pin_until) if waiter.pin else deadline
                try:
                    async with asyncio.timeout_at(until):
                        lease: Lease = await asyncio.shield(waiter.future)
                        return lease
                except TimeoutError:
                    if waiter.future.done():
                        return waiter.future.result()  # type: ignore[no-any-return]
                    if loop.time() >= deadline:
                        raise NoCapacity(
                            f'no free slot for model "{display_name}" within '
                            f"{self._settings.queue.timeout:g} s",
                            retry_after=5,
                        ) from None
                    waiter.pin = None  # the conversation's box stayed busy: any box will do
                    self.drain()
        finally:
            self._abandon(waiter)

    def _abandon(self, waiter: Waiter) -> None:
        self.room.remove(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and _leaving():
            future.result().release()  # placed at the very moment its client left
        self._ledger.changed()

    def drain(self) -> None:
        """Place waiting requests on boxes that have a free slot now; called whenever a
        slot frees or the fleet changes. Synchronous, so no other reservation can
        interleave: it is atomic like a reservation under the ledger's lock."""
        if not self.room.size:
            return
        now = asyncio.get_running_loop().time()
        for queue in self.room.in_order():
            for waiter in queue:
                if waiter.future.done():
                    self.room.remove(waiter)
                    continue
                pin = waiter.pin if waiter.pin and now < waiter.pin_until else None
                box = self._free_box(waiter.req, pin)
                if box is None:
                    if pin is not None:
                        continue  # later waiters of this model may take other boxes
                    break  # the same model's later waiters would not fit either
                self.room.remove(waiter)
                waiter.future.set_result(self._ledger.reserve(box, waiter.req.model))

    def _free_box(self, req: Request, pin: str | None) -> str | None:
        ranked = rank(self._prober.fleet, self._ledger.usage, req, self._rng.random)
        if pin is not None:
            ranked = [c for c in ranked if c.box.name == pin]
        if ranked and ranked[0].tier is not Tier.SATURATED:
            return ranked[0].box.name
        return None

    def queue_status(self) -> dict[str, Any]:
        oldest = self.room.oldest()
        now = asyncio.get_running_loop().time() if oldest is not None else 0.0
        return {
            "waiting": self.room.size,
            "oldest_wait": round(now - oldest, 3) if oldest is not None else 0.0,
            "by_model": self.room.by_model(),
            "max_waiting": self.room.max_waiting,
            "enabled": self._settings.queue.enabled,
        }

    def excluding(self, req: Request, failed: frozenset[str]) -> Request:
        return replace(req, exclude=req.exclude | failed)


def no_route_error(reason: NoRoute, model: str) -> ModelNotFound | NoCapacity:
    if reason is NoRoute.UNKNOWN_MODEL:
        return ModelNotFound(f'model "{model}" not found, try pulling it first')
    return NoCapacity(f'no healthy box can serve model "{model}" right now', retry_after=5)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _leaving() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
