"""From a model name to a reserved slot.

``acquire`` runs ``rank()`` under the ledger's lock and reserves the best box with a free
slot. When no box has one, the request waits in the waiting room (unless the room is
switched off: then the least saturated box takes it, as the card's last step says) and
``drain`` places waiting requests whenever a slot frees, the fleet changes or a box's
rate budget frees; within a priority class the user served least lately goes first (fair
share), and no user may hold more than their share of the room. A conversation whose box
is busy may wait a short, bounded time for that box (affinity); an unknown model
triggers one coalesced refresh of model lists before the 404. Every reservation carries
its reason (``routing.explain``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypedDict

from ollamux.routing.affinity import AffinityTable
from ollamux.routing.choose import (
    Candidate,
    NoRoute,
    Request,
    Tier,
    choose,
    no_route,
    rank,
    unavailable_reason,
    unseen_boxes,
)
from ollamux.routing.clock import Clock, LoopClock
from ollamux.routing.errors import ModelNotFound, NoCapacity, TooManyRequests
from ollamux.routing.explain import explain, route_reason
from ollamux.routing.ledger import Lease, SlotStore
from ollamux.routing.policies import Signals
from ollamux.routing.residency import Residency
from ollamux.routing.settings import Settings
from ollamux.routing.state import Fleet
from ollamux.routing.traffic import Traffic
from ollamux.routing.waiting import Ticket, Waiter, WaitingRoom

log = logging.getLogger("ollamux.routing")
NORMAL = Ticket()


class UserStatus(TypedDict):
    user: str
    service: float  # weighted tokens served lately (fair share)
    waiting: int


class QueueStatus(TypedDict):
    """The waiting room in the status snapshot (``queue``)."""

    waiting: int
    oldest_wait: float
    by_model: dict[str, int]
    max_waiting: int
    enabled: bool
    users: list[UserStatus]


class FleetSource(Protocol):
    """What the dispatcher needs of whatever keeps the fleet's state (the prober)."""

    @property
    def fleet(self) -> Fleet: ...

    async def refresh_models(self) -> None:
        """Look at every box's model list again now (coalesced)."""


@dataclass(frozen=True, slots=True)
class Wait:
    pin: str | None  # the conversation's box, worth a short wait
    predicted: float | None = None  # the best box's estimated time to first token


class Dispatcher:
    """Places requests on boxes: reserves slots in ``slots``, hands them out as leases,
    and places waiting requests whenever a lease is released. Time comes from ``clock``;
    ``on_change`` hears the waiting room change (the status board)."""

    def __init__(
        self,
        settings: Settings,
        slots: SlotStore,
        prober: FleetSource,
        rng: random.Random,
        clock: Clock | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._slots = slots
        self._prober = prober
        self._rng = rng
        self._clock: Clock = clock or LoopClock()
        self._on_change = on_change
        self.room = WaitingRoom(settings.queue.max_waiting)
        self.affinity = AffinityTable(settings.affinity.ttl, settings.affinity.max_entries)
        self.traffic = Traffic(settings, self._clock, on_free=self.drain)
        self.residency = Residency()

    @property
    def fleet(self) -> Fleet:
        """The fleet as routing sees it: the last probe's, with the loads placed since."""
        return self.residency.view(self._prober.fleet, self._clock.now())

    def request(
        self,
        model: str,
        *,
        conversation: str | None = None,
        kinds: frozenset[str] | None = None,
        prompt_tokens: int = 0,
        looking: bool = False,
    ) -> Request:
        """``looking``: only to see what would be chosen (``/router/explain``), so the
        conversation's turn is not noted (nor the pause before it learned)."""
        affinity, cached = None, 0
        if conversation is not None and self._settings.conversation_affinity:
            now = self._clock.now()
            affinity = self.affinity.get(conversation, now)
            conversations = self.traffic.costs.conversations
            if looking:
                cached = conversations.view.holds(affinity, model, conversation)
            else:
                cached = conversations.asked(conversation, model, prompt_tokens, affinity, now)
        else:
            conversation = None
        return Request(
            model,
            affinity=affinity,
            priority_routing=self._settings.priority_routing,
            kinds=kinds,
            load_guard=self._settings.affinity.load_guard,
            strategy=self._settings.routing.strategy,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            conversation=conversation,
        )

    def reconfigure(self, settings: Settings) -> None:
        """A config reload: new rules from the next decision on; waiters keep waiting."""
        self._settings = settings
        self.room.max_waiting = settings.queue.max_waiting
        self.affinity.resize(settings.affinity.ttl, settings.affinity.max_entries)
        self.traffic.reconfigure(settings)
        self.drain()

    def remember(self, conversation: str, box: str) -> None:
        if self._settings.conversation_affinity:
            self.affinity.put(conversation, box, self._clock.now())
            self.traffic.costs.conversations.served(conversation, self._clock.now())

    def pick(self, req: Request) -> Candidate | NoRoute:
        """The box that would serve ``req`` now, without reserving a slot."""
        signals = self._signals()
        return choose(self.fleet, self._slots.usage, req, self._rng.random, signals)

    def explain(self, req: Request) -> dict[str, Any]:
        """What would be chosen for ``req`` now and why; reserves and sends nothing."""
        signals = self._signals()
        queueing = self._settings.queue.enabled
        return explain(self.fleet, self._slots.usage, req, signals, queueing)

    async def resolve(self, req: Request, display_name: str) -> Candidate:
        """Like ``acquire`` for requests that take no slot (``/api/show``)."""
        picked = self.pick(req)
        if picked is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            picked = self.pick(req)
        if isinstance(picked, Candidate):
            return picked
        raise no_route_error(picked, display_name, self._prober.fleet, req.model)

    async def acquire(self, req: Request, display_name: str, ticket: Ticket = NORMAL) -> Lease:
        """Reserve a slot on the best box for ``req``, waiting for one if need be."""
        placed = self._place_now(req, ticket)
        if placed is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            placed = self._place_now(req, ticket)
        if isinstance(placed, Lease):
            return placed
        if isinstance(placed, NoRoute):
            raise no_route_error(placed, display_name, self._prober.fleet, req.model)
        return await self._wait(req, display_name, ticket, placed)

    def _place_now(self, req: Request, ticket: Ticket) -> Lease | NoRoute | Wait:
        """Rank and reserve in one synchronous step, so no other placement interleaves."""
        ranked = rank(self.fleet, self._slots.usage, req, self._rng.random, self._signals())
        decision = self._decide(req, ranked)
        if not isinstance(decision, Candidate):
            return decision
        lease = self._reserve(decision.box.name, req.model)
        self._placed(req, lease, ranked, ticket, None)
        return lease

    def _reserve(self, box: str, model: str) -> Lease:
        self._slots.take(box, model)
        lease = Lease(box, model, self._release)
        lease.sharing = self._slots.usage.get((box, model), 1)
        return lease

    def _release(self, lease: Lease) -> None:
        """A lease came back: its slot is free, so waiting requests may fit now."""
        self._slots.give(lease.box, lease.model)
        self.drain()

    def _signals(self) -> Signals:
        return self.traffic.signals(self._clock.now(), self._prober.fleet, self.room.by_model())

    def _decide(self, req: Request, ranked: list[Candidate]) -> Candidate | NoRoute | Wait:
        if not ranked:
            return no_route(self._prober.fleet, req)
        best = ranked[0]
        queueing = self._settings.queue.enabled
        pin = self._pin(req, ranked) if queueing else None
        if pin is None and (best.tier is not Tier.SATURATED or not queueing):
            return best
        mine = next((c for c in ranked if c.box.name == pin), best)
        return Wait(pin, mine.estimate.ttft if mine.estimate is not None else None)

    def _placed(
        self,
        req: Request,
        lease: Lease,
        ranked: list[Candidate],
        ticket: Ticket,
        waited: float | None,
        predicted: float | None = None,
    ) -> None:
        now = self._clock.now()
        chosen = next((i for i, c in enumerate(ranked) if c.box.name == lease.box), 0)
        order = [ranked[chosen], *ranked[:chosen], *ranked[chosen + 1 :]]
        lease.reason = route_reason(order, self._settings.routing.strategy, waited, predicted)
        log.debug("%s for %s: %s", lease.box, ticket.user, lease.reason)
        self.traffic.placed(lease.box, ticket, now, lease.model)
        picked = order[0]
        conversations = self.traffic.costs.conversations
        if picked.box.name == lease.box and not picked.loaded and not picked.in_use:
            # The box loads the model: its slots start empty, and a full box evicts one.
            evicts = picked.estimate.evicts if picked.estimate is not None else None
            self.residency.started(lease.box, lease.model, evicts, now)
            conversations.unloaded(lease.box, lease.model)
            if evicts is not None:
                conversations.unloaded(lease.box, evicts)
        if req.conversation is not None:
            conversations.placed(req.conversation, lease.box, lease.model, picked.box.slots, now)

    def _pin(self, req: Request, ranked: list[Candidate]) -> str | None:
        """The conversation's box, if it has the model loaded but no free slot and is not
        much busier than the best alternative: then a short wait for it beats a cold
        prompt cache elsewhere."""
        if req.affinity is None or ranked[0].box.name == req.affinity:
            return None
        mine = next((c for c in ranked if c.box.name == req.affinity), None)
        if mine is None or not mine.loaded or mine.tier is not Tier.SATURATED:
            return None
        if mine.estimate is not None and mine.estimate.known:
            # Worth waiting for while the wait is shorter than the prefill it saves, here
            # and for the live conversation whose cache it would push out elsewhere.
            other = ranked[0].estimate
            saved = mine.estimate.saved + (other.displaced if other is not None else 0.0)
            return mine.box.name if mine.estimate.wait < saved else None
        return mine.box.name if mine.load - ranked[0].load <= req.load_guard else None

    async def _wait(self, req: Request, display_name: str, ticket: Ticket, wait: Wait) -> Lease:
        if self.room.full:
            raise NoCapacity(
                f'too many requests waiting; no free slot for model "{display_name}"',
                retry_after=5,
            )
        share = self._settings.fairness.max_waiting_share
        if self._settings.fairness.enabled:
            most = max(1, int(self.room.max_waiting * share))
            if self.room.waiting_for(ticket.user) >= most:
                raise TooManyRequests(
                    f'user "{ticket.user}" already has {most} requests waiting, '
                    f"their share of the waiting room"
                )
        now = self._clock.now()
        pin = wait.pin
        waiter = Waiter(req, ticket, now, asyncio.get_running_loop().create_future())
        waiter.predicted = wait.predicted
        timeout = self._settings.queue.timeout
        expire = partial(_expire, waiter, display_name, timeout)
        timers = [self._clock.call_at(now + timeout, expire)]
        if pin is not None:
            waiter.pin, waiter.pin_until = pin, now + self._settings.affinity.max_wait
            timers.append(self._clock.call_at(waiter.pin_until, partial(self._unpin, waiter)))
        try:
            await self._enter(waiter)
            self.room.add(waiter)
            self._on_change()
            lease: Lease = await asyncio.shield(waiter.future)
            return lease
        finally:
            for timer in timers:
                timer.cancel()
            self._abandon(waiter)

    async def _enter(self, waiter: Waiter) -> None:
        """Before ``waiter`` joins the room (replicas sharing a fleet take a ticket)."""

    def _left(self, waiter: Waiter) -> None:
        """``waiter`` left the room, placed or not."""

    def _unpin(self, waiter: Waiter) -> None:
        """The conversation's box stayed busy for ``affinity.max_wait``: any box will do."""
        waiter.pin = None
        self.drain()

    def _abandon(self, waiter: Waiter) -> None:
        self.room.remove(waiter)
        self._left(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None and _leaving():
            future.result().release()  # placed at the very moment its client left
        self._on_change()

    def drain(self) -> None:
        """Place waiting requests on boxes that have a free slot now; called whenever a
        slot frees or the fleet changes. Synchronous, so no other reservation can
        interleave: it is atomic like any other placement."""
        if not self.room.size:
            return
        now = self._clock.now()
        for queue in self.room.in_order():
            for waiter in self._fair_order(queue, now):
                if waiter.future.done():
                    self.room.remove(waiter)
                    continue
                pin = waiter.pin if waiter.pin and now < waiter.pin_until else None
                ranked = self._free_ranked(waiter.req, pin)
                if not ranked:
                    if pin is not None:
                        continue  # later waiters of this model may take other boxes
                    break  # the same model's later waiters would not fit either
                self.room.remove(waiter)
                lease = self._reserve(ranked[0].box.name, waiter.req.model)
                waited = now - waiter.enqueued
                self._placed(waiter.req, lease, ranked, waiter.ticket, waited, waiter.predicted)
                waiter.future.set_result(lease)
        if self.room.size:
            self.traffic.rearm(now)

    def _fair_order(self, queue: list[Waiter], now: float) -> list[Waiter]:
        """Within a priority class, the user served least lately first (then arrival)."""
        if not self._settings.fairness.enabled or len(queue) < 2:
            return queue
        service = self.traffic.fair.service
        return sorted(queue, key=lambda w: (w.ticket.priority, service(w.ticket.user, now), w.seq))

    def _free_ranked(self, req: Request, pin: str | None) -> list[Candidate]:
        """The ranking for ``req`` if its best box has a free slot now, else empty."""
        ranked = rank(self.fleet, self._slots.usage, req, self._rng.random, self._signals())
        if pin is not None:
            ranked = [c for c in ranked if c.box.name == pin]
        if ranked and ranked[0].tier is not Tier.SATURATED:
            return ranked
        return []

    def queue_status(self) -> QueueStatus:
        oldest = self.room.oldest()
        now = self._clock.now() if oldest is not None else 0.0
        return {
            "waiting": self.room.size,
            "oldest_wait": round(now - oldest, 3) if oldest is not None else 0.0,
            "by_model": self.room.by_model(),
            "max_waiting": self.room.max_waiting,
            "enabled": self._settings.queue.enabled,
            "users": self.users(),
        }

    def users(self) -> list[UserStatus]:
        """Each user's recent service (weighted tokens) and requests waiting now."""
        now = self._clock.now()
        service = self.traffic.fair.users(now)
        waiting = self.room.by_user()
        names = sorted(service.keys() | waiting.keys(), key=lambda u: -service.get(u, 0.0))
        return [
            {"user": u, "service": round(service.get(u, 0.0), 1), "waiting": waiting.get(u, 0)}
            for u in names
        ]

    def excluding(self, req: Request, failed: frozenset[str]) -> Request:
        return replace(req, exclude=req.exclude | failed)


def no_route_error(
    reason: NoRoute, model: str, fleet: Fleet, key: str
) -> ModelNotFound | NoCapacity:
    """The outage rule (README, "HTTP surface"): 404 for a model no box ever listed
    (naming boxes never heard from), else 503 naming the boxes and why they cannot."""
    if reason is NoRoute.UNKNOWN_MODEL:
        message = f'model "{model}" not found, try pulling it first'
        if unseen := unseen_boxes(fleet):
            message += f" (box {', '.join(unseen)} has not answered yet and may have it)"
        return ModelNotFound(message + fleet_models(fleet))
    why = unavailable_reason(fleet, key)
    if not any(b.reachable for b in fleet.boxes):
        return NoCapacity(f'no box is reachable to serve model "{model}": {why}', retry_after=5)
    return NoCapacity(f'no box can serve model "{model}" right now: {why}', retry_after=5)


def fleet_models(fleet: Fleet, most: int = 20) -> str:
    """The models the fleet has, for a 404: an agent sent a name no box knows (a
    ``claude-...`` model, say), and the user needs to see what to map it to (aliases)."""
    names = sorted({m for b in fleet.boxes if b.routable for m in b.models})
    if not names:
        return ""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "; the fleet has: " + ", ".join(names[:most]) + more


def _expire(waiter: Waiter, model: str, timeout: float) -> None:
    """The waiter's ``queue.timeout`` ran out before a slot freed."""
    if not waiter.future.done():
        waiter.future.set_exception(
            NoCapacity(f'no free slot for model "{model}" within {timeout:g} s', retry_after=5)
        )


def _leaving() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
