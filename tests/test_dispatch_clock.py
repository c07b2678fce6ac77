"""The dispatcher against a clock the test holds: late binding, fair order, priority,
conversation pins, queue time-outs, 429 cool-downs and rate windows, with no sleeps.

Time moves only by ``ManualClock.advance``; ``settle()`` lets the waiting tasks run (a
yield to the event loop, not a wait).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import replace

import pytest

from ollamux.routing.clock import ManualClock
from ollamux.routing.dispatch import Dispatcher
from ollamux.routing.errors import NoCapacity
from ollamux.routing.ledger import Lease, Ledger
from ollamux.routing.settings import Settings, parse_settings
from ollamux.routing.state import BoxState, Fleet, Health
from ollamux.routing.waiting import PRIORITIES, Ticket

M = "llama3.2:latest"


class StaticFleet:
    """The fleet as a prober would publish it; the test may replace it."""

    def __init__(self, boxes: Iterable[BoxState]) -> None:
        self.fleet = Fleet.of(tuple(boxes))
        self.refreshed = 0

    async def refresh_models(self) -> None:
        self.refreshed += 1


def box(name: str, index: int, *, slots: int = 1, loaded: bool = True) -> BoxState:
    return BoxState(
        name=name,
        url=f"http://127.0.0.1/{name}",
        kind="ollama",
        index=index,
        priority=index,
        slots=slots,
        health=Health.HEALTHY,
        models=frozenset({M}),
        loaded=frozenset({M}) if loaded else frozenset(),
    )


def settings(**raw: object) -> Settings:
    endpoints = raw.pop("endpoints", ["http://127.0.0.1:1/", "http://127.0.0.1:2/"])
    return parse_settings({"endpoints": endpoints, **raw})


def dispatcher(
    boxes: Iterable[BoxState], cfg: Settings | None = None
) -> tuple[Dispatcher, Ledger, ManualClock]:
    clock = ManualClock()
    ledger = Ledger()
    d = Dispatcher(cfg or settings(), ledger, StaticFleet(boxes), random.Random(0), clock)
    return d, ledger, clock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def ask(
    d: Dispatcher, user: str = "anonymous", priority: str = "normal", **kw: str
) -> asyncio.Task[Lease]:
    ticket = Ticket(user, PRIORITIES[priority], 10)
    req = d.request(M, conversation=kw.get("conversation"))
    return asyncio.ensure_future(d.acquire(req, M, ticket))


async def test_a_waiting_request_takes_whichever_box_frees_first() -> None:
    d, ledger, _ = dispatcher([box("a", 0), box("b", 1)])
    first, second = ask(d), ask(d)
    third = ask(d)
    await settle()
    assert {first.result().box, second.result().box} == {"a", "b"}
    assert not third.done() and d.room.size == 1
    on_b = first.result() if first.result().box == "b" else second.result()
    on_b.release()  # b frees first, so the waiter binds to b now (late binding)
    await settle()
    assert third.result().box == "b"
    assert dict(ledger.usage) == {("a", M): 1, ("b", M): 1}
    assert "waited" in third.result().reason


async def test_a_waiter_times_out_exactly_at_queue_timeout() -> None:
    d, ledger, clock = dispatcher([box("a", 0)], settings(queue={"timeout": 2.0}))
    held = ask(d)
    waiting = ask(d)
    await settle()
    clock.advance(1.999)
    await settle()
    assert not waiting.done()
    clock.advance(0.001)
    await settle()
    with pytest.raises(NoCapacity, match="within 2 s"):
        waiting.result()
    assert d.room.size == 0 and clock.pending == 0
    held.result().release()
    assert dict(ledger.usage) == {}


async def test_a_placed_waiter_disarms_its_timeout() -> None:
    d, _, clock = dispatcher([box("a", 0)], settings(queue={"timeout": 2.0}))
    held = ask(d)
    waiting = ask(d)
    await settle()
    held.result().release()
    await settle()
    assert waiting.result().box == "a"
    assert clock.pending == 0  # no timer left to fire into a placed request
    clock.advance(10)
    await settle()
    assert not waiting.result().released


async def test_within_a_priority_class_the_user_served_least_goes_first() -> None:
    d, _, clock = dispatcher([box("a", 0)])
    held = ask(d, user="heavy")
    await settle()
    heavy = [ask(d, user="heavy") for _ in range(2)]
    await settle()
    clock.advance(0.001)
    light = ask(d, user="light")  # arrived last, but "light" has had no service
    await settle()
    held.result().release()
    await settle()
    assert light.done() and not any(t.done() for t in heavy)
    light.result().release()
    await settle()
    assert heavy[0].done() and not heavy[1].done()  # then arrival order within "heavy"
    heavy[0].result().release()
    await settle()
    heavy[1].result().release()


async def test_priority_goes_before_fair_share_and_arrival() -> None:
    d, _, _ = dispatcher([box("a", 0)])
    held = ask(d, user="u1")
    await settle()
    low = ask(d, user="u2", priority="low")
    normal = ask(d, user="u3")
    high = ask(d, user="u1", priority="high")  # the busiest user, but high priority
    await settle()
    order = []
    lease = held.result()
    for _ in range(3):
        lease.release()
        await settle()
        done = next(t for t in (low, normal, high) if t.done() and t not in order)
        order.append(done)
        lease = done.result()
    lease.release()
    assert order == [high, normal, low]


async def test_a_conversation_waits_for_its_box_until_the_pin_expires() -> None:
    cfg = settings(affinity={"max_wait": 0.5, "load_guard": 1.0})
    d, _, clock = dispatcher([box("a", 0), box("b", 1, loaded=False)], cfg)
    d.remember("conv-1", "a")
    held = ask(d)  # takes "a": loaded
    await settle()
    assert held.result().box == "a"
    turn = ask(d, conversation="conv-1")  # "b" is free, but "a" holds the prompt cache
    await settle()
    assert not turn.done()
    clock.advance(0.499)
    await settle()
    assert not turn.done()
    clock.advance(0.001)  # the pin expires: any box will do
    await settle()
    assert turn.result().box == "b"
    held.result().release()
    turn.result().release()


async def test_a_pinned_conversation_gets_its_box_when_it_frees_in_time() -> None:
    cfg = settings(affinity={"max_wait": 0.5, "load_guard": 1.0})
    d, _, clock = dispatcher([box("a", 0), box("b", 1, loaded=False)], cfg)
    d.remember("conv-1", "a")
    held = ask(d)
    await settle()
    turn = ask(d, conversation="conv-1")
    await settle()
    clock.advance(0.3)
    held.result().release()
    await settle()
    assert turn.result().box == "a"
    assert clock.pending == 0
    turn.result().release()


async def test_a_box_resting_after_a_429_takes_waiters_when_its_cooldown_ends() -> None:
    cfg = settings()
    a, b = (box(ep.name, i) for i, ep in enumerate(cfg.endpoints))
    d, _, clock = dispatcher([a, b], cfg)
    d.traffic.refused(b.name, 30.0, clock.now())
    held = ask(d)
    await settle()
    assert held.result().box == a.name
    waiting = ask(d)  # b is free but resting
    await settle()
    clock.advance(29.99)
    await settle()
    assert not waiting.done()
    clock.advance(0.02)  # the cooldown ends: the traffic timer drains the room
    await settle()
    assert waiting.result().box == b.name
    held.result().release()
    waiting.result().release()


async def test_a_box_over_its_rpm_budget_takes_waiters_when_the_window_moves() -> None:
    cfg = settings(
        endpoints=[
            {"url": "http://127.0.0.1:1/", "max_concurrent": 4},
            {"url": "http://127.0.0.1:2/", "max_concurrent": 1, "rpm_limit": 1},
        ]
    )
    names = [ep.name for ep in cfg.endpoints]
    a, b = box(names[0], 0, slots=1), box(names[1], 1, slots=4)
    d, _, clock = dispatcher([a, b], cfg)
    first = ask(d)
    second = ask(d)
    await settle()
    assert {first.result().box, second.result().box} == {a.name, b.name}
    third = ask(d)  # a is full; b has slots but spent its one request this minute
    await settle()
    assert not third.done()
    clock.advance(59.0)
    await settle()
    assert not third.done()
    clock.advance(1.1)
    await settle()
    assert third.result().box == b.name
    for t in (first, second, third):
        t.result().release()


async def test_a_client_that_leaves_while_waiting_leaves_no_waiter_and_no_slot() -> None:
    d, ledger, clock = dispatcher([box("a", 0)])
    held = ask(d)
    waiting = ask(d)
    await settle()
    waiting.cancel()
    await settle()
    assert d.room.size == 0 and clock.pending == 0
    held.result().release()
    await settle()
    assert dict(ledger.usage) == {}


async def test_an_unknown_model_refreshes_model_lists_once_before_the_404() -> None:
    d, _, _ = dispatcher([box("a", 0)])
    fleet = d._prober
    assert isinstance(fleet, StaticFleet)
    with pytest.raises(Exception, match="not found"):
        await d.acquire(d.request("nope:latest"), "nope")
    assert fleet.refreshed == 1


async def test_a_box_that_comes_back_takes_the_waiters() -> None:
    down = replace(box("a", 0), health=Health.DOWN)
    d, _, _ = dispatcher([down, box("b", 1)])
    held = ask(d)
    waiting = ask(d)
    await settle()
    assert held.result().box == "b" and not waiting.done()
    fleet = d._prober
    assert isinstance(fleet, StaticFleet)
    fleet.fleet = Fleet.of((box("a", 0), box("b", 1)))
    d.drain()  # the prober's change: a box came back
    await settle()
    assert waiting.result().box == "a"
    held.result().release()
    waiting.result().release()


async def test_a_conversation_is_forgotten_after_its_ttl() -> None:
    cfg = settings(affinity={"ttl": 60.0})
    d, _, clock = dispatcher([box("a", 0), box("b", 1)], cfg)
    d.remember("conv-1", "b")
    clock.advance(59.9)
    assert d.request(M, conversation="conv-1").affinity == "b"
    d.remember("conv-1", "b")  # a turn renews it
    clock.advance(59.9)
    assert d.request(M, conversation="conv-1").affinity == "b"
    clock.advance(0.2)
    assert d.request(M, conversation="conv-1").affinity is None


async def test_service_older_than_the_fairness_window_no_longer_counts() -> None:
    d, _, clock = dispatcher([box("a", 0)], settings(fairness={"window": 10.0}))
    held = ask(d, user="heavy")  # "heavy" is served now...
    await settle()
    clock.advance(11.0)  # ...but that was more than a window ago
    first = ask(d, user="heavy")
    second = ask(d, user="light")
    await settle()
    held.result().release()
    await settle()
    # Both have no service within the window: arrival order decides.
    assert first.done() and not second.done()
    first.result().release()
    await settle()
    second.result().release()
