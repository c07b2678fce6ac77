"""Placing requests when several replicas share one fleet (``shared_state``).

Ranking stays local and pure (``rank`` over the fleet-wide usage the store mirrors); the
reservation is one round trip to the shared store, which re-checks the ranked boxes'
true counts and takes the first with room, or refuses when requests waiting anywhere
come first. A request that finds no room takes a ticket in its model's fleet-wide
waiting room and waits here; whenever a slot frees on any replica every replica looks at
its waiters again, in the local order (priority, fair share, arrival), and the store
holds each to its place in the global one. The store is reached only through
``SharedSlots``: the core imports no Redis.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from ollamux.routing.accounting import Counts
from ollamux.routing.choose import Candidate, NoRoute, Request, rank
from ollamux.routing.clock import Clock
from ollamux.routing.dispatch import (
    NORMAL,
    Dispatcher,
    FleetSource,
    QueueStatus,
    Wait,
    no_route_error,
)
from ollamux.routing.ledger import Lease
from ollamux.routing.settings import Settings
from ollamux.routing.state import Usage
from ollamux.routing.traffic import Traffic
from ollamux.routing.waiting import Ticket, Waiter

log = logging.getLogger("ollamux.routing")
UNCAPPED = 1 << 30  # queue.enabled off: the least saturated box takes it anyway


class SharedSlots(Protocol):
    """Slots kept where every replica takes them (Redis): reserving is a round trip."""

    @property
    def usage(self) -> Usage:
        """Slots in use fleet-wide, as last heard (ranking reads it; reserving re-checks)."""
        ...

    async def reserve(
        self,
        candidates: Sequence[tuple[str, str, int]],
        place: Any = None,
        *,
        priority: int = 1,
        service: float = 0.0,
        user: str = "anonymous",
        cost: int = 0,
    ) -> tuple[int, Any] | None:
        """The first (box, model, slots) with room: its index and a handle, or None.
        The store tells every other replica of the placement (``user``, ``cost``)."""
        ...

    def release(self, held: Any) -> None: ...

    async def enqueue(self, model: str, priority: int, service: float) -> Any:
        """A ticket in the model's fleet-wide waiting room."""
        ...

    def leave(self, place: Any) -> None: ...

    def order(self, place: Any) -> Any:
        """A sort key: the tickets' fleet-wide order."""
        ...

    async def rescore(self, updates: Sequence[tuple[Any, int, float]]) -> None:
        """Tickets (place, priority, service now) take their place by the service now."""
        ...

    def waiting(self) -> dict[str, int]:
        """Requests waiting fleet-wide, per model."""
        ...

    def broadcast(self, event: dict[str, Any]) -> None:
        """Tell every other replica (best effort); they hear it in ``heard``."""
        ...


@dataclass(slots=True)
class _Mirror:
    """The ``SlotStore`` the base dispatcher ranks on: the shared store's mirror. Slots
    are taken and given through ``SharedSlots``, never here."""

    shared: SharedSlots

    @property
    def usage(self) -> Usage:
        return self.shared.usage

    def take(self, box: str, model: str) -> None:
        raise AssertionError("shared slots are reserved through SharedSlots.reserve")

    def give(self, box: str, model: str) -> None:
        raise AssertionError("shared slots are released through SharedSlots.release")


class SharedTraffic(Traffic):
    """Traffic every replica hears of: fair-share service, box rate windows (rpm, tpm)
    and 429 cool-downs. What this replica sees it also broadcasts; what another replica
    broadcasts is applied here as if seen here, at the time it is heard."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        on_free: Callable[[], None],
        broadcast: Callable[[dict[str, Any]], None],
    ) -> None:
        super().__init__(settings, clock, on_free)
        self._broadcast = broadcast

    # placed: the store's reservation itself tells the other replicas (one round trip).

    def finished(
        self,
        box: str,
        model: str,
        user: str,
        ttft: float | None,
        counts: Counts,
        now: float,
        sharing: int = 1,
    ) -> None:
        super().finished(box, model, user, ttft, counts, now, sharing)
        tokens = {"p": counts.prompt_tokens, "o": counts.output_tokens}
        self._broadcast({"e": "done", "b": box, "m": model, "u": user, **tokens})

    def refused(self, box: str, seconds: float, now: float) -> None:
        super().refused(box, seconds, now)
        self._broadcast({"e": "429", "b": box, "s": seconds})

    def heard(self, event: dict[str, Any], now: float) -> None:
        kind, box = event.get("e"), str(event.get("b"))
        if kind == "placed":
            super().placed(box, Ticket(str(event["u"]), cost=int(event["c"])), now)
        elif kind == "done":
            counts = Counts(prompt_tokens=int(event["p"]), output_tokens=int(event["o"]))
            super().finished(box, str(event["m"]), str(event["u"]), None, counts, now)
        elif kind == "429":
            super().refused(box, float(event["s"]), now)


class SharedDispatcher(Dispatcher):
    def __init__(
        self,
        settings: Settings,
        shared: SharedSlots,
        prober: FleetSource,
        rng: random.Random,
        clock: Clock | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(settings, _Mirror(shared), prober, rng, clock, on_change)
        self._shared = shared
        self.traffic = SharedTraffic(settings, self._clock, self.drain, shared.broadcast)
        self._places: dict[Waiter, Any] = {}
        self._draining: asyncio.Task[None] | None = None
        self._again = False

    def remember(self, conversation: str, box: str) -> None:
        """The conversation's box, for every replica (its next turn may reach another)."""
        super().remember(conversation, box)
        if self._settings.conversation_affinity:
            ttl = self._settings.affinity.ttl
            self._shared.broadcast({"e": "aff", "k": conversation, "b": box, "t": ttl})

    def heard(self, event: dict[str, Any]) -> None:
        """Another replica's broadcast."""
        now = self._clock.now()
        if event.get("e") == "aff":
            if self._settings.conversation_affinity:
                self.affinity.put(str(event["k"]), str(event["b"]), now)
            return
        assert isinstance(self.traffic, SharedTraffic)
        self.traffic.heard(event, now)

    async def acquire(self, req: Request, display_name: str, ticket: Ticket = NORMAL) -> Lease:
        placed = await self._place_shared(req, ticket)
        if placed is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            placed = await self._place_shared(req, ticket)
        if isinstance(placed, Lease):
            return placed
        if isinstance(placed, NoRoute):
            raise no_route_error(placed, display_name, self._prober.fleet, req.model)
        return await self._wait(req, display_name, ticket, placed)

    async def _place_shared(self, req: Request, ticket: Ticket) -> Lease | NoRoute | Wait:
        ranked = rank(self.fleet, self._shared.usage, req, self._rng.random, self._signals())
        decision = self._decide(req, ranked)
        if not isinstance(decision, Candidate):
            return decision
        service = self._service(ticket)
        got = await self._shared.reserve(
            self._candidates(req, ranked),
            priority=ticket.priority,
            service=service,
            user=ticket.user,
            cost=ticket.cost,
        )
        if got is None:
            return Wait(None)  # the counts were stale, or others wait first
        return self._lease(got, req, ranked, ticket, None)

    def _candidates(self, req: Request, ranked: list[Candidate]) -> list[tuple[str, str, int]]:
        cap = self._settings.queue.enabled
        return [(c.box.name, req.model, c.box.slots if cap else UNCAPPED) for c in ranked]

    def _service(self, ticket: Ticket) -> float:
        if not self._settings.fairness.enabled:
            return 0.0
        return self.traffic.fair.service(ticket.user, self._clock.now())

    def _lease(
        self,
        got: tuple[int, Any],
        req: Request,
        ranked: list[Candidate],
        ticket: Ticket,
        waited: float | None,
    ) -> Lease:
        index, held = got
        lease = Lease(ranked[index].box.name, req.model, partial(self._give_back, held))
        lease.sharing = max(1, self._shared.usage.get((lease.box, req.model), 1))
        self._placed(req, lease, ranked, ticket, waited)
        return lease

    def _give_back(self, held: Any, lease: Lease) -> None:
        # Every replica's waiters (ours too) hear of the freed slot from the store.
        self._shared.release(held)

    async def _enter(self, waiter: Waiter) -> None:
        ticket = waiter.ticket
        place = await self._shared.enqueue(waiter.req.model, ticket.priority, self._service(ticket))
        self._places[waiter] = place
        self.drain()  # a slot may have freed while the ticket was taken

    def _left(self, waiter: Waiter) -> None:
        place = self._places.pop(waiter, None)
        if place is not None:
            self._shared.leave(place)

    def drain(self) -> None:
        """Look at the waiters again (one pass at a time; a call during a pass asks for
        another, since reserving takes round trips)."""
        if not self.room.size:
            return
        if self._draining is not None and not self._draining.done():
            self._again = True
            return
        self._draining = asyncio.get_running_loop().create_task(self._drain_passes())

    async def _drain_passes(self) -> None:
        while True:
            self._again = False
            try:
                await self._drain_once()
            except Exception:  # a pass must never die silently with waiters left
                log.exception("placing waiting requests failed; trying again on next event")
            if not self._again:
                return

    async def _drain_once(self) -> None:
        now = self._clock.now()
        for queue in self.room.in_order():
            # The fleet-wide order the tickets took (priority, service, arrival): the
            # store refuses a waiter while others wait ahead of it, so look in that order.
            ticketed = [(w, p) for w in queue if (p := self._places.get(w)) is not None]
            if self._settings.fairness.enabled:
                # Fair share as it is now: users served since their tickets were taken
                # move back (every replica does this for its own tickets).
                now_service = [(p, w.ticket.priority, self._service(w.ticket)) for w, p in ticketed]
                await self._shared.rescore(now_service)
            ticketed.sort(key=lambda pair: self._shared.order(pair[1]))
            for waiter, place in ticketed:
                if waiter.future.done():
                    continue
                pin = waiter.pin if waiter.pin and now < waiter.pin_until else None
                ranked = rank(
                    self.fleet,
                    self._shared.usage,
                    waiter.req,
                    self._rng.random,
                    self._signals(),
                )
                if pin is not None:
                    ranked = [c for c in ranked if c.box.name == pin]
                if not ranked:
                    if pin is not None:
                        continue
                    break
                ticket = waiter.ticket
                candidates = self._candidates(waiter.req, ranked)
                got = await self._shared.reserve(
                    candidates, place, user=ticket.user, cost=ticket.cost
                )
                if got is None:
                    if pin is not None:
                        continue  # later waiters of this model may take other boxes
                    break  # the same model's later waiters would not fit either
                self._places.pop(waiter, None)  # the store took the ticket with the slot
                lease = self._lease(got, waiter.req, ranked, waiter.ticket, now - waiter.enqueued)
                if waiter.future.done():
                    lease.release()  # it timed out or left during the round trip
                    continue
                self.room.remove(waiter)
                waiter.future.set_result(lease)
                now = self._clock.now()
        if self.room.size:
            self.traffic.rearm(now)

    def queue_status(self) -> QueueStatus:
        """The waiting room fleet-wide (``waiting``, ``by_model``); the rest is this
        replica's."""
        status = super().queue_status()
        fleet = self._shared.waiting()
        mine = status["by_model"]
        by_model = {m: max(n, mine.get(m, 0)) for m, n in fleet.items()}
        for model, n in mine.items():
            by_model.setdefault(model, n)
        status["by_model"] = by_model
        status["waiting"] = sum(by_model.values())
        return status
