"""choose() is a pure function: tables of snapshots in, the box out."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ollamux.routing.choose import NoRoute, Request, Tier, choose, rank
from ollamux.routing.state import BoxState, Fleet, Health

M = "llama3.2:latest"


def box(
    name: str,
    *,
    loaded: bool = False,
    slots: int = 2,
    health: Health = Health.HEALTHY,
    models: tuple[str, ...] = (M,),
    index: int = 0,
    priority: int = 0,
) -> BoxState:
    return BoxState(
        name=name,
        url=f"http://127.0.0.1/{name}",
        kind="ollama",
        index=index,
        priority=priority,
        slots=slots,
        health=health,
        models=frozenset(models),
        loaded=frozenset({M}) if loaded else frozenset(),
    )


def fleet(*boxes: BoxState) -> Fleet:
    return Fleet.of(
        tuple(b if b.index else BoxState(**{**_fields(b), "index": i}) for i, b in enumerate(boxes))
    )


def _fields(b: BoxState) -> dict[str, object]:
    return {f: getattr(b, f) for f in b.__slots__}  # type: ignore[attr-defined]


def first(f: Fleet, usage: dict[tuple[str, str], int], req: Request | None = None) -> str:
    picked = choose(f, usage, req or Request(M), random.Random(0).random)
    assert not isinstance(picked, NoRoute)
    return picked.box.name


@pytest.mark.parametrize(
    ("boxes", "usage", "expected"),
    [
        # loaded + free beats free (not loaded)
        ((box("a"), box("b", loaded=True)), {}, "b"),
        # loaded but full: a free box without the model loaded wins
        ((box("a"), box("b", loaded=True)), {("b", M): 2}, "a"),
        # everything full: least saturated (in_use / slots)
        ((box("a", slots=2), box("b", slots=4)), {("a", M): 3, ("b", M): 5}, "b"),
        ((box("a", slots=2), box("b", slots=4)), {("a", M): 2, ("b", M): 6}, "a"),
        # slots are per model: another model's load on "b" does not fill M's slots
        (
            (box("a", loaded=True), box("b", loaded=True)),
            {("a", M): 2, ("b", "other:latest"): 2},
            "b",
        ),
        # among loaded + free, the less busy box
        (
            (box("a", loaded=True, slots=4), box("b", loaded=True, slots=4)),
            {("a", M): 2, ("b", M): 1},
            "b",
        ),
        # down and unknown boxes are never chosen, even if idle
        ((box("a", health=Health.DOWN, loaded=True), box("b")), {("b", M): 1}, "b"),
        ((box("a", health=Health.UNKNOWN), box("b")), {("b", M): 5}, "b"),
        # a degraded box still serves, after a healthy one in the same tier
        ((box("a", health=Health.DEGRADED, loaded=True), box("b", loaded=True)), {}, "b"),
        # a box that lacks the model is never chosen
        ((box("a", models=("other:latest",)), box("b")), {("b", M): 9}, "b"),
    ],
)
def test_card_order(
    boxes: tuple[BoxState, ...], usage: dict[tuple[str, str], int], expected: str
) -> None:
    assert first(fleet(*boxes), usage) == expected


def test_tiers_are_reported() -> None:
    f = fleet(box("a", loaded=True), box("b"), box("c", loaded=True))
    ranked = rank(f, {("c", M): 2}, Request(M), random.Random(1).random)
    assert [(c.box.name, c.tier) for c in ranked] == [
        ("a", Tier.LOADED_FREE),
        ("b", Tier.FREE),
        ("c", Tier.SATURATED),
    ]


def test_ties_spread_evenly() -> None:
    f = fleet(box("a", loaded=True), box("b", loaded=True), box("c", loaded=True))
    rng = random.Random(42)
    counts = Counter(
        picked.box.name
        for _ in range(3000)
        if not isinstance(picked := choose(f, {}, Request(M), rng.random), NoRoute)
    )
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 850


def test_priority_orders_equals_but_never_beats_a_better_tier() -> None:
    f = fleet(box("a", index=0, loaded=True), box("b", index=1, loaded=True), box("c", index=2))
    on = Request(M, priority_routing=True)
    assert all(first(f, {}, on) == "a" for _ in range(10))
    assert first(f, {("a", M): 2}, on) == "b"
    # "c" has free slots but no loaded model; a loaded, free "b" still comes first
    assert first(f, {("a", M): 2}, on) != "c"


def test_explicit_priority_field_wins_over_config_order() -> None:
    f = fleet(
        box("a", index=0, priority=5, loaded=True), box("b", index=1, priority=1, loaded=True)
    )
    assert first(f, {}, Request(M, priority_routing=True)) == "b"


def test_affinity_refines_within_a_tier_only() -> None:
    f = fleet(box("a", loaded=True), box("b", loaded=True), box("c"))
    assert first(f, {("a", M): 1}, Request(M, affinity="a")) == "a"
    assert first(f, {("a", M): 2}, Request(M, affinity="a")) == "b"
    assert first(f, {}, Request(M, affinity="c")) != "c"


def test_excluded_boxes_are_skipped() -> None:
    f = fleet(box("a", loaded=True), box("b"))
    assert first(f, {}, Request(M, exclude=frozenset({"a"}))) == "b"


def test_no_route_reasons() -> None:
    f = fleet(box("a", health=Health.DOWN), box("b", models=("x:latest",)))
    assert choose(f, {}, Request(M), random.random) is NoRoute.NO_HEALTHY_BOX
    assert choose(f, {}, Request("nope:latest"), random.random) is NoRoute.UNKNOWN_MODEL


def test_with_no_box_reachable_even_an_unknown_model_is_unavailable_not_unknown() -> None:
    # It may be on a box that is down: a 503 that says so, not "try pulling it".
    f = fleet(box("a", health=Health.DOWN), box("b", health=Health.UNKNOWN, models=()))
    assert choose(f, {}, Request("nope:latest"), random.random) is NoRoute.NO_HEALTHY_BOX


def test_kinds_filter_keeps_routes_to_boxes_that_speak_them() -> None:
    llama = BoxState(
        name="l",
        url="http://127.0.0.1/l",
        kind="llama-server",
        index=1,
        priority=0,
        slots=2,
        health=Health.HEALTHY,
        models=frozenset({M}),
        loaded=frozenset({M}),
    )
    f = Fleet.of((box("o"), llama))
    assert first(f, {}, Request(M)) == "l"
    assert first(f, {}, Request(M, kinds=frozenset({"ollama"}))) == "o"
