"""Routing policies: strategies as pure functions (tables), and fair share, box limits,
latency awareness and explained decisions end to end."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from types import MappingProxyType
from typing import Any

import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.choose import NoRoute, Request, choose, rank
from ollamux.routing.clock import ManualClock
from ollamux.routing.costs import Learned
from ollamux.routing.fairness import FairShare, user_of
from ollamux.routing.limits import BoxLimits, retry_after
from ollamux.routing.policies import NO_SIGNALS, Signals
from ollamux.routing.state import BoxState, Fleet, Health
from tests.conftest import Cluster

M = "llama3.2:latest"


def box(
    name: str,
    index: int,
    *,
    loaded: bool = True,
    slots: int = 2,
    weight: float = 1.0,
    health: Health = Health.HEALTHY,
) -> BoxState:
    return BoxState(
        name=name,
        url=f"http://127.0.0.1/{name}",
        kind="ollama",
        index=index,
        priority=0,
        slots=slots,
        health=health,
        models=frozenset({M}),
        loaded=frozenset({M}) if loaded else frozenset(),
        weight=weight,
    )


FLEET = Fleet.of((box("a", 0), box("b", 1), box("c", 2, loaded=False)))


def order(
    strategy: str,
    usage: dict[tuple[str, str], int],
    signals: Signals = NO_SIGNALS,
    seed: int = 0,
    fleet: Fleet = FLEET,
) -> list[str]:
    ranked = rank(fleet, usage, Request(M, strategy=strategy), random.Random(seed).random, signals)
    return [c.box.name for c in ranked]


@pytest.mark.parametrize(
    ("strategy", "usage", "signals", "expected"),
    [
        # least-busy ignores loaded state: c (not loaded, idle) beats busier loaded boxes
        ("least-busy", {("a", M): 1, ("b", M): 1}, Signals(), ["c", "a", "b"]),
        # round-robin continues after the last placement, in config order
        ("round-robin", {}, Signals(turn=1), ["b", "c", "a"]),
        ("round-robin", {}, Signals(turn=5), ["c", "a", "b"]),
        # ...but never prefers a full box to one with a free slot
        ("round-robin", {("b", M): 2}, Signals(turn=1), ["c", "a", "b"]),
        # latency: the shortest expected answer first; no data counts as the average
        (
            "latency",
            {},
            Signals(learned=Learned(service=MappingProxyType({("a", M): 3.0, ("b", M): 1.0}))),
            ["b", "c", "a"],
        ),
        # usage: the lowest share of its rate limit first, then load
        (
            "usage",
            {("c", M): 1},
            Signals(utilisation=MappingProxyType({"a": 0.5, "b": 0.2})),
            ["c", "b", "a"],
        ),
        # default: loaded + free first, a box at its limit or resting is never a candidate
        (
            "default",
            {},
            Signals(utilisation=MappingProxyType({"a": 1.0}), cooling=frozenset({"b"})),
            ["c"],
        ),
    ],
)
def test_strategy_tables(
    strategy: str, usage: dict[tuple[str, str], int], signals: Signals, expected: list[str]
) -> None:
    got = order(strategy, usage, signals)
    if strategy == "least-busy":
        assert got[0] == expected[0] and set(got) == set(expected)
    else:
        assert got == expected


@pytest.mark.parametrize(
    "strategy", ["default", "least-busy", "round-robin", "weighted-random", "latency", "usage"]
)
def test_every_strategy_honours_health_slots_and_limits(strategy: str) -> None:
    fleet = Fleet.of(
        (box("down", 0, health=Health.DOWN), box("full", 1), box("limited", 2), box("ok", 3))
    )
    signals = Signals(utilisation=MappingProxyType({"limited": 1.2}))
    for seed in range(20):
        got = order(strategy, {("full", M): 2}, signals, seed, fleet)
        assert got == ["ok", "full"], (strategy, got)


def test_weighted_random_follows_the_weights() -> None:
    fleet = Fleet.of((box("a", 0, weight=3.0), box("b", 1, weight=1.0)))
    rng = random.Random(7)
    picks = Counter(
        c.box.name
        for _ in range(4000)
        if not isinstance(
            c := choose(fleet, {}, Request(M, strategy="weighted-random"), rng.random), NoRoute
        )
    )
    assert 0.70 < picks["a"] / 4000 < 0.80


def test_signals_average_stands_in_for_a_box_without_data() -> None:
    signals = Signals(learned=Learned(service=MappingProxyType({("a", M): 2.0, ("b", M): 4.0})))
    assert signals.expected("c", M) == 3.0
    assert Signals().expected("c", M) == 0.0


def test_fair_share_window_and_weights() -> None:
    fair = FairShare(window=10, input_weight=1, output_weight=2)
    fair.placed("u", 100, now=0)
    fair.finished("u", 50, now=1)
    assert fair.service("u", now=5) == 200
    assert fair.service("u", now=10.5) == 100  # the placement left the window
    assert fair.service("u", now=11.5) == 0 and fair.users(12) == {}


def test_users_are_named_by_key_then_header_then_field() -> None:
    assert user_of("team-a", {"x-user-id": "bob"}, {"user": "carol"}) == "team-a"
    assert user_of(None, {"x-user-id": "bob"}, {"user": "carol"}) == "bob"
    assert user_of(None, {}, {"user": "carol"}) == "carol"
    assert user_of(None, {}, {"user": 7}) == "anonymous"


def test_box_limits_window_and_cooldown() -> None:
    limits = BoxLimits("a", rpm=2, tpm=100)
    limits.sent(0)
    limits.tokens(30, 0)
    assert limits.utilisation(1) == 0.5
    limits.sent(1)
    assert limits.utilisation(2) == 1.0 and limits.frees_at(2) == 60.0
    assert limits.utilisation(60.5) == 0.5
    assert retry_after("7", 30) == 7 and retry_after(None, 30) == 30 and retry_after("x", 3) == 3


# --- end to end ---------------------------------------------------------------------


def gen(prompt: str, tokens: int = 2) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "prompt": prompt,
        "stream": False,
        "options": {"num_predict": tokens},
    }


async def flood_then_chat(cluster: Any, fair: bool) -> list[str]:
    """Eight batch requests queue up on one slot, then one chat request arrives; the order
    in which they finish."""
    cfg = SimConfig(name="a", preloaded=["llama3.2"], num_parallel=1, tokens_per_s=100.0)
    fairness = {"enabled": fair, "max_waiting_share": 1.0}
    async with cluster(cfg, max_concurrent_connections=1, fairness=fairness) as c:
        finished: list[str] = []

        async def send(user: str, n: int, tokens: int) -> None:
            resp = await c.http.post(
                "/api/generate", json=gen(f"{user} {n}", tokens), headers={"X-User-Id": user}
            )
            assert resp.status_code == 200
            finished.append(user)

        flood = [asyncio.create_task(send("batch", n, 10)) for n in range(8)]
        await c.wait_for(lambda: _waiting(c, 7))
        await asyncio.gather(*flood, send("chat", 0, 2))
        return finished


async def test_fair_share_lets_an_interactive_user_past_a_flood(cluster: Any) -> None:
    fair = await flood_then_chat(cluster, fair=True)
    assert fair.index("chat") <= 1, fair  # right after the batch request already running
    fifo = await flood_then_chat(cluster, fair=False)
    assert fifo.index("chat") == 8, fifo  # behind the whole flood


async def _waiting(c: Cluster, n: int) -> bool:
    return int((await c.status())["queue"]["waiting"]) >= n


async def test_one_user_cannot_fill_the_waiting_room(cluster: Any) -> None:
    cfg = SimConfig(name="a", preloaded=["llama3.2"], num_parallel=1, tokens_per_s=50.0)
    async with cluster(
        cfg,
        max_concurrent_connections=1,
        queue={"max_waiting": 4},
        fairness={"max_waiting_share": 0.5},
    ) as c:
        hog = {"X-User-Id": "hog"}
        running = [
            asyncio.create_task(c.http.post("/api/generate", json=gen(f"h{n}", 40), headers=hog))
            for n in range(3)
        ]
        await c.wait_for(lambda: _waiting(c, 2))
        refused = await c.http.post("/api/generate", json=gen("h9"), headers=hog)
        assert refused.status_code == 429 and "share of the waiting room" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) > 0
        other = asyncio.create_task(
            c.http.post("/api/generate", json=gen("o"), headers={"X-User-Id": "other"})
        )
        await c.wait_for(lambda: _waiting(c, 3))
        for task in running:
            task.cancel()
        other.cancel()
        users = {u["user"]: u for u in (await c.status())["queue"]["users"]}
        assert "hog" in users


async def test_a_box_at_its_request_limit_is_left_out(cluster: Any) -> None:
    boxes = [
        SimConfig(name="a", preloaded=["llama3.2"]),
        SimConfig(name="b", preloaded=["llama3.2"]),
    ]
    async with cluster(*boxes, priority_routing=True, endpoint_extra={"a": {"rpm_limit": 2}}) as c:
        served = [
            (await c.http.post("/api/generate", json=gen(f"r{n}"))).headers["x-ollamux-endpoint"]
            for n in range(4)
        ]
        assert served == ["a", "a", "b", "b"]
        explained = (await c.http.get("/router/explain", params={"model": "llama3.2"})).json()
        assert {"box": "a", "excluded": "at its rate limit"} in explained["boxes"]


async def test_a_429_rests_the_box_and_the_request_goes_elsewhere(cluster: Any) -> None:
    boxes = [
        SimConfig(name="a", preloaded=["llama3.2"]),
        SimConfig(name="b", preloaded=["llama3.2"]),
    ]
    clock = ManualClock()
    async with cluster(*boxes, priority_routing=True, routing={"cooldown": 30}, clock=clock) as c:
        c.box("a").faults.error_status = 429
        first = await c.http.post("/api/generate", json=gen("x0"))
        assert first.status_code == 200 and first.headers["x-ollamux-endpoint"] == "b"
        c.box("a").faults.error_status = None
        during = await c.http.post("/api/generate", json=gen("x1"))
        assert during.headers["x-ollamux-endpoint"] == "b"  # a is resting
        assert (await c.status())["endpoints"][0]["breaker"] == "closed"  # not a failure
        clock.advance(29.9)
        still = await c.http.post("/api/generate", json=gen("x2"))
        assert still.headers["x-ollamux-endpoint"] == "b"
        clock.advance(0.2)  # the 30 s rest is over
        after = await c.http.post("/api/generate", json=gen("x3"))
        assert after.headers["x-ollamux-endpoint"] == "a"


async def test_the_faster_box_wins_among_equals(cluster: Any) -> None:
    boxes = [
        SimConfig(name="slow", preloaded=["llama3.2"], tokens_per_s=40.0),
        SimConfig(name="fast", preloaded=["llama3.2"], tokens_per_s=400.0),
    ]
    async with cluster(*boxes) as c:
        seen: set[str] = set()
        n = 0
        while seen != {"slow", "fast"} and n < 40:  # until both have been observed
            resp = await c.http.post("/api/generate", json=gen(f"warm {n}", 4))
            seen.add(resp.headers["x-ollamux-endpoint"])
            n += 1
        served = [
            (await c.http.post("/api/generate", json=gen(f"q {i}", 4))).headers[
                "x-ollamux-endpoint"
            ]
            for i in range(6)
        ]
        assert served == ["fast"] * 6


async def test_round_robin_strategy_end_to_end(cluster: Any) -> None:
    boxes = [SimConfig(name=n, preloaded=["llama3.2"]) for n in ("a", "b", "c")]
    async with cluster(*boxes, routing={"strategy": "round-robin"}) as c:
        served = [
            (await c.http.post("/api/generate", json=gen(f"p{i}"))).headers["x-ollamux-endpoint"]
            for i in range(6)
        ]
        assert served in (["a", "b", "c"] * 2, ["b", "c", "a"] * 2, ["c", "a", "b"] * 2)


async def test_explain_agrees_with_the_next_choice_and_the_route_header(cluster: Any) -> None:
    async with cluster(SimConfig(name="a"), SimConfig(name="b", preloaded=["llama3.2"])) as c:
        explained = (await c.http.get("/router/explain", params={"model": "llama3.2"})).json()
        assert explained["chosen"] == "b" and explained["tie"] == []
        ranks = {e["box"]: e for e in explained["boxes"]}
        assert ranks["b"]["rank"] == 1 and ranks["b"]["loaded"] is True
        assert ranks["a"]["rank"] == 2 and ranks["a"]["loaded"] is False
        resp = await c.http.post("/api/generate", json=gen("p"))
        assert resp.headers["x-ollamux-endpoint"] == explained["chosen"]
        route = resp.headers["x-ollamux-route"]
        assert route.startswith("b: model loaded") and "next a: model not loaded" in route
        recent = (await c.http.get("/router/stats")).json()["recent"]
        assert recent[0]["why"] == route  # the dashboard's recent requests say why too
        missing = await c.http.get("/router/explain")
        assert missing.status_code == 400 and "model is required" in missing.json()["error"]
        unknown = (await c.http.get("/router/explain", params={"model": "nope"})).json()
        assert unknown["chosen"] is None and unknown["reason"] == "no box has this model"


async def test_learned_costs_show_in_explain_and_the_route_header(cluster: Any) -> None:
    box = SimConfig(name="a", load_time=0.2, tokens_per_s=2000.0, prompt_tokens_per_s=20000.0)
    async with cluster(box, routing={"strategy": "fastest"}) as c:
        first = await c.http.post("/api/generate", json=gen("a cold start " * 40, 8))
        # Nothing learned yet: the estimate is the priors' (a 1 s load).
        assert "est ttft" in first.headers["x-ollamux-route"]
        assert "load 1.00" in first.headers["x-ollamux-route"]
        explained = (await c.http.get("/router/explain", params={"model": "llama3.2"})).json()
        assert explained["strategy"] == "fastest" and explained["chosen"] == "a"
        entry = explained["boxes"][0]
        learned = entry["learned"]
        assert 0.2 <= learned["load_s"] < 1.0  # what the box reported as load_duration
        assert learned["decode_tokens_per_s"] > 0 and learned["service_s"] is not None
        assert entry["estimate"]["learned"] is True
        second = await c.http.post("/api/generate", json=gen("again " * 40, 8))
        assert "load 0.00" in second.headers["x-ollamux-route"]  # resident now
        # The dashboard's figures: learned costs per (box, model), predicted against seen.
        stats = (await c.http.get("/router/stats")).json()
        (row,) = stats["learned"]
        assert row["box"] == "a" and row["model"] == "llama3.2:latest"
        assert row["load_s"] == learned["load_s"] and row["decode_tokens_per_s"] > 0
        newest, oldest = stats["recent"][0], stats["recent"][1]
        assert oldest["predicted_ttft"] >= 1.0  # the priors' 1 s load, before any was seen
        assert newest["predicted_ttft"] < 1.0 and newest["ttft"] is not None
